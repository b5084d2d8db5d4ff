"""Log-mel fbank (10 ms shift; 80 bins for speech, 128 for AuM/AST) through lhotse, lilcom-compressed."""

from __future__ import annotations

import functools
import logging
import shutil
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.cut import Cut

from .. import progress

NUM_MEL_BINS = 80
CLASSIFIER_MEL_BINS = 128  # AuM and AST patch 128-bin spectrograms
FRAME_SHIFT = 0.01


def fbank_extractor(num_mel_bins: int = NUM_MEL_BINS) -> Fbank:
    return Fbank(FbankConfig(num_filters=num_mel_bins, frame_shift=FRAME_SHIFT, sampling_rate=16000))


def cut_fbank(cut: Cut, num_mel_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """One cut's (T, bins) log-mel in float64, for statistics: its stored fbank when that has
    ``num_mel_bins`` bins, else computed from its audio (128-bin AuM/AST input, unprepared cuts)."""
    if cut.has_features and cut.num_features == num_mel_bins:
        feats = cut.load_features()
    else:
        feats = _shared_extractor(num_mel_bins).extract(cut.load_audio(), cut.sampling_rate)
    return np.asarray(feats, dtype=np.float64)


@functools.cache
def _shared_extractor(num_mel_bins: int) -> Fbank:
    # building one costs about as much as extracting a 0.5 s clip: once per bin count, not per cut
    return fbank_extractor(num_mel_bins)


def remove_storage(storage: Path) -> None:
    """Delete a feature storage folder (LilcomChunkyWriter may add ".lca" to its name)."""
    storage = Path(storage)
    for stale in (storage, storage.with_name(storage.name + ".lca")):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()


def compute_fbank(
    cuts: CutSet,
    storage: Path,
    num_jobs: int = 1,
    executor: Optional[Executor] = None,
    num_mel_bins: int = NUM_MEL_BINS,
) -> CutSet:
    """Extract and store features into ``storage``; a half-written folder of that name is discarded."""
    storage = Path(storage)
    remove_storage(storage)
    with _no_thread_warning():
        return cuts.compute_and_store_features(
            extractor=fbank_extractor(num_mel_bins),
            storage_path=storage,
            num_jobs=num_jobs if executor is not None or num_jobs > 1 else 1,
            storage_type=LilcomChunkyWriter,
            executor=executor,
            progress_bar=progress.enabled(),
        ).to_eager()


def _not_the_thread_warning(record: logging.LogRecord) -> bool:
    return "torch's number of threads is > 1" not in record.getMessage()


@contextmanager
def _no_thread_warning() -> Iterator[None]:
    """lhotse warns when jobs run beside a multi-threaded parent; our pool workers each run one
    thread (``executor._one_thread_per_worker``), so the warning, once per split, is a false alarm."""
    root = logging.getLogger()
    root.addFilter(_not_the_thread_warning)  # a plain callable is a filter
    try:
        yield
    finally:
        root.removeFilter(_not_the_thread_warning)
