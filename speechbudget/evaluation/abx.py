"""ABX discrimination (Schatz et al. 2013; ZeroSpeech / libri-light) over any frame features.

A triplet (A, B, X): A and X share a label (a word, e.g. an FSDD digit), B has another; the triplet
is an error when X is closer to B than to A (a tie is half an error). Across speakers, A and B come
from one speaker and X from another, so a representation that only knows the speaker fails.
Distances are DTW over frames with cosine distance (1 - cos), the accumulated cost divided by
N + M. Errors are averaged in cells (label A, label B, speaker of A/B, speaker of X), cells over
speakers per label pair, then over label pairs, so a frequent word or talkative speaker does not
weigh more. :func:`abx_per_layer` runs an encoder and scores every layer.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) 1 - cos between frames of ``a`` (N, D) and ``b`` (M, D); an all-zero frame is at 1."""
    na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
    nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-8)
    return 1.0 - na @ nb.T


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """DTW (steps right, down, diagonal) of the cosine-distance matrix, divided by N + M."""
    cost = cosine_distances(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for k in range(n + m - 1):  # anti-diagonals i + j = k depend only on the two before them
        i = np.arange(max(0, k - m + 1), min(k, n - 1) + 1)
        j = k - i
        best = np.minimum(np.minimum(acc[i, j], acc[i, j + 1]), acc[i + 1, j])
        acc[i + 1, j + 1] = cost[i, j] + best
    return float(acc[n, m] / (n + m))


def abx_error(
    features: Sequence[np.ndarray],
    labels: Sequence[str],
    speakers: Sequence[str],
    mode: str = "across",
    max_per_group: Optional[int] = None,
    seed: int = 0,
) -> Dict:
    """ABX error of items ``features[i]`` (T_i, D) with ``labels[i]`` and ``speakers[i]``.

    ``mode`` across: A, B one speaker, X another; within: all three one speaker (X is not A).
    ``max_per_group`` keeps at most that many items (a seeded choice) of each (label, speaker): the
    DTW pairs grow with the square of the items, the cells only with labels and speakers.
    Returns ``{"error", "triplets", "cells", "mode"}``; error is NaN when no triplet exists."""
    if mode not in ("across", "within"):
        raise ValueError(f"mode must be across or within, got {mode!r}")
    n = len(features)
    labels, speakers = list(map(str, labels)), list(map(str, speakers))
    dist = np.full((n, n), np.nan)

    def distances(rows: List[int], cols: List[int]) -> np.ndarray:
        for i in rows:
            for j in cols:
                if np.isnan(dist[i, j]):
                    dist[i, j] = dist[j, i] = dtw_distance(features[i], features[j])
        return dist[np.ix_(rows, cols)]

    groups: Dict[tuple, List[int]] = defaultdict(list)  # (label, speaker) -> items
    for i in range(n):
        groups[(labels[i], speakers[i])].append(i)
    if max_per_group is not None:
        rng = np.random.default_rng(seed)
        groups = {k: sorted(rng.permutation(v)[:max_per_group].tolist()) for k, v in groups.items()}
    cells: Dict[tuple, float] = {}
    triplets = 0
    for (la, s), a_items in groups.items():
        for (lb, sb), b_items in groups.items():
            if sb != s or lb == la:
                continue
            for (lx, sx), x_items in groups.items():
                if lx != la or (sx == s) != (mode == "within"):
                    continue
                d_ax = distances(a_items, x_items)[:, None, :]  # (A, 1, X)
                d_bx = distances(b_items, x_items)[None, :, :]  # (1, B, X)
                errors = (d_bx < d_ax) + 0.5 * (d_bx == d_ax)  # (A, B, X)
                valid = np.broadcast_to(
                    (np.array(a_items)[:, None] != np.array(x_items)[None, :])[:, None, :], errors.shape
                )  # X is never A itself
                if valid.any():
                    cells[(la, lb, s, sx)] = float(errors[valid].mean())
                    triplets += int(valid.sum())
    by_pair: Dict[tuple, List[float]] = defaultdict(list)
    for (la, lb, _, _), cell_error in cells.items():
        by_pair[(la, lb)].append(cell_error)
    error = float(np.mean([np.mean(v) for v in by_pair.values()])) if by_pair else float("nan")
    return {
        "error": error,
        "triplets": triplets,
        "cells": len(cells),
        "mode": mode,
    }


@torch.no_grad()
def layer_features(encoder: torch.nn.Module, features: Sequence[torch.Tensor]) -> Dict[str, List[np.ndarray]]:
    """Every layer's frames for each utterance (one at a time: no padding to get wrong), plus the
    input features as ``"input"``; keys ``input``, ``layer1`` .. ``layerL``."""
    was_training = encoder.training
    encoder.eval()
    out: Dict[str, List[np.ndarray]] = defaultdict(list)
    try:
        for f in features:
            f = f.unsqueeze(0) if f.dim() == 2 else f
            lengths = torch.tensor([f.size(1)], device=f.device)
            result = encoder(f, lengths, return_layers=True)
            out["input"].append(f[0].float().cpu().numpy())
            for k, layer in enumerate(result.layers or [result.hidden], 1):
                out[f"layer{k}"].append(layer[0].float().cpu().numpy())
    finally:
        encoder.train(was_training)
    return dict(out)


def abx_per_layer(
    encoder: torch.nn.Module,
    features: Sequence[torch.Tensor],
    labels: Sequence[str],
    speakers: Sequence[str],
    mode: str = "across",
    max_per_group: Optional[int] = None,
) -> Dict:
    """``{"mode", "layers": {name: abx_error(...)}, "best_layer"}`` for ``layer_features(encoder, ..)``."""
    per_layer = {
        name: abx_error(feats, labels, speakers, mode, max_per_group)
        for name, feats in layer_features(encoder, features).items()
    }
    finite = {k: v["error"] for k, v in per_layer.items() if np.isfinite(v["error"])}
    return {"mode": mode, "layers": per_layer, "best_layer": min(finite, key=finite.get) if finite else None}


def cut_items(
    cuts: Iterable, label_of: Optional[Callable] = None
) -> Tuple[List[torch.Tensor], List[str], List[str]]:
    """(features, labels, speakers) of prepared cuts: the label is the transcript unless ``label_of(cut)``
    says otherwise (on FSDD the transcript is the digit's word), the speaker the supervision's."""
    feats, labels, speakers = [], [], []
    for cut in cuts:
        sup = cut.supervisions[0]
        feats.append(torch.from_numpy(cut.load_features()))
        labels.append(str(label_of(cut) if label_of else sup.text))
        speakers.append(str(sup.speaker))
    return feats, labels, speakers
