"""Token merging: what a merge preserves, protected tokens, padding, unmerge, r = 0, FLOP counts."""

from __future__ import annotations

import pytest
import torch

from speechbudget.cost.flops import count_macs
from speechbudget.errors import SpeechBudgetError
from speechbudget.models.catalog import encoder_cost
from speechbudget.models.presets import build_encoder
from speechbudget.models.tome import TokenMerger, ToMeConfig, parse_tome

torch.set_num_threads(1)


def merger_inputs(b=2, t=21, d=8, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, d, generator=g), torch.randn(b, heads, t, 4, generator=g)


def test_merge_preserves_the_size_weighted_mean_and_total_size():
    x, keys = merger_inputs()
    lengths = torch.tensor([21, 14])
    m = TokenMerger(lengths, 21, protected=1, proportional=True)
    sizes, totals = [], []
    for _ in range(3):
        valid = ~m.pad_mask(x.size(1))
        totals.append((x * m.size[:, : x.size(1), None] * valid[..., None]).sum(1))
        sizes.append((m.size[:, : x.size(1)] * valid).sum(1))
        old = m.lengths.clone()
        x = m(x, keys[:, :, : x.size(1)], r=3)
        keys = torch.randn(2, 2, x.size(1), 4)
        assert (m.lengths == old - 3).all() and x.size(1) == int(m.lengths.max())
    valid = ~m.pad_mask(x.size(1))
    assert torch.allclose((x * m.size[:, : x.size(1), None] * valid[..., None]).sum(1), totals[0], atol=1e-4)
    assert torch.equal((m.size[:, : x.size(1)] * valid).sum(1), sizes[0])
    assert sizes[0].tolist() == [21.0, 14.0] and m.size.max() > 1


def test_protected_tokens_are_never_merged_even_when_most_similar():
    x, keys = merger_inputs(b=1, t=12)
    keys[:, :, 2] = keys[:, :, 1]  # token 2 (in A) is identical to the distillation token (in B)
    keys[:, :, 0] = keys[:, :, 3]  # CLS (in A) is identical to token 3 (in B)
    m = TokenMerger(torch.tensor([12]), 12, protected=2, proportional=True)
    out = m(x, keys, r=5)  # clamped to (12 - 2) / 2 = 5
    assert m.lengths.tolist() == [7]
    assert torch.equal(out[:, :2], x[:, :2]) and m.size[0, :2].tolist() == [1.0, 1.0]
    assert m.source[0, :2].tolist() == [0, 1]  # CLS and dist stay at positions 0 and 1
    assert (m.source[0, 2:] >= 2).all()  # nothing went into them
    assert m.size[0].sum() == 12


def test_r_is_clamped_to_what_the_unprotected_tokens_allow():
    x, keys = merger_inputs(b=2, t=9)
    m = TokenMerger(torch.tensor([9, 4]), 9, protected=1, proportional=False)
    m(x, keys, r=100)
    assert m.lengths.tolist() == [5, 3]  # 9 - 8 // 2 and 4 - 3 // 2


def test_ast_keeps_its_distillation_token_under_merging():
    """One block: merging runs after attention, and the MLP and norm are per token, so unmerged CLS and
    distillation states must equal the plain encoder's (the published code merges the latter away)."""
    torch.manual_seed(0)
    spec = {"preset": "ast-tiny", "dim": 32, "heads": 4, "layers": 1, "dist_token": True}
    plain = build_encoder(spec).eval()
    merged = build_encoder({**spec, "tome": {"r": 40}}).eval()
    merged.load_state_dict(plain.state_dict())
    x, lengths = torch.randn(1, 60, 128), torch.tensor([60])
    with torch.no_grad():
        out, full = merged(x, lengths), plain(x, lengths)
    n = int(full.lengths)
    assert out.lengths.tolist() == [n - min(40, (n - 2) // 2)]
    assert merged.cls_index(out.lengths).item() == 0 and merged.dist_index(out.lengths).item() == 1
    assert torch.allclose(out.hidden[0, :2], full.hidden[0, :2], atol=1e-5)


def test_r_zero_is_bit_identical_to_the_plain_encoder():
    torch.manual_seed(0)
    for spec in ({"preset": "transformer-tiny", "layers": 2}, {"preset": "ast-tiny", "dim": 32, "heads": 4}):
        plain = build_encoder(spec).eval()
        zero = build_encoder({**spec, "tome": {"r": 0, "unmerge": True}}).eval()
        some = build_encoder({**spec, "tome": {"r": 2}}).eval()
        zero.load_state_dict(plain.state_dict())
        some.load_state_dict(plain.state_dict())
        x, lengths = torch.randn(2, 80, 128 if "ast" in spec["preset"] else 80), torch.tensor([80, 50])
        with torch.no_grad():
            a, b, c = plain(x, lengths), zero(x, lengths), some(x, lengths)
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.lengths, b.lengths)
        assert c.hidden.shape[1] < a.hidden.shape[1]


@pytest.mark.parametrize(
    "spec",
    [
        {"preset": "ast-tiny", "dim": 32, "heads": 4, "layers": 3, "dist_token": True, "tome": {"r": 6}},
        {"preset": "transformer-tiny", "layers": 3, "tome": {"r": 5, "schedule": "decreasing"}},
        {"preset": "transformer-tiny", "layers": 2, "norm_first": False, "tome": {"r": 7, "unmerge": True}},
    ],
)
def test_padded_batches_give_each_utterance_its_unpadded_output(spec):
    torch.manual_seed(1)
    enc = build_encoder(spec).eval()
    dim = 128 if spec["preset"].startswith("ast") else 80
    x, lengths = torch.randn(3, 90, dim), torch.tensor([90, 47, 33])
    x = x.masked_fill(torch.arange(90)[None, :, None] >= lengths[:, None, None], 0.0)
    with torch.no_grad():
        batch = enc(x, lengths, return_layers=True)
        for b, n in enumerate(lengths.tolist()):
            alone = enc(x[b : b + 1, :n], lengths[b : b + 1], return_layers=True)
            k = int(alone.lengths)
            assert batch.lengths[b] == k
            assert (batch.hidden[b, :k] - alone.hidden[0, :k]).abs().max() < 1e-5
            assert (batch.hidden[b, k:] == 0).all()  # padding stays zero
            for la, lb in zip(batch.layers, alone.layers):
                kk = lb.size(1)
                assert (la[b, :kk] - lb[0, :kk]).abs().max() < 1e-5


def test_unmerge_gives_one_state_per_input_frame():
    torch.manual_seed(2)
    spec = {"preset": "transformer-tiny", "layers": 2}
    plain = build_encoder(spec).eval()
    enc = build_encoder({**spec, "tome": {"r": 10, "unmerge": True}}).eval()
    merged = build_encoder({**spec, "tome": {"r": 10}}).eval()
    enc.load_state_dict(plain.state_dict())
    merged.load_state_dict(plain.state_dict())
    x, lengths = torch.randn(2, 100, 80), torch.tensor([100, 64])
    with torch.no_grad():
        ref, out, tokens = plain(x, lengths), enc(x, lengths, return_layers=True), merged(x, lengths)
    assert out.hidden.shape == ref.hidden.shape and torch.equal(out.lengths, ref.lengths)
    assert all(layer.shape == ref.hidden.shape for layer in out.layers)
    for b, n in enumerate(out.lengths.tolist()):
        distinct = torch.unique(out.hidden[b, :n], dim=0)
        assert len(distinct) == tokens.lengths[b] == n - 20  # each token copied to its frames
        assert {tuple(r.tolist()) for r in distinct} == {
            tuple(r.tolist()) for r in tokens.hidden[b, : n - 20]
        }


def test_decreasing_schedule_has_the_constant_total():
    cfg = ToMeConfig(r=8, schedule="decreasing")
    assert cfg.per_layer(12)[0] == 16 and cfg.per_layer(12)[-1] == 0
    assert abs(sum(cfg.per_layer(12)) - 96) <= 1
    assert ToMeConfig(r=8).per_layer(3) == [8, 8, 8]


@pytest.mark.parametrize(
    "tome, message",
    [
        ({"r": -1}, "non-negative"),
        ({"r": 2, "schedule": "fast"}, "schedule"),
        ({"ratio": 2}, "unknown"),
        ({"r": 2, "unmerge": "yes"}, "true or false"),
    ],
)
def test_bad_tome_configs_are_user_errors(tome, message):
    with pytest.raises(SpeechBudgetError, match=message):
        build_encoder({"preset": "ast-tiny", "tome": tome})
    assert parse_tome({"r": 0}) is None and parse_tome(None) is None


def test_flop_count_of_a_merged_block_matches_a_hand_count():
    d, heads, ffn, r = 32, 4, 128, 5
    spec = {"preset": "ast-tiny", "dim": d, "heads": heads, "layers": 1}
    enc = build_encoder({**spec, "tome": {"r": r}}).eval()
    plain = build_encoder(spec).eval()
    x, lengths = torch.randn(1, 40, 128), torch.tensor([40])
    report = count_macs(enc, (x, lengths))
    base = count_macs(plain, (x, lengths))
    t = int(plain(x, lengths).lengths)  # CLS + patches
    assert not report.unsupported
    n_a, n_b = (t + 1) // 2, t // 2
    hand = 3 * t * d * d + 2 * t * t * d + t * d * d  # qkv, dense attention, output projection
    hand += n_a * n_b * (d // heads)  # matching: cosine similarity of mean keys, A x B
    hand += 2 * (t - r) * d * ffn  # MLP on the merged tokens
    assert report.by_module["blocks.0"] == hand
    assert base.by_module["blocks.0"] - report.by_module["blocks.0"] == 2 * r * d * ffn - n_a * n_b * (
        d // heads
    )


def test_encoder_cost_shows_the_saving_of_merging():
    plain = encoder_cost("ast-tiny", seconds=1.0)
    merged = encoder_cost({"preset": "ast-tiny", "tome": {"r": 8}}, seconds=1.0)
    assert merged["params"] == plain["params"] and not merged["unsupported"]
    assert merged["macs_per_audio_second"] < 0.8 * plain["macs_per_audio_second"]


def test_a_merged_encoder_is_charged_what_it_computes_at_each_length(tmp_path):
    """Merging saves a larger share on short clips: a Transformer's budget is charged from a curve
    counted at several lengths (exact at them, interpolated between), not from one 10-s rate."""
    from speechbudget.cost.flops import LENGTH_GRID, macs_rate, module_cost
    from speechbudget.train.setup import encoder_cost_cached

    spec = {"preset": "ast-tiny", "dim": 32, "heads": 2, "layers": 2, "stride": 16}
    enc = build_encoder({**spec, "tome": {"r": 4}})
    cost = encoder_cost_cached(enc, tmp_path, 0)
    assert [s for s, _ in cost["macs_by_length"]] == list(LENGTH_GRID)
    for s in (0.5, 2.0):
        assert macs_rate(cost, s) == pytest.approx(module_cost(enc, seconds=s)["macs_per_audio_second"])
    short, long = macs_rate(cost, 0.5), macs_rate(cost, 10.0)
    assert short < 0.9 * long  # at 0.5 s, 2 x 4 merges remove a large share of the tokens
    between = macs_rate(cost, 0.75) * 0.75
    assert macs_rate(cost, 0.5) * 0.5 < between < macs_rate(cost, 1.0) * 1.0
    plain = encoder_cost_cached(build_encoder(spec), tmp_path / "plain", 0)
    # the unmerged Transformer is charged by length too (attention), so r = 0 vs r = 4 compares alike
    assert macs_rate(plain, 0.5) == pytest.approx(
        module_cost(build_encoder(spec), seconds=0.5)["macs_per_audio_second"]
    )
    assert short < macs_rate(plain, 0.5)
    zipformer = encoder_cost_cached(build_encoder("zipformer-nano"), tmp_path / "zip", 0)
    assert "macs_by_length" not in zipformer  # other families keep the one 10-s rate, as before
    assert macs_rate(zipformer, 0.5) == zipformer["macs_per_input_second"]


def test_a_merged_unmerged_encoder_trains_with_a_frame_level_loss():
    """HuBERT needs one state per 50 Hz frame: with ``unmerge`` every labelled frame is scored."""
    from speechbudget.objectives.hubert import HubertModel

    torch.manual_seed(3)
    spec = {"preset": "transformer-tiny", "layers": 2, "tome": {"r": 12, "unmerge": True}}
    model = HubertModel(build_encoder(spec), num_clusters=8, mask_prob=0.5, mask_length=2)
    x, lengths = torch.randn(2, 200, 80), torch.tensor([200, 140])
    labels = torch.randint(0, 8, (2, 100))
    labels[1, 70:] = -1
    batch = {"features": x, "lengths": lengths, "kmeans": labels}
    loss, stats = model(batch)
    loss.backward()
    plain = HubertModel(build_encoder({**spec, "tome": None}), num_clusters=8, mask_prob=0.5, mask_length=2)
    assert torch.isfinite(loss) and stats["frames"] == plain(batch)[1]["frames"] > 150
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
