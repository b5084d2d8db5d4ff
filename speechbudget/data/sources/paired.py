"""What the paired speech-image sources share: image-disjoint splits and image checks."""

from __future__ import annotations

import hashlib
from typing import List

from ..images import check_images
from . import SourceItem


def image_split(image_id: str, dev_fraction: float, test_fraction: float) -> str:
    """A split from a hash of the image id: every caption of an image lands in the same split, on
    every machine, and adding images never moves the old ones."""
    u = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "little") / 2**64
    return "test" if u < test_fraction else "dev" if u < test_fraction + dev_fraction else "train"


def with_image_problems(items: List[SourceItem], executor=None) -> List[SourceItem]:
    """Mark items whose image Pillow cannot decode (each image checked once); prepare rejects them."""
    problems = check_images([it.custom["image"] for it in items if not it.problem], executor)
    for it in items:
        if not it.problem:
            it.problem = problems[it.custom["image"]]
    return items
