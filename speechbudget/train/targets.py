"""``speechbudget kmeans``: pick the encoder the labels must align with, then run k-means."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from .. import progress
from ..atomic import check_writable
from ..data.kmeans import MIN_FRAMES_PER_CLUSTER, input_manifests, run_kmeans
from ..errors import SpeechBudgetError
from ..locks import lock_corpus
from ..models.presets import build_encoder
from . import checkpoint as ckpt

FEATURES = ("mfcc", "fbank", "layer")


def pretrained_encoder(path: Path):
    """The encoder of a pretraining checkpoint (a file, or the newest in a checkpoints folder)."""
    spec, weights, _ = ckpt.encoder_state(Path(path))
    encoder = build_encoder(spec)
    encoder.load_state_dict(weights)
    return encoder.eval()


def check_kmeans_args(
    features: str, num_clusters: int, key: str = "kmeans", max_frames: Optional[int] = None
) -> None:
    """What k-means needs of its settings, checked before any work (a recipe's before its first stage)."""
    if features not in FEATURES:
        raise SpeechBudgetError(
            f"unknown k-means features {features!r} (--features, recipe {key}.features); "
            f"choose one of {', '.join(FEATURES)}"
        )
    if num_clusters < 2:
        raise SpeechBudgetError(
            f"k-means needs at least 2 clusters (--num-clusters, recipe {key}.num_clusters), got {num_clusters}"
        )
    if max_frames is not None and max_frames < MIN_FRAMES_PER_CLUSTER * num_clusters:
        raise SpeechBudgetError(
            f"{num_clusters} clusters need at least {MIN_FRAMES_PER_CLUSTER * num_clusters} sampled frames "
            f"({MIN_FRAMES_PER_CLUSTER} a cluster), max_frames is {max_frames} (--num-clusters and "
            f"--max-frames, recipe {key}.num_clusters and {key}.max_frames)"
        )


def make_targets(
    cuts: List[Path],
    out_dir: Path,
    *,
    features: str = "mfcc",
    num_clusters: int = 100,
    max_frames: int = 200_000,
    encoder: Union[str, Mapping[str, Any]] = "zipformer-tiny",
    checkpoint: Optional[Path] = None,
    layer: Optional[int] = None,
    seed: int = 0,
    cmn: bool = False,
) -> Dict[str, Any]:
    """K-means labels aligned with ``encoder`` (a preset name or a config dict: its frame rate and
    length rule decide how many labels each cut gets)."""
    check_kmeans_args(features, num_clusters, max_frames=max_frames)
    input_manifests(cuts)  # they exist and are splits, before the output folder is made
    check_writable(out_dir, "k-means output folder")
    if features == "layer":
        if checkpoint is None or layer is None:
            raise SpeechBudgetError(
                "k-means on layer features needs a pretraining checkpoint and a layer "
                "(--checkpoint and --layer; recipe kmeans.checkpoint and kmeans.layer)"
            )
        enc = pretrained_encoder(checkpoint)
    else:
        torch.manual_seed(0)
        enc = build_encoder(encoder)  # only its frame rate and length rule matter here
    paths = cuts[0] if len(cuts) == 1 else cuts
    with lock_corpus(out_dir):  # a second k-means into this folder stops, saying who holds it
        return run_kmeans(
            paths,
            out_dir,
            kind=features,
            num_clusters=num_clusters,
            max_frames=max_frames,
            seed=seed,
            encoder=enc,
            layer=layer,
            cmn=cmn,
            progress=progress.enabled(),
        )
