"""The VGS objective: margin InfoNCE by hand, same-image masking, FLOPs, and a tiny training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechbudget.data.corpus_spec import CorpusSpec
from speechbudget.data.dataset import make_sampler
from speechbudget.data.image_batches import ImageSpeechDataset
from speechbudget.data.images import cut_image
from speechbudget.data.manifests import load_cuts
from speechbudget.data.prepare import prepare
from speechbudget.errors import SpeechBudgetError
from speechbudget.evaluation.retrieval import embed_pairs, retrieval_report
from speechbudget.models.image_encoder import ImageCNN, PrecomputedImageFeatures, load_feature_table
from speechbudget.models.presets import build_encoder
from speechbudget.objectives.vgs import VGSModel, margin_info_nce

TINY_ENCODER = {
    "family": "transformer",
    "dim": 32,
    "layers": 2,
    "heads": 2,
    "ffn_dim": 64,
    "norm_first": True,
    "pos_conv_groups": 4,
    "pos_conv_kernel": 16,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}


def test_margin_info_nce_matches_a_hand_computed_case():
    speech = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # S = [[1, 0], [0.6, 0.8]]; logits = S - margin * I = [[0, 0], [0.6, -0.2]]
    s2i, i2s = margin_info_nce(speech, images, margin=1.0)
    assert s2i.tolist() == pytest.approx([math.log(2), 0.2 + math.log(math.exp(0.6) + math.exp(-0.2))])
    assert i2s.tolist() == pytest.approx([math.log(1 + math.exp(0.6)), 0.2 + math.log(1 + math.exp(-0.2))])
    # scale multiplies the similarities before the margin: logits = [[1, 0], [1.2, 0.6]]
    s2i, _ = margin_info_nce(speech, images, margin=1.0, scale=2.0)
    assert s2i[1].item() == pytest.approx(-0.6 + math.log(math.exp(1.2) + math.exp(0.6)))


def test_other_captions_of_the_same_image_are_not_negatives():
    g = torch.Generator().manual_seed(0)
    speech, images = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    ids = ["a", "a", "b", "c", "a"]
    s2i, i2s = margin_info_nce(speech, images, ids)
    changed = speech.clone()
    changed[1] = torch.randn(8, generator=g) * 5  # another caption of image "a"
    changed[4] = torch.randn(8, generator=g) * 5
    images2 = images.clone()
    images2[1] = torch.randn(8, generator=g)  # the same image again (a row of the same id)
    s2i_b, i2s_b = margin_info_nce(changed, images2, ids)
    assert s2i_b[0].item() == pytest.approx(s2i[0].item()) and i2s_b[0].item() == pytest.approx(i2s[0].item())
    # a caption of another image is a negative: changing it changes image 0's loss
    other = speech.clone()
    other[2] = torch.randn(8, generator=g) * 5
    assert margin_info_nce(other, images, ids)[1][0].item() != pytest.approx(i2s[0].item())
    # without ids every other row is a negative, so the same change does move the loss
    assert margin_info_nce(changed, images, None)[1][0].item() != pytest.approx(
        margin_info_nce(speech, images, None)[1][0].item()
    )


def test_image_cnn_macs_are_the_analytic_conv_count_and_enter_the_pair_cost():
    cnn = ImageCNN((8, 16, 32))
    expected = 8 * 3 * 9 * 24 * 24 + 16 * 8 * 9 * 12 * 12 + 32 * 16 * 9 * 6 * 6
    assert cnn.macs_per_image(48) == expected
    model = VGSModel(build_encoder(TINY_ENCODER), cnn, dim=16, image_size=48)
    assert model.head_macs_per_frame() == 2 * 32
    assert model.macs_per_pair(8) == 32 * 16 + expected + 32 * 16 + 8 * 16
    assert model.batch_training_flops(8) == 6 * 8 * model.macs_per_pair(8)


def test_vgs_can_pool_an_inner_layer_of_any_encoder():
    torch.manual_seed(0)
    encoder = build_encoder(TINY_ENCODER)
    model = VGSModel(encoder, ImageCNN((8, 16)), dim=16, image_size=32, layer=1)
    batch = {
        "features": torch.randn(3, 80, 80),
        "lengths": torch.tensor([80, 70, 60]),
        "images": torch.randn(3, 3, 32, 32),
        "image_ids": ["x", "y", "z"],
    }
    model(batch)[0].backward()
    assert all(p.grad is None for p in encoder.blocks[1].parameters())  # above the pooled layer
    assert any(p.grad is not None for p in encoder.blocks[0].parameters())
    nano = build_encoder("zipformer-nano")
    assert VGSModel(nano, ImageCNN((8,)), dim=8, layer=2).speech_proj.in_features == 64  # stack 2 is 64 wide
    with pytest.raises(SpeechBudgetError, match="between 1 and 2"):
        VGSModel(encoder, ImageCNN((8,)), layer=3)


def test_precomputed_features_from_npy_and_npz(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "f.npy", feats)
    with pytest.raises(SpeechBudgetError, match="ids.txt"):
        load_feature_table(tmp_path / "f.npy")
    (tmp_path / "f.ids.txt").write_text("x\ny\nz\n")
    np.savez(tmp_path / "g.npz", x=feats[0], y=feats[1], z=feats[2])
    for name in ("f.npy", "g.npz"):
        enc = PrecomputedImageFeatures.from_file(tmp_path / name)
        assert enc(["z", "x"]).tolist() == [feats[2].tolist(), feats[0].tolist()]
    model = VGSModel(build_encoder(TINY_ENCODER), enc, dim=8)
    batch = {
        "features": torch.randn(3, 60, 80),
        "lengths": torch.tensor([60, 50, 40]),
        "image_ids": ["x", "y", "x"],
    }
    loss, stats = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.image_proj.weight.grad is not None and stats["pairs"] == 3
    with pytest.raises(SpeechBudgetError, match="no precomputed features"):
        enc(["nope"])


@pytest.fixture(scope="module")
def scenes_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    spec = CorpusSpec.build(
        "synthetic-scenes",
        {
            "scenes": 16,
            "captions_per_scene": 2,
            "voices": 10,
            "seed": 2,
            "image_size": 32,
            "distractors": 0.5,
        },
    )
    prepare(spec, root)
    return root / "synthetic-scenes"


def test_twenty_steps_of_vgs_training_on_scenes_lower_the_loss(scenes_corpus):
    torch.manual_seed(0)
    cuts = load_cuts(scenes_corpus / "cuts_train.jsonl.gz").to_eager()
    dataset = ImageSpeechDataset(image_size=32)
    everything = dataset[cuts]
    assert everything["images"].shape == (len(cuts), 3, 32, 32)
    assert len(set(everything["image_ids"])) < len(cuts)  # several captions per image in one batch
    model = VGSModel(build_encoder(TINY_ENCODER), ImageCNN((8, 16, 32)), dim=32, image_size=32)

    def full_loss() -> float:
        with torch.no_grad():
            return model(everything)[0].item()

    before = full_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sampler = make_sampler(cuts, max_duration=20.0, num_buckets=2, seed=0)
    steps = 0
    while steps < 20:
        for batch_cuts in sampler:
            loss, stats = model(dataset[batch_cuts])
            assert math.isfinite(stats["loss"]) and stats["chance_loss"] > 0
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps == 20:
                break
        sampler.set_epoch(steps)
    after = full_loss()
    assert after < before - 0.2, (before, after)
    # the trained dual encoder, evaluated the way `evaluate` will: each image embedded once
    out = embed_pairs(model, (dataset[c] for c in make_sampler(cuts, 20.0, 2, seed=1, shuffle=False)))
    assert sorted(out["ids"]) == sorted(c.id for c in cuts) and len(out["images"]) == len(
        set(out["image_ids"])
    )
    assert [out["image_ids"][k] for k in out["caption_image"]] == [cut_image(cuts[i])[1] for i in out["ids"]]
    report = retrieval_report(out["speech"], out["images"], out["caption_image"], bootstrap=100)
    chance_r5 = 5 / len(out["images"])
    assert report["speech_to_image"]["r@5"] > 1.3 * chance_r5  # above chance after 20 steps
