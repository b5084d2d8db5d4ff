"""Classification objective: pooling on every encoder family, augmentation, losses, and real training."""

from __future__ import annotations

import pytest
import torch
from fsdd_clips import fsdd_cuts

from speechbudget.data.dataset import SpeechDataset, make_loader, make_sampler
from speechbudget.data.feature_stats import compute_feature_stats
from speechbudget.data.labels import LabelVocabulary, label_transform
from speechbudget.errors import SpeechBudgetError
from speechbudget.evaluation.classification import classification_report, plot_confusion_matrix
from speechbudget.models.audio_mamba import AudioMamba
from speechbudget.models.bimamba import BiMambaEncoder
from speechbudget.models.spectrogram_transformer import AudioSpectrogramTransformer
from speechbudget.models.transformer import TransformerEncoder
from speechbudget.models.zipformer import build as build_zipformer
from speechbudget.objectives.classify import ClassifierModel, collect_predictions, roll_valid

torch.set_num_threads(1)


def test_roll_valid_rolls_within_each_clip():
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1).repeat(2, 1, 1)
    out = roll_valid(x, torch.tensor([6, 4]), torch.tensor([2, 1]))
    assert out[0, :, 0].tolist() == [4, 5, 0, 1, 2, 3]
    assert out[1, :, 0].tolist() == [3, 0, 1, 2, 4, 5]  # padding stays where it was


def speech_encoders():
    return {
        "transformer": TransformerEncoder(dim=32, layers=1, heads=4, ffn_dim=64, pos_conv_groups=4),
        "bimamba": BiMambaEncoder(dim=32, layers=1, d_state=4),
        "bimamba-cls": BiMambaEncoder(dim=32, layers=1, d_state=4, cls_token=True),
        "zipformer": build_zipformer(
            num_layers=(1, 1),
            dims=(32, 32),
            feedforward_dims=(64, 64),
            downsampling=(1, 2),
            num_heads=(2, 2),
            kernel_sizes=(3, 3),
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", ["transformer", "bimamba", "bimamba-cls", "zipformer"])
def test_every_speech_encoder_pools_padding_free(name):
    torch.manual_seed(0)
    encoder = speech_encoders()[name]
    model = ClassifierModel(encoder, num_classes=3, pooling="auto").eval()
    assert model.pooling == ("cls" if name == "bimamba-cls" else "mean")
    x = torch.randn(2, 60, encoder.input_dim)
    lengths = torch.tensor([60, 30])
    logits = model.logits(x, lengths)
    alone = model.logits(x[1:, :30], lengths[1:])
    assert logits.shape == (2, 3)
    assert torch.allclose(logits[1], alone[0], atol=1e-4)


def test_attention_pooling_ignores_padding_and_cls_needs_a_token():
    torch.manual_seed(0)
    enc = TransformerEncoder(dim=32, layers=1, heads=4, ffn_dim=64, pos_conv_groups=4)
    model = ClassifierModel(enc, num_classes=3, pooling="attention").eval()
    hidden = torch.randn(2, 10, 32)
    pooled = model.pool(hidden, torch.tensor([10, 4]))
    hidden[1, 4:] = 100.0
    assert torch.allclose(model.pool(hidden, torch.tensor([10, 4]))[1], pooled[1])
    assert model.head_macs_per_frame() == 64 and model.head_macs_per_clip() == 96
    with pytest.raises(SpeechBudgetError, match="no CLS"):
        ClassifierModel(enc, num_classes=3, pooling="cls")


def test_cls_pooling_reads_the_aum_middle_and_the_ast_token_pair():
    torch.manual_seed(0)
    aum = ClassifierModel(AudioMamba(dim=32, layers=1, d_state=4), num_classes=4).eval()
    hidden = torch.randn(2, 9, 32)
    lengths = torch.tensor([9, 5])
    assert torch.equal(aum.pool(hidden, lengths), torch.stack([hidden[0, 4], hidden[1, 2]]))
    ast = ClassifierModel(AudioSpectrogramTransformer(dim=32, layers=1, heads=4, dist_token=True), 4).eval()
    assert torch.allclose(ast.pool(hidden, lengths), 0.5 * (hidden[:, 0] + hidden[:, 1]))
    assert aum.head_macs_per_frame() == 0


def test_augmentation_is_on_in_training_and_off_in_eval():
    torch.manual_seed(0)
    enc = AudioMamba(dim=32, layers=1, d_state=4)
    model = ClassifierModel(enc, num_classes=2, mixup=1.0, mixup_alpha=1.0)
    x = torch.randn(4, 64, 128)
    lengths = torch.tensor([64, 64, 50, 40])
    target = model.targets(torch.tensor([0, 1, 0, 1]))
    ax, al, at = model.augment_batch(x, lengths, target)
    assert not torch.equal(ax, x)
    assert not torch.equal(at, target) and torch.allclose(at.sum(1), torch.ones(4))  # mixed labels
    assert (al >= lengths).all()
    batch = {"features": x, "lengths": lengths, "labels": torch.tensor([0, 1, 0, 1])}
    model.eval()
    first, _ = model(batch)
    second, _ = model(batch)
    assert torch.equal(first, second)
    expected = torch.nn.functional.cross_entropy(model.logits(x, lengths), batch["labels"])
    assert torch.allclose(first, expected)
    model.train()
    torch.manual_seed(1)
    train_losses = {model(batch)[1]["loss"] for _ in range(3)}
    assert len(train_losses) == 3  # random augmentation in training


def test_label_smoothing_and_multi_label_bce():
    torch.manual_seed(0)
    enc = AudioMamba(dim=32, layers=1, d_state=4)
    single = ClassifierModel(enc, 3, label_smoothing=0.1)
    logits = torch.randn(2, 3)
    target = single.targets(torch.tensor([2, 0]))
    manual = -((0.9 * target + 0.1 / 3) * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(single.loss_from_logits(logits, target), manual)
    multi = ClassifierModel(enc, 3, multi_label=True).eval()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    x, lengths = torch.randn(2, 40, 128), torch.tensor([40, 32])
    loss, stats = multi({"features": x, "lengths": lengths, "labels": labels})
    expected = torch.nn.functional.binary_cross_entropy_with_logits(multi.logits(x, lengths), labels)
    assert torch.allclose(loss, expected) and "accuracy" not in stats
    with pytest.raises(SpeechBudgetError, match="multi-hot"):
        multi({"features": x, "lengths": lengths, "labels": torch.tensor([0, 1])})
    one_hot_bce = ClassifierModel(enc, 3, loss="bce")  # AuM's Speech Commands recipe
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(one_hot_bce.loss_from_logits(logits, target), bce)
    with pytest.raises(SpeechBudgetError, match="bce"):
        ClassifierModel(enc, 3, multi_label=True, loss="ce")


def test_aum_learns_real_fsdd_digits(tmp_path):
    """AuM sized down (2 layers, dim 32), normalised with the clips' own statistics, fits 12 real
    clips of 3 digits in 20 steps."""
    torch.manual_seed(0)
    cuts = fsdd_cuts(tmp_path / "feats", digits=(0, 1, 2), speakers=("george", "jackson"), per=2)
    vocab = LabelVocabulary.from_cuts(cuts)
    assert vocab.classes == ["0", "1", "2"]
    dataset = SpeechDataset(transform=label_transform(cuts, vocab))
    batch = dataset[cuts]
    assert batch["features"].shape[-1] == 128 and batch["labels"].shape == (12,)
    stats = compute_feature_stats(cuts)
    encoder = AudioMamba(dim=32, layers=2, d_state=8, feature_mean=stats["mean"], feature_std=stats["std"])
    model = ClassifierModel(encoder, len(vocab), spec_augment=False, time_roll=False)
    opt = torch.optim.AdamW(model.optimizer_groups(1e-3), lr=1e-3)
    losses = []
    for _ in range(20):
        loss, stats = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert losses[-1] < 0.3 * losses[0], losses
    # evaluation path: lhotse batches -> scores -> report and confusion PNG
    loader = make_loader(dataset, make_sampler(cuts, max_duration=3.0, num_buckets=2, seed=0, shuffle=False))
    preds = collect_predictions(model, loader)
    assert model.training  # restored
    assert sorted(preds["ids"]) == sorted(c.id for c in cuts) and preds["scores"].shape == (12, 3)
    report = classification_report(preds["scores"], preds["labels"], vocab.classes, bootstrap=100)
    assert report["accuracy"] >= 0.9
    png = plot_confusion_matrix(report["confusion"], vocab.classes, tmp_path / "confusion.png", title="FSDD")
    assert png.stat().st_size > 5000
