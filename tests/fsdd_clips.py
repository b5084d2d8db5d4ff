"""Real FSDD clips as lhotse cuts with digit labels and 128-bin fbank, for the classification tests."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from conftest import FSDD
from lhotse import CutSet, Recording

from speechbudget.data.features import CLASSIFIER_MEL_BINS, compute_fbank
from speechbudget.data.labels import fsdd_digit, with_labels


def fsdd_cuts(
    storage: Path,
    digits: Sequence[int] = (0, 1),
    speakers: Sequence[str] = ("george", "jackson"),
    per: int = 2,
) -> CutSet:
    """``per`` recordings of each digit by each speaker, labelled with the digit, fbank stored in ``storage``."""
    cuts = []
    for d in digits:
        for spk in speakers:
            for i in range(per):
                path = FSDD / f"{d}_{spk}_{i}.wav"
                cut = Recording.from_file(path, recording_id=path.stem).resample(16000).to_cut()
                cuts.append(with_labels(cut, fsdd_digit(path)))
    return compute_fbank(CutSet.from_cuts(cuts), Path(storage), num_mel_bins=CLASSIFIER_MEL_BINS)
