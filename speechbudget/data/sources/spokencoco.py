"""SpokenCOCO (Hsu et al. 2021): 600k spoken captions of MSCOCO images.

Layout: ``SpokenCOCO_train.json`` / ``SpokenCOCO_val.json`` with ``data[*].image`` (a path below the
image folder) and ``data[*].captions[*].{wav, text, speaker, uttid}`` (wav paths below the corpus
folder). Train is train; val images are split between dev and test by a hash of the image name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option, path_id
from .paired import image_split, with_image_problems


@dataclass
class SpokenCocoOptions:
    path: Optional[Path] = option(
        help="The SpokenCOCO folder (SpokenCOCO_{train,val}.json, wavs/).", argument=True
    )
    image_dir: Optional[Path] = option(
        help="Folder the json's image paths are below (default: the corpus folder)."
    )
    test_fraction: float = option(0.5, help="Fraction of the val images that go to test (the rest: dev).")


def _entries(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpeechBudgetError(f"{path} is not a SpokenCOCO json (data[*].image, captions): {e}") from None
    if not isinstance(data, list):
        raise SpeechBudgetError(f"{path}: 'data' must be a list")
    return data


def find_items(opts: SpokenCocoOptions, ctx: FindContext) -> List[SourceItem]:
    root = Path(opts.path).resolve()  # manifests hold absolute paths (image paths included)
    image_root = Path(opts.image_dir).resolve() if opts.image_dir else root
    files = {s: root / f"SpokenCOCO_{s}.json" for s in ("train", "val")}
    if not any(p.is_file() for p in files.values()):
        raise SpeechBudgetError(f"no SpokenCOCO_train.json or SpokenCOCO_val.json in {root}")
    items = []
    for part, path in files.items():
        if not path.is_file():
            continue
        for entry in _entries(path):
            image = str(entry.get("image", ""))
            image_id = Path(image).stem
            split = (
                "train"
                if part == "train"
                else image_split(image_id, 1.0 - opts.test_fraction, opts.test_fraction)
            )
            for cap in entry.get("captions") or []:
                wav = str(cap.get("wav", ""))
                items.append(
                    SourceItem(
                        id=path_id("spokencoco", Path(wav)),
                        audio=str(root / wav),
                        split=split,
                        text=cap.get("text"),
                        speaker=cap.get("speaker"),
                        custom={"image": str(image_root / image), "image_id": image_id},
                        problem=None if image and wav else "caption without image or wav in the json",
                    )
                )
    if not items:
        raise SpeechBudgetError(f"the SpokenCOCO json files in {root} list no captions")
    return with_image_problems(items, ctx.executor)


SOURCE = Source(
    "spokencoco",
    "SpokenCOCO: spoken captions paired with MSCOCO images (train; val split into dev and test by image).",
    SpokenCocoOptions,
    find_items,
    ("speechbudget prepare spokencoco /corpora/SpokenCOCO --image-dir /corpora/coco --out data/",),
)
