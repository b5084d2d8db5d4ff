"""Batches for training: lhotse's DynamicBucketingSampler + a map-style dataset that pads.

The sampler yields CutSets whose total duration stays under ``max_duration``; its
``state_dict()`` lets a resumed run continue with exactly the next batch.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from lhotse.dataset.collation import collate_audio, collate_features

from .kmeans import read_labels
from .manifests import cut_text
from .speaker_cmn import cut_speaker

IGNORE = -100
log = logging.getLogger(__name__)


class SpeechDataset(torch.utils.data.Dataset):
    """CutSet -> {features (B,T,F), lengths, ids, speakers, [kmeans (B,T')], [texts]}."""

    def __init__(
        self,
        input_kind: str = "fbank",
        with_kmeans: bool = False,
        with_text: bool = False,
        transform: Optional[Callable[[Dict], Dict]] = None,
        cut_transform: Optional[Callable[[CutSet], CutSet]] = None,
        num_mel_bins: int = 80,
        on_the_fly: bool = False,
    ):
        """``cut_transform`` changes the audio (noise mixing); fbank (``num_mel_bins``: 80 for speech,
        128 for AuM/AST) is then computed on the fly."""
        self.input_kind, self.with_kmeans, self.with_text, self.transform = (
            input_kind,
            with_kmeans,
            with_text,
            transform,
        )
        self.cut_transform = cut_transform
        self.num_mel_bins = num_mel_bins
        self.on_the_fly = on_the_fly or num_mel_bins != 80  # stored fbank is 80-bin

    def __getitem__(self, cuts: CutSet) -> Dict:
        cuts = cuts.sort_by_duration(ascending=False)
        if self.cut_transform is not None:
            cuts = self.cut_transform(cuts)
        if self.input_kind == "waveform":
            audio, lengths = collate_audio(cuts)
            features = audio.unsqueeze(-1)
        elif self.cut_transform is not None or self.on_the_fly:
            from lhotse.dataset.input_strategies import OnTheFlyFeatures

            from .features import fbank_extractor

            features, lengths = OnTheFlyFeatures(fbank_extractor(self.num_mel_bins))(cuts)
        else:
            features, lengths = collate_features(cuts)
        batch: Dict = {
            "features": features,
            "lengths": lengths.long(),
            "ids": [c.id for c in cuts],
            "speakers": [cut_speaker(c) for c in cuts],
            "seconds": float(sum(c.duration for c in cuts)),
        }
        if self.with_kmeans:
            labels = [torch.from_numpy(read_labels(c)) for c in cuts]
            batch["kmeans"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE)
        if self.with_text:
            batch["texts"] = [cut_text(c) for c in cuts]
        if self.transform is not None:
            batch = self.transform(batch)
        return batch


def repad(utterances: List[torch.Tensor], like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance (T_i, F) frames back into a padded (B, T, F) batch and its lengths; an empty list gives
    ``like``'s batch with no frames."""
    if not utterances:
        return like[:, :0], torch.zeros(0, dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(utterances, batch_first=True)
    return padded, torch.tensor([u.size(0) for u in utterances])


def replace_frames(batch: Dict, features: torch.Tensor, lengths: torch.Tensor) -> Dict:
    """A batch transform's new frames in ``batch``, with ``seconds`` (the audio a run reports) scaled by
    the change in frames: the budget and the hours then count what the encoder really sees."""
    before = int(batch["lengths"].sum())
    batch["features"], batch["lengths"] = features, lengths.to(batch["lengths"].dtype)
    if before:
        batch["seconds"] = batch["seconds"] * int(lengths.sum()) / before
    return batch


def warn_long_cuts(cuts: CutSet, max_duration: float) -> int:
    """Cuts longer than ``max_duration`` each make a batch of their own (lhotse says so in a warning
    per batch, with its file path): say it once, in our words, with what to change. Returns how many."""
    long = [c.duration for c in cuts if c.duration > max_duration]
    if long:
        log.warning(
            "max_duration %g s is shorter than %d of %d cuts (the longest %.2f s): each of those is a batch "
            "of its own; raise max_duration (seconds of audio per batch)",
            max_duration,
            len(long),
            len(cuts),
            max(long),
        )
        warnings.filterwarnings("ignore", message="We have exceeded the max_duration constraint")
    return len(long)


def make_sampler(
    cuts: CutSet,
    max_duration: float,
    num_buckets: int,
    seed: int,
    shuffle: bool = True,
    world_size: int = 1,
    rank: int = 0,
):
    """lhotse's bucketing sampler; a labeled set with fewer cuts than buckets gets one bucket per cut
    (lhotse wants 2 <= buckets <= cuts), and a single cut a plain sampler."""
    try:
        n = len(cuts)
    except TypeError:  # a lazy CutSet has no length; big corpora are lazy and have cuts to spare
        n = num_buckets
    else:
        warn_long_cuts(cuts, max_duration)
    if n < 2:
        from lhotse.dataset import SimpleCutSampler

        return SimpleCutSampler(
            cuts,
            max_duration=max_duration,
            shuffle=shuffle,
            seed=seed,
            drop_last=world_size > 1,
            world_size=world_size,
            rank=rank,
        )
    num_buckets = min(num_buckets, n)
    with warnings.catch_warnings():  # small fine-tuning sets are eager on purpose
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        return DynamicBucketingSampler(
            cuts,
            max_duration=max_duration,
            shuffle=shuffle,
            num_buckets=num_buckets,
            seed=seed,
            drop_last=world_size > 1,
            world_size=world_size,
            rank=rank,
            buffer_size=max(1000, num_buckets * 100),
        )


def make_loader(dataset: SpeechDataset, sampler, num_workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers, persistent_workers=False
    )
