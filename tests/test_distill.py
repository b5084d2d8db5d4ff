"""CMKD: the loss against a hand count, clips without a teacher, the logits table, the CNN teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fsdd_clips import fsdd_cuts

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.presets import build_encoder
from speechbudget.objectives.classify import ClassifierModel
from speechbudget.objectives.distill import distillation_loss
from speechbudget.objectives.teacher_logits import load_teacher_logits, predict_logits, save_teacher_logits

torch.set_num_threads(1)


def bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_distillation_loss_matches_a_hand_count_and_masks_clips_without_teacher():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, -2.0], [7.0, 7.0]])  # clip 1's row is junk: it has no teacher
    has = torch.tensor([True, False])
    loss, stats = distillation_loss(logits, target, teacher, has, loss="bce", lam=0.1, temperature=2.0)
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    hard0 = (bce(2.0, 1) + bce(-1.0, 0)) / 2
    soft0 = (bce(1.0, s(0.5)) + bce(-0.5, s(-1.0))) / 2  # student and teacher both divided by T = 2
    hard1 = (bce(0.5, 0) + bce(0.0, 1)) / 2
    expected = ((0.1 * hard0 + 0.9 * soft0) + hard1) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["teacher_clips"] == 1 and stats["no_teacher_clips"] == 1
    assert stats["soft_loss"] == pytest.approx(soft0, rel=1e-6)
    everyone, _ = distillation_loss(logits, target, teacher, None, loss="bce", lam=0.1, temperature=2.0)
    assert everyone.item() != pytest.approx(expected, rel=1e-3)  # the mask matters


def test_ce_distillation_loss_matches_a_hand_count():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    target = torch.tensor([[0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    loss, _ = distillation_loss(logits, target, teacher, loss="ce", lam=0.3)
    log_z = math.log(math.e + 1 + math.exp(-1))
    log_p = [1 - log_z, -log_z, -1 - log_z]
    q = [1 / (2 + math.e**2), math.e**2 / (2 + math.e**2), 1 / (2 + math.e**2)]
    soft = -sum(qi * lp for qi, lp in zip(q, log_p))
    assert loss.item() == pytest.approx(0.3 * -log_p[1] + 0.7 * soft, rel=1e-6)


def test_lambda_one_is_the_plain_loss_and_bad_settings_are_user_errors():
    logits, target = torch.randn(4, 5), torch.rand(4, 5).round()
    teacher = torch.randn(4, 5)
    loss, _ = distillation_loss(logits, target, teacher, lam=1.0)
    assert loss.item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()
    )
    with pytest.raises(SpeechBudgetError, match="lambda"):
        distillation_loss(logits, target, teacher, lam=1.5)
    with pytest.raises(SpeechBudgetError, match="class list"):
        distillation_loss(logits, target, teacher[:, :3])


def test_logits_table_round_trip_reordering_and_vocabulary_mismatch(tmp_path):
    classes = ["dog", "cat", "bird"]
    table = {"a/1": np.array([1.0, 2.0, 3.0]), "b": np.array([-1.0, 0.0, 0.5])}
    npz = save_teacher_logits(tmp_path / "teacher", table, classes, {"preset": "mn-tiny", "run": "r1"})
    assert npz.name == "teacher.npz" and (tmp_path / "teacher.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    loaded = load_teacher_logits(tmp_path / "teacher.npz", classes)
    assert loaded.teacher == {"preset": "mn-tiny", "run": "r1"} and len(loaded) == 2
    got, has = loaded.lookup(["b", "missing", "a/1"])
    assert has.tolist() == [True, False, True]
    assert got.tolist() == [[-1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    reordered, _ = load_teacher_logits(tmp_path / "teacher", ["bird", "dog", "cat"]).lookup(["a/1"])
    assert reordered.tolist() == [[3.0, 1.0, 2.0]]
    with pytest.raises(SpeechBudgetError, match="another class vocabulary"):
        load_teacher_logits(tmp_path / "teacher", ["dog", "cat", "fish"])
    with pytest.raises(SpeechBudgetError, match="no teacher logits"):
        load_teacher_logits(tmp_path / "other")


def test_mobilenet_presets_sizes_and_padding():
    sizes = {
        n: sum(p.numel() for p in build_encoder(n).parameters()) for n in ("mn-tiny", "mn-small", "mn-base")
    }
    assert 0.8e6 < sizes["mn-tiny"] < sizes["mn-small"] < sizes["mn-base"] < 5.5e6
    torch.manual_seed(0)
    enc = build_encoder("mn-tiny").eval()
    for m in enc.modules():  # trained-like batch norms: padded zeros no longer stay zero
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.bias.data.normal_()
    x, lengths = torch.randn(2, 150, 128), torch.tensor([150, 70])
    with torch.no_grad():
        out = enc(x, lengths)
        alone = enc(x[1:, :70], lengths[1:])
    assert out.lengths.tolist() == [5, 3] and enc.frame_rate_hz == 100 / 32
    assert torch.allclose(out.hidden[1, :3], alone.hidden[0], atol=1e-5)
    assert (out.hidden[1, 3:] == 0).all()


def test_a_mobilenet_teacher_on_real_audio_feeds_a_distilled_ast_student(tmp_path):
    """Teacher logits from real FSDD clips -> stored -> looked up -> a CMKD step on a merged AST."""
    from lhotse.dataset.collation import collate_features

    cuts = fsdd_cuts(tmp_path / "fb", digits=(0, 1), speakers=("george",), per=2)
    features, lengths = collate_features(cuts)
    ids = [c.id for c in cuts]
    torch.manual_seed(0)
    teacher = ClassifierModel(build_encoder("mn-tiny"), num_classes=2)
    table = predict_logits(teacher, [{"features": features, "lengths": lengths, "ids": ids}])
    save_teacher_logits(tmp_path / "t", table, ["0", "1"], {"preset": "mn-tiny"})
    t_logits, has = load_teacher_logits(tmp_path / "t", ["0", "1"]).lookup(ids + ["unseen"])
    assert has.tolist() == [True] * len(ids) + [False]
    spec = {"preset": "ast-tiny", "dim": 32, "heads": 4, "layers": 2, "dist_token": True, "tome": {"r": 8}}
    student = ClassifierModel(build_encoder(spec), num_classes=2, loss="bce")
    labels = torch.tensor([0, 0, 1, 1])  # digits 0, 0, 1, 1 in fsdd_cuts' order
    logits = student.logits(features, lengths)
    loss, stats = distillation_loss(logits, student.targets(labels), t_logits[: len(ids)], has[: len(ids)])
    loss.backward()
    assert math.isfinite(loss.item()) and stats["teacher_clips"] == len(ids)
    assert student.encoder.prefix.grad.abs().sum() > 0


def tiny_student(**kw) -> ClassifierModel:
    torch.manual_seed(0)
    spec = {"preset": "ast-tiny", "dim": 32, "heads": 4, "layers": 2, "tome": {"r": 4}}
    return ClassifierModel(build_encoder(spec), num_classes=3, **kw)


def test_distillation_model_is_the_student_without_teacher_rows_and_cmkd_with_them(tmp_path):
    from speechbudget.objectives.distill import DistillationModel

    student = tiny_student(loss="ce", label_smoothing=0.1).eval()
    x, lengths = torch.randn(4, 60, 128), torch.tensor([60, 60, 45, 30])
    batch = {"features": x, "lengths": lengths, "labels": torch.tensor([0, 1, 2, 1]), "ids": list("abcd")}
    classes = ["x", "y", "z"]
    save_teacher_logits(tmp_path / "none", {"zz": np.zeros(3)}, classes, {"preset": "mn-tiny"})
    alone = DistillationModel(student, load_teacher_logits(tmp_path / "none", classes), lam=0.1).eval()
    with torch.no_grad():
        loss, stats = alone(batch)
        assert loss.item() == pytest.approx(student(batch)[0].item(), rel=1e-5)
        assert stats["no_teacher_clips"] == 4
        teacher = {i: np.random.default_rng(k).normal(size=3) for k, i in enumerate("abc")}
        save_teacher_logits(tmp_path / "t", teacher, classes, {"preset": "mn-tiny"})
        table = load_teacher_logits(tmp_path / "t", classes)
        model = DistillationModel(student, table, lam=0.3, temperature=2.0).eval()
        loss, stats = model(batch)
        t_logits, has = table.lookup(batch["ids"])
        target = student.targets(batch["labels"]) * 0.9 + 0.1 / 3
        ref, _ = distillation_loss(student.logits(x, lengths), target, t_logits, has, "ce", 0.3, 2.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and stats["teacher_clips"] == 3
    with pytest.raises(SpeechBudgetError, match="classes"):
        DistillationModel(ClassifierModel(build_encoder("mn-tiny"), num_classes=2), table)


def test_distillation_model_trains_with_mixup():
    from speechbudget.objectives.distill import DistillationModel
    from speechbudget.objectives.teacher_logits import TeacherLogits

    student = tiny_student(loss="bce", mixup=1.0).train()
    table = TeacherLogits(["a", "b"], np.ones((2, 3), dtype=np.float32), ["x", "y", "z"], {})
    model = DistillationModel(student, table)
    batch = {
        "features": torch.randn(4, 60, 128),
        "lengths": torch.tensor([60, 50, 40, 30]),
        "labels": torch.tensor([0, 1, 2, 1]),
        "ids": list("abcd"),
    }
    loss, stats = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and 0 <= stats["teacher_clips"] <= 4
    assert stats["teacher_clips"] + stats["no_teacher_clips"] == pytest.approx(4)
    assert student.head.weight.grad.abs().sum() > 0
