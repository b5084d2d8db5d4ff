"""CTC decoding: greedy (best path) and prefix beam search (best labelling), free or lexicon-bound.

Both take log-probabilities (log-softmax outputs) and a valid length per utterance; frames past
the length are padding and ignored. Greedy picks the most probable *path* and collapses it; the
beam search approximates the most probable *labelling*, i.e. the one whose probability summed over
all its alignments is largest, which can differ from the collapsed best path. Given a
:class:`~speechbudget.asr.lexicon.LexiconTrie`, the beam only keeps labellings that spell words of
the lexicon and ends on a whole word.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from .lexicon import LexiconTrie

__all__ = ["greedy_decode", "prefix_beam_search", "prefix_beam_search_nbest", "beam_search_batch"]

_NEG_INF = -np.inf


def _as_lengths(lengths, batch: int, frames: int) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), frames, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if (lengths < 0).any() or (lengths > frames).any():
        raise ValueError(f"lengths must lie in [0, {frames}], got {lengths.tolist()}")
    return lengths


def greedy_decode(log_probs: torch.Tensor, lengths=None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of (B, T, V) scores: argmax per frame, merge repeats, drop blanks."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    batch, frames, _ = log_probs.shape
    lengths = _as_lengths(lengths, batch, frames)
    best = log_probs.detach().argmax(dim=-1).cpu()  # (B, T)
    prev = torch.cat([torch.full((batch, 1), -1, dtype=best.dtype), best[:, :-1]], dim=1)
    valid = torch.arange(frames)[None, :] < lengths[:, None]
    keep = (best != blank) & (best != prev) & valid
    return [row[mask].tolist() for row, mask in zip(best, keep)]


def _frame_scores(frame: np.ndarray, token_topk: int | None, blank: int) -> np.ndarray:
    """Per-frame emission scores; with ``token_topk`` only the k best non-blank tokens survive."""
    if token_topk is None or token_topk >= frame.shape[0] - 1:
        return frame
    scores = np.full_like(frame, _NEG_INF)
    candidates = frame.copy()
    candidates[blank] = _NEG_INF
    top = np.argpartition(-candidates, token_topk - 1)[:token_topk]
    scores[top] = frame[top]
    scores[blank] = frame[blank]
    return scores


def _step(
    prefixes: list[tuple[int, ...]],
    p_blank: np.ndarray,
    p_nonblank: np.ndarray,
    frame: np.ndarray,
    beam_size: int,
    blank: int,
    lexicon: Optional[LexiconTrie] = None,
):
    """Advance every prefix by one frame and keep the ``beam_size`` best.

    ``p_blank`` / ``p_nonblank`` are log-probabilities of the prefix with its alignment so far
    ending in a blank / in its last token. A repeated token only extends a prefix after a blank;
    without one it merges into the same prefix. With a lexicon a prefix only grows by the tokens
    that keep it a spelling of lexicon words.
    """
    n = len(prefixes)
    p_total = np.logaddexp(p_blank, p_nonblank)
    last = np.array([p[-1] if p else -1 for p in prefixes])
    has_last = last >= 0

    # The prefix stays the same: emit blank, or repeat its last token.
    stay_blank = p_total + frame[blank]
    stay_nonblank = np.full(n, _NEG_INF)
    stay_nonblank[has_last] = p_nonblank[has_last] + frame[last[has_last]]

    # The prefix grows by token c: ext[i, c]; for c == last it must come after a blank.
    ext = p_total[:, None] + frame[None, :]
    rows = np.nonzero(has_last)[0]
    ext[rows, last[rows]] = p_blank[rows] + frame[last[rows]]
    ext[:, blank] = _NEG_INF
    if lexicon is not None:
        allowed = np.zeros(ext.shape, dtype=bool)
        for i, p in enumerate(prefixes):
            allowed[i, lexicon.allowed(p)] = True
        ext[~allowed] = _NEG_INF

    # An extension that equals a prefix already in the beam is merged into it.
    index = {p: i for i, p in enumerate(prefixes)}
    for j, p in enumerate(prefixes):
        parent = index.get(p[:-1]) if p else None
        if parent is not None:
            stay_nonblank[j] = np.logaddexp(stay_nonblank[j], ext[parent, p[-1]])
            ext[parent, p[-1]] = _NEG_INF

    flat = ext.ravel()
    k = min(beam_size, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.isfinite(flat[top])]
    new_prefixes = prefixes + [prefixes[i] + (int(c),) for i, c in zip(*np.divmod(top, ext.shape[1]))]
    new_blank = np.concatenate([stay_blank, np.full(top.size, _NEG_INF)])
    new_nonblank = np.concatenate([stay_nonblank, flat[top]])

    new_total = np.logaddexp(new_blank, new_nonblank)
    keep = np.argsort(-new_total, kind="stable")[:beam_size]
    if np.isfinite(new_total[keep[0]]):  # prefixes that became impossible (token_topk) leave
        keep = keep[np.isfinite(new_total[keep])]
    return [new_prefixes[i] for i in keep], new_blank[keep], new_nonblank[keep]


def prefix_beam_search_nbest(
    log_probs: torch.Tensor,
    length: int | None = None,
    beam_size: int = 8,
    blank: int = 0,
    token_topk: int | None = None,
    lexicon: Optional[LexiconTrie] = None,
) -> list[tuple[list[int], float]]:
    """CTC prefix beam search on one (T, V) matrix; returns up to ``beam_size`` (labelling, log-prob)
    pairs, best first. The log-prob sums over the alignments that survived the beam, so it is
    exact when nothing was pruned. With ``lexicon`` only labellings that end on a whole word are
    returned (none, if the beam kept no such labelling)."""
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {tuple(log_probs.shape)}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if token_topk is not None and token_topk < 1:
        raise ValueError(f"token_topk must be >= 1 or None, got {token_topk}")
    frames = log_probs.shape[0] if length is None else int(length)
    if not 0 <= frames <= log_probs.shape[0]:
        raise ValueError(f"length must lie in [0, {log_probs.shape[0]}], got {frames}")
    scores = log_probs.detach()[:frames].cpu().double().numpy()

    prefixes: list[tuple[int, ...]] = [()]
    p_blank, p_nonblank = np.zeros(1), np.full(1, _NEG_INF)
    for t in range(frames):
        frame = _frame_scores(scores[t], token_topk, blank)
        prefixes, p_blank, p_nonblank = _step(prefixes, p_blank, p_nonblank, frame, beam_size, blank, lexicon)
    total = np.logaddexp(p_blank, p_nonblank)
    return [(list(p), float(s)) for p, s in zip(prefixes, total) if lexicon is None or lexicon.complete(p)]


def prefix_beam_search(
    log_probs: torch.Tensor,
    length: int | None = None,
    beam_size: int = 8,
    blank: int = 0,
    token_topk: int | None = None,
    lexicon: Optional[LexiconTrie] = None,
) -> list[int]:
    """Most probable labelling found by CTC prefix beam search on one (T, V) matrix; with a lexicon,
    an empty labelling when no spelling of whole words survived the beam."""
    found = prefix_beam_search_nbest(log_probs, length, beam_size, blank, token_topk, lexicon)
    return found[0][0] if found else []


def beam_search_batch(
    log_probs: torch.Tensor,
    lengths: Sequence[int] | torch.Tensor | None = None,
    beam_size: int = 8,
    blank: int = 0,
    token_topk: int | None = None,
    lexicon: Optional[LexiconTrie] = None,
) -> list[list[int]]:
    """:func:`prefix_beam_search` on each utterance of a (B, T, V) batch."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    lengths = _as_lengths(lengths, log_probs.shape[0], log_probs.shape[1])
    return [
        prefix_beam_search(lp, int(n), beam_size, blank, token_topk, lexicon)
        for lp, n in zip(log_probs, lengths)
    ]
