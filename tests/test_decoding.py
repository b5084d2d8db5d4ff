import itertools
import math
from collections import defaultdict

import pytest
import torch

from speechbudget.asr.decoding import (
    beam_search_batch,
    greedy_decode,
    prefix_beam_search,
    prefix_beam_search_nbest,
)

torch.set_num_threads(1)


def log_probs_from(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def collapse(path, blank=0) -> tuple[int, ...]:
    out, prev = [], None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def labelling_log_probs(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Oracle: sum the probability of every alignment (all V^T paths) per labelling."""
    T, V = log_probs.shape
    lp = log_probs.tolist()
    buckets = defaultdict(list)
    for path in itertools.product(range(V), repeat=T):
        buckets[collapse(path)].append(sum(lp[t][s] for t, s in enumerate(path)))
    return {
        lab: torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0).item() for lab, v in buckets.items()
    }


def random_log_probs(seed: int, T: int, V: int, sharpness: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(T, V, generator=g, dtype=torch.float64)).log_softmax(-1)


# ----------------------------------------------------------------------------- greedy


def test_greedy_collapses_repeats_and_drops_blanks():
    # argmax path: a a _ a b b _ _ c  ->  a a b c  (blank between the a's keeps both)
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    scores = torch.nn.functional.one_hot(torch.tensor(path), 4).double() * 5
    assert greedy_decode(scores.log_softmax(-1)[None]) == [[1, 1, 2, 3]]


def test_greedy_respects_lengths_in_a_batch():
    paths = [[1, 2, 2, 3, 3], [2, 0, 2, 1, 1]]
    scores = torch.nn.functional.one_hot(torch.tensor(paths), 4).float().log_softmax(-1)
    assert greedy_decode(scores, torch.tensor([5, 3])) == [[1, 2, 3], [2, 2]]
    assert greedy_decode(scores, [0, 5]) == [[], [2, 2, 1]]
    assert greedy_decode(scores) == [[1, 2, 3], [2, 2, 1]]


def test_greedy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        greedy_decode(torch.zeros(5, 3))
    with pytest.raises(ValueError):
        greedy_decode(torch.zeros(2, 5, 3), [5, 6])


# ----------------------------------------------------------------------------- beam search


def test_beam_finds_best_labelling_where_greedy_fails():
    # Best path is "_ _" (0.36) -> empty; labelling "a" has 0.16 + 0.24 + 0.24 = 0.64.
    lp = log_probs_from([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(lp[None]) == [[]]
    assert prefix_beam_search(lp, beam_size=8) == [1]
    nbest = prefix_beam_search_nbest(lp, beam_size=8)
    assert [lab for lab, _ in nbest] == [[1], []]
    assert [math.exp(s) for _, s in nbest] == pytest.approx([0.64, 0.36])


def test_beam_keeps_repeats_separated_by_blank():
    lp = log_probs_from([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    assert prefix_beam_search(lp) == [1, 1]
    lp = log_probs_from([[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.05, 0.9, 0.05]])
    assert prefix_beam_search(lp) == [1]


@pytest.mark.parametrize("seed", range(6))
def test_exhaustive_beam_matches_brute_force_oracle(seed):
    lp = random_log_probs(seed, T=5, V=3)
    oracle = labelling_log_probs(lp)
    # 2 non-blank tokens, T=5: at most 63 prefixes, so a beam of 64 prunes nothing and is exact.
    nbest = prefix_beam_search_nbest(lp, beam_size=64)
    assert len(nbest) == len(oracle)
    for lab, score in nbest:
        assert score == pytest.approx(oracle[tuple(lab)], abs=1e-9)
    best = max(oracle.values())
    assert oracle[tuple(prefix_beam_search(lp, beam_size=64))] == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_small_beam_finds_most_probable_labelling(seed):
    # A pruned beam is a search, not a guarantee (on 100 random 6x4 matrices beam 8 misses the best
    # labelling 4 times); these seeds, with CTC-like peaked outputs, are cases it must get right.
    lp = random_log_probs(100 + seed, T=6, V=4, sharpness=2.0)
    oracle = labelling_log_probs(lp)
    hyp = prefix_beam_search(lp, beam_size=8)
    assert oracle[tuple(hyp)] == pytest.approx(max(oracle.values()), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_beam_size_one_is_sane(seed):
    lp = random_log_probs(200 + seed, T=6, V=4)
    oracle = labelling_log_probs(lp)
    one = prefix_beam_search_nbest(lp, beam_size=1)
    assert len(one) == 1
    lab, score = one[0]
    # The single kept prefix has lost alignments to pruning: its score is a lower bound.
    assert score <= oracle[tuple(lab)] + 1e-12
    assert oracle[tuple(lab)] <= oracle[tuple(prefix_beam_search(lp, beam_size=64))] + 1e-12
    # With a dominant path every frame, beam 1 and greedy agree.
    peaky = random_log_probs(300 + seed, T=30, V=6, sharpness=8.0)
    assert prefix_beam_search(peaky, beam_size=1) == greedy_decode(peaky[None])[0]


def test_length_ignores_padding_frames():
    lp = random_log_probs(7, T=12, V=5, sharpness=3.0)
    padded = torch.cat([lp[:8], random_log_probs(8, T=4, V=5, sharpness=3.0)])
    assert prefix_beam_search(padded, length=8) == prefix_beam_search(lp[:8])
    assert prefix_beam_search(lp, length=0) == []


def test_token_topk_pruning():
    lp = random_log_probs(11, T=20, V=8, sharpness=2.0)
    assert prefix_beam_search(lp, token_topk=7) == prefix_beam_search(lp)
    peaky = random_log_probs(12, T=20, V=8, sharpness=8.0)
    assert prefix_beam_search(peaky, token_topk=1) == prefix_beam_search(peaky)
    nbest = prefix_beam_search_nbest(peaky, token_topk=1, beam_size=8)
    assert all(math.isfinite(s) for _, s in nbest)


def test_beam_search_batch_matches_single():
    lp = torch.stack([random_log_probs(s, T=15, V=6, sharpness=2.0) for s in range(3)])
    lengths = [15, 9, 0]
    expected = [prefix_beam_search(lp[i], lengths[i], beam_size=4) for i in range(3)]
    assert beam_search_batch(lp, lengths, beam_size=4) == expected
    assert expected[2] == []


def test_beam_search_rejects_bad_arguments():
    lp = random_log_probs(0, T=4, V=3)
    for kwargs in ({"beam_size": 0}, {"length": 5}, {"token_topk": 0}):
        with pytest.raises(ValueError):
            prefix_beam_search(lp, **kwargs)
    with pytest.raises(ValueError):
        prefix_beam_search(lp[None])
