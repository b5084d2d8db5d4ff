"""Image side of visually grounded speech: a small CNN from scratch, or precomputed features.

Why two: a CNN learns on synthetic scenes and costs FLOPs a budget must count (``macs_per_image``);
on real photos (Flickr8k, SpokenCOCO) the usual practice is frozen features from a pretrained
vision model, computed once elsewhere and read from disk here (no hub download at run time).
Both map a batch to ``(B, output_dim)`` features; the VGS objective projects them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from ..cost.flops import count_macs
from ..errors import SpeechBudgetError


class ImageCNN(nn.Module):
    """Strided 3x3 conv blocks (conv, batch norm, ReLU), then the global average over positions."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        blocks: List[nn.Module] = []
        cin = 3
        for cout in channels:
            blocks += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            cin = cout
        self.body = nn.Sequential(*blocks)
        self.output_dim = cin
        self._macs: Dict[int, int] = {}  # per image size: a trace costs far more than a training step

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).mean(dim=(2, 3))

    def macs_per_image(self, size: int) -> int:
        """Forward multiply-adds for one ``size`` x ``size`` image (fvcore count, once per size)."""
        if size in self._macs:
            return self._macs[size]
        probe = torch.zeros(1, 3, size, size, device=next(self.parameters()).device)
        was_training = self.training
        self.eval()  # batch norm of one image must not update the running statistics
        try:
            self._macs[size] = count_macs(self, (probe,)).macs
        finally:
            self.train(was_training)
        return self._macs[size]


def load_feature_table(path: Path) -> Dict[str, np.ndarray]:
    """Image id -> feature vector from ``.npz`` (one array per image id) or ``.npy`` ``(N, D)`` with
    ``<stem>.ids.txt`` beside it (N lines, the ids in row order). No pickles: a file is only data."""
    path = Path(path)
    if not path.is_file():
        raise SpeechBudgetError(f"image feature file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            table = {k: np.asarray(z[k], dtype=np.float32).reshape(-1) for k in z.files}
    else:
        ids_path = path.with_suffix(".ids.txt")
        if not ids_path.is_file():
            raise SpeechBudgetError(f"{path} needs {ids_path.name} beside it (one image id per row)")
        array = np.load(path, allow_pickle=False)
        ids = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
        if array.ndim != 2 or len(ids) != len(array):
            raise SpeechBudgetError(
                f"{path}: expected (N, D) features for the {len(ids)} ids in {ids_path.name}"
            )
        table = {i: row.astype(np.float32) for i, row in zip(ids, array)}
    dims = {v.shape[0] for v in table.values()}
    if len(dims) != 1:
        raise SpeechBudgetError(f"{path}: image features must all have one dimension, found {sorted(dims)}")
    return table


class PrecomputedImageFeatures(nn.Module):
    """Frozen features looked up by image id (nothing to train; a buffer, so checkpoints carry it)."""

    def __init__(self, table: Dict[str, np.ndarray]):
        super().__init__()
        self.ids = {k: i for i, k in enumerate(sorted(table))}
        self.register_buffer("features", torch.from_numpy(np.stack([table[k] for k in sorted(table)])))
        self.output_dim = int(self.features.size(1))

    @classmethod
    def from_file(cls, path: Path) -> PrecomputedImageFeatures:
        return cls(load_feature_table(path))

    def forward(self, image_ids: Sequence[str]) -> torch.Tensor:
        missing = [i for i in image_ids if i not in self.ids]
        if missing:
            raise SpeechBudgetError(f"no precomputed features for image(s) {missing[:3]}")
        rows = torch.tensor([self.ids[i] for i in image_ids], device=self.features.device)
        return self.features[rows]

    def macs_per_image(self, size: int = 0) -> int:
        return 0  # a lookup; the features' own cost was paid when they were extracted
