"""Speech-image retrieval: recall@K both ways with one image to several captions, bootstrap intervals.

* speech->image: a caption hits at K when its image is among the K images scored highest for it.
* image->speech: an image hits at K when *any* of its captions is among the K captions scored
  highest for it (the SpokenCOCO / FaST-VGS convention).
A rank counts the candidates scored strictly higher than the best right answer, so ties go the
model's way; with float similarities ties are rare. Intervals: percentile bootstrap over captions
(speech->image) and over images (image->speech), seeded.
"""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import numpy as np
import torch

KS = (1, 5, 10)


def _percentile(values: np.ndarray, confidence: float) -> list:
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def caption_ranks(similarity: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """(N,) rank (0 = best) of each caption's image among all images; ``similarity`` is (N captions, M images)."""
    sim = np.asarray(similarity, dtype=np.float64)
    positive = sim[np.arange(len(sim)), caption_image]
    return (sim > positive[:, None]).sum(1)


def image_ranks(similarity: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """(M,) rank of each image's best-ranked caption among all captions (-1 for an image without one)."""
    sim = np.asarray(similarity, dtype=np.float64).T  # (M, N)
    own = caption_image[None, :] == np.arange(len(sim))[:, None]
    best = np.where(own, sim, -np.inf).max(1)
    ranks = (sim > best[:, None]).sum(1)
    return np.where(own.any(1), ranks, -1)


def _recalls(ranks: np.ndarray, ks: Sequence[int], bootstrap: int, seed: int, confidence: float) -> Dict:
    ranks = ranks[ranks >= 0]
    hits = np.stack([ranks < k for k in ks]).astype(np.float64)  # (K, n)
    out: Dict = {f"r@{k}": float(h.mean()) for k, h in zip(ks, hits)}
    if bootstrap:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, hits.shape[1], (bootstrap, hits.shape[1]))
        means = hits[:, idx].mean(-1)  # (K, bootstrap)
        out.update({f"r@{k}_ci": _percentile(m, confidence) for k, m in zip(ks, means)})
    out["count"] = int(hits.shape[1])
    return out


def retrieval_report(
    speech: np.ndarray,
    images: np.ndarray,
    caption_image: Sequence[int],
    ks: Sequence[int] = KS,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Dict:
    """Recall@K of ``speech`` (N, E) caption embeddings against ``images`` (M, E), where caption i
    shows image ``caption_image[i]``; similarity is the dot product (pass unit vectors for cosine).
    JSON-able: ``{"speech_to_image": {"r@1": .., "r@1_ci": [lo, hi], ..}, "image_to_speech": {..}}``."""
    sim = np.asarray(speech, dtype=np.float64) @ np.asarray(images, dtype=np.float64).T
    return retrieval_from_similarity(sim, caption_image, ks, bootstrap, seed, confidence)


def retrieval_from_similarity(
    similarity: np.ndarray,
    caption_image: Sequence[int],
    ks: Sequence[int] = KS,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Dict:
    """:func:`retrieval_report` from a precomputed (N captions, M images) similarity matrix."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n, m = similarity.shape
    if len(caption_image) != n or (n and (caption_image.min() < 0 or caption_image.max() >= m)):
        raise ValueError(f"caption_image must give each of the {n} captions an image index in [0, {m})")
    return {
        "captions": int(n),
        "images": int(m),
        "speech_to_image": _recalls(
            caption_ranks(similarity, caption_image), ks, bootstrap, seed, confidence
        ),
        "image_to_speech": _recalls(image_ranks(similarity, caption_image), ks, bootstrap, seed, confidence),
    }


def index_images(image_ids: Sequence[str]) -> tuple:
    """(distinct image ids in first-seen order, each caption's index into them): for deduplicating
    the images of a caption list before embedding them once each."""
    order = list(dict.fromkeys(image_ids))
    where = {k: i for i, k in enumerate(order)}
    return order, np.array([where[k] for k in image_ids], dtype=np.int64)


@torch.no_grad()
def embed_pairs(model, batches: Iterable[Dict]) -> Dict:
    """Run a dual encoder over paired batches (``ImageSpeechDataset``'s), each image once.

    ``model`` needs ``embed_speech(features, lengths)`` and ``embed_images(batch)`` (``VGSModel``
    has both; duck-typed so metrics stay below objectives). Returns ``speech`` (N, E), ``images``
    (M, E), ``caption_image`` (N,), ``ids`` and ``image_ids``: the arguments of :func:`retrieval_report`.
    """
    was_training = model.training
    model.eval()
    speech, images, caption_image, ids, image_ids = [], [], [], [], []
    where: Dict[str, int] = {}
    device = next(model.parameters()).device
    try:
        for batch in batches:
            speech.append(
                model.embed_speech(batch["features"].to(device), batch["lengths"].to(device)).float().cpu()
            )
            new = [
                i
                for i, k in enumerate(batch["image_ids"])
                if k not in where and batch["image_ids"].index(k) == i
            ]
            if new:
                sub = {"image_ids": [batch["image_ids"][i] for i in new]}
                if "images" in batch:
                    sub["images"] = batch["images"][new].to(device)
                images.append(model.embed_images(sub).float().cpu())
                for i in new:
                    where[batch["image_ids"][i]] = len(where)
                image_ids += sub["image_ids"]
            caption_image += [where[k] for k in batch["image_ids"]]
            ids += list(batch["ids"])
    finally:
        model.train(was_training)
    return {
        "speech": torch.cat(speech).numpy(),
        "images": torch.cat(images).numpy(),
        "caption_image": np.array(caption_image, dtype=np.int64),
        "ids": ids,
        "image_ids": image_ids,
    }
