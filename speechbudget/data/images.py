"""Images paired with speech: checked like audio at prepare time, loaded as tensors at batch time.

An unreadable image must cost one item (reported in ``rejected_<split>.jsonl``), never the run, so
sources call :func:`image_problem` and put its answer into ``SourceItem.problem``. torch is imported
where tensors are made: the source registry imports this module for the CLI's help.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..errors import SpeechBudgetError

if TYPE_CHECKING:
    import torch

#: per-channel mean / std of ImageNet, the usual normalisation; harmless for a CNN trained from scratch
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def image_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be used as an image (``None`` when Pillow decodes it fully)."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        return f"image missing ({p.name})"
    try:
        with Image.open(p) as im:
            im.load()  # verify() alone misses truncated pixel data
            if im.width < 1 or im.height < 1:
                return f"empty image ({p.name})"
    except Exception as e:  # Pillow raises many types for bad files: every one means "unusable"
        return f"unreadable image ({p.name}: {type(e).__name__})"
    return None


def check_images(paths: Iterable[str], executor=None) -> Dict[str, Optional[str]]:
    """``image_problem`` of each distinct path, once (a Flickr8k image has five captions)."""
    from .executor import run_map

    unique = sorted(set(paths))
    problems = run_map(executor, image_problem, [(p,) for p in unique], "checking images")
    return dict(zip(unique, problems))


def cut_image(cut: Any) -> Tuple[str, str]:
    """(image path, image id) that a prepared cut carries in its (supervision's) custom fields."""
    for holder in [cut, *getattr(cut, "supervisions", [])]:
        custom = getattr(holder, "custom", None) or {}
        if "image" in custom:
            return str(custom["image"]), str(custom.get("image_id", Path(custom["image"]).stem))
    raise SpeechBudgetError(
        f"cut {cut.id} has no image: prepare a paired corpus (synthetic-scenes, flickr8k-audio, spokencoco)"
    )


def load_image(path: str, size: int, mean=IMAGE_MEAN, std=IMAGE_STD) -> torch.Tensor:
    """(3, size, size) float tensor: RGB, resized (bilinear), scaled to [0, 1], normalised."""
    import torch
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_images(paths: List[str], size: int) -> torch.Tensor:
    """(B, 3, size, size); each distinct path decoded once."""
    import torch

    cache: Dict[str, torch.Tensor] = {}
    for p in paths:
        if p not in cache:
            cache[p] = load_image(p, size)
    return torch.stack([cache[p] for p in paths])
