"""Classification metrics against hand-computed cases and scikit-learn; bootstrap; confusion PNG."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from speechbudget.evaluation.classification import (
    WeightedAP,
    accuracy,
    average_precisions,
    bootstrap_interval,
    bootstrap_map,
    classification_report,
    confusion_matrix,
    macro_f1,
    mean_average_precision,
    per_class_lines,
    plot_confusion_matrix,
)

# 3 classes, 6 clips: true 0 0 1 1 2 2, predicted 0 1 1 1 2 0
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_accuracy_and_macro_f1_by_hand():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    # class 0: P 1/2 R 1/2 F1 1/2; class 1: P 2/3 R 1 F1 4/5; class 2: P 1 R 1/2 F1 2/3
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_map_by_hand_and_against_sklearn():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.9]])
    # class 0: ranking 0.9(+) 0.8(-) 0.3(+) -> AP = (1 + 2/3) / 2; class 1: 0.9(-) 0.7(+) 0.6(+) -> (1/2 + 2/3) / 2
    expected = ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert mean_average_precision(targets, scores) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    t = (rng.random((50, 6)) < 0.3).astype(int)
    t[:, 5] = 0  # a class without positives is left out, as AudioSet mAP does
    s = rng.random((50, 6))
    ours = mean_average_precision(t, s)
    assert ours == pytest.approx(np.mean([average_precision_score(t[:, c], s[:, c]) for c in range(5)]))


def test_bootstrap_is_seeded_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    lo, hi = bootstrap_interval(accuracy, y, pred, samples=300, seed=5)
    assert lo < accuracy(y, pred) < hi and hi - lo < 0.2
    assert bootstrap_interval(accuracy, y, pred, samples=300, seed=5) == (lo, hi)
    assert bootstrap_interval(accuracy, y, pred, samples=300, seed=6) != (lo, hi)


def test_weighted_ap_equals_sklearn_on_resampled_clips_with_ties():
    rng = np.random.default_rng(2)
    targets = (rng.random((120, 5)) < 0.25).astype(int)
    targets[:, 4] = 0
    scores = np.round(rng.random((120, 5)), 1)  # many tied scores
    ap = WeightedAP(targets, scores)
    assert np.allclose(ap(np.ones(120)), average_precisions(targets, scores), equal_nan=True)
    for _ in range(3):
        idx = rng.integers(0, 120, 120)
        reference = average_precisions(targets[idx], scores[idx])  # scikit-learn on the resample
        assert np.allclose(ap(np.bincount(idx, minlength=120)), reference, equal_nan=True)
    lo, hi = bootstrap_map(targets, scores, samples=200, seed=0)
    assert lo < mean_average_precision(targets, scores) < hi


def test_single_and_multi_label_reports():
    scores = np.eye(3)[Y_PRED] + 0.01
    report = classification_report(scores, Y_TRUE, ["zero", "one", "two"], bootstrap=200, seed=0)
    assert report["accuracy"] == pytest.approx(4 / 6)
    lo, hi = report["accuracy_ci"]
    assert lo <= report["accuracy"] <= hi
    assert report["per_class"][1] == {
        "class": "one",
        "support": 2,
        "precision": 2 / 3,
        "recall": 1.0,
        "f1": 0.8,
    }
    lines = per_class_lines(report)
    assert lines[0].split() == ["class", "support", "precision", "recall", "F1"] and "one" in lines[2]
    multi = classification_report(
        np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]]),
        np.array([[1, 0], [0, 1], [1, 0]]),
        ["a", "b"],
        True,
        100,
    )
    assert multi["mAP"] == pytest.approx(1.0) and multi["per_class"][0]["ap"] == pytest.approx(1.0)
    assert "accuracy" not in multi and len(per_class_lines(multi)) == 3


def test_confusion_png(tmp_path):
    classes = [str(d) for d in range(10)]
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 8)
    pred = np.where(rng.random(80) < 0.8, y, rng.integers(0, 10, 80))
    cm = confusion_matrix(y, pred, 10)
    path = plot_confusion_matrix(cm, classes, tmp_path / "confusion.png", title="FSDD digits")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".tmp*"))
