"""Batches of paired speech and images: SpeechDataset's batches plus ``images`` and ``image_ids``.

The speech side is exactly :class:`~speechbudget.data.dataset.SpeechDataset` (same sampler, padding,
k-means labels), so a multi-objective trainer can feed one batch to HuBERT and to VGS alike.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from lhotse import CutSet

from .dataset import SpeechDataset
from .images import cut_image, load_images


class ImageSpeechDataset(SpeechDataset):
    """CutSet -> SpeechDataset's batch + ``image_ids`` (list) and, unless ``load_pixels`` is off
    (precomputed image features), ``images`` (B, 3, image_size, image_size), normalised, in the
    batch's (duration-sorted) order."""

    def __init__(
        self,
        image_size: int = 64,
        load_pixels: bool = True,
        transform: Optional[Callable[[Dict], Dict]] = None,
        **speech_kwargs,
    ):
        super().__init__(transform=None, **speech_kwargs)
        self.image_size, self.load_pixels, self.image_transform = image_size, load_pixels, transform

    def __getitem__(self, cuts: CutSet) -> Dict:
        batch = super().__getitem__(cuts)
        by_id = {c.id: cut_image(c) for c in cuts}
        paths = [by_id[i][0] for i in batch["ids"]]
        batch["image_ids"] = [by_id[i][1] for i in batch["ids"]]
        if self.load_pixels:
            batch["images"] = load_images(paths, self.image_size)
        if self.image_transform is not None:
            batch = self.image_transform(batch)
        return batch
