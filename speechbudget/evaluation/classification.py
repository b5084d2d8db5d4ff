"""Audio classification metrics: accuracy, macro-F1, mAP, per-class table, bootstrap intervals, confusion PNG.

* Single-label (Speech Commands, FSDD digits): accuracy and macro-F1 of the arg-max class.
* Multi-label (AudioSet): mAP = the mean over classes of scikit-learn's ``average_precision_score``,
  over classes with at least one positive clip (AP is undefined without one), as AudioSet
  papers report it.
* Intervals: percentile bootstrap over clips (resampled with replacement, seeded), 95% by default;
  mAP's resamples reuse one sort per class (:class:`WeightedAP`), checked against scikit-learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import write_png


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def per_class_prf(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> Dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn's zero_division=0)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0).astype(np.float64), cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: Optional[int] = None) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    num_classes = num_classes or int(max(y_true.max(), y_pred.max())) + 1
    f1 = per_class_prf(y_true, y_pred, num_classes)["f1"]
    present = np.zeros(num_classes, dtype=bool)
    present[np.unique(np.concatenate([y_true, y_pred]))] = True
    return float(f1[present].mean())


def average_precisions(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP per class (NaN for classes without a positive clip)."""
    from sklearn.metrics import average_precision_score

    targets, scores = np.asarray(targets), np.asarray(scores)
    ap = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        if targets[:, c].any():
            ap[c] = average_precision_score(targets[:, c], scores[:, c])
    return ap


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    ap = average_precisions(targets, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def _percentile_interval(values: List[float], confidence: float) -> Tuple[float, float]:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


class WeightedAP:
    """Per-class AP of a reweighted clip set, equal to scikit-learn's on the set with clip ``j``
    repeated ``weights[j]`` times; the columns are sorted once, so each bootstrap resample costs a
    few cumulative sums instead of a sort per class (AudioSet: 527 classes x 20k clips)."""

    def __init__(self, targets: np.ndarray, scores: np.ndarray):
        scores = np.asarray(scores, dtype=np.float64)
        n = len(scores)
        self.order = np.argsort(-scores, axis=0, kind="stable")
        s = np.take_along_axis(scores, self.order, 0)
        self.t = np.take_along_axis(np.asarray(targets, dtype=np.float64), self.order, 0)
        # a threshold of the precision-recall curve ends each run of tied scores
        is_end = np.ones(s.shape, dtype=bool)
        is_end[:-1] = s[:-1] != s[1:]
        last = np.where(is_end, np.arange(n)[:, None], n)
        self.group_end = np.minimum.accumulate(last[::-1], axis=0)[::-1]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)[self.order]
        wt = w * self.t
        tp, count = np.cumsum(wt, 0), np.cumsum(w, 0)
        precision = np.divide(tp, count, out=np.zeros_like(tp), where=count > 0)
        at_threshold = np.take_along_axis(precision, self.group_end, 0)
        positives = wt.sum(0)
        ap = np.full(positives.shape, np.nan)
        np.divide((wt * at_threshold).sum(0), positives, out=ap, where=positives > 0)
        return ap


def bootstrap_map(
    targets: np.ndarray, scores: np.ndarray, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Tuple[float, float]:
    """Percentile bootstrap interval of mAP (clips resampled with replacement, seeded)."""
    ap = WeightedAP(targets, scores)
    n = len(scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        per_class = ap(np.bincount(rng.integers(0, n, n), minlength=n))
        values.append(float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"))
    return _percentile_interval(values, confidence)


def bootstrap_interval(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Tuple[float, float]:
    """Percentile bootstrap: ``metric`` on clips resampled with replacement (rows of every array)."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        values.append(metric(*(a[idx] for a in arrays)))
    return _percentile_interval(values, confidence)


def classification_report(
    scores: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    multi_label: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Dict:
    """Metrics of ``scores`` (N, C) against ``labels`` ((N,) indices, or (N, C) multi-hot).

    Single-label: accuracy, macro_f1, confusion matrix. Multi-label: mAP. Both: per-class rows and
    ``{metric}_ci`` 95% bootstrap intervals (``bootstrap`` resamples, ``seed``).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    num_classes = len(classes)
    out: Dict = {"clips": int(len(scores)), "classes": list(classes), "multi_label": multi_label}
    if multi_label:
        ap = average_precisions(labels, scores)
        out["mAP"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
        if bootstrap:
            out["mAP_ci"] = bootstrap_map(labels, scores, samples=bootstrap, seed=seed)
        out["per_class"] = [
            {"class": c, "support": int(labels[:, i].sum()), "ap": None if np.isnan(ap[i]) else float(ap[i])}
            for i, c in enumerate(classes)
        ]
        return out
    pred = scores.argmax(1)
    out["accuracy"] = accuracy(labels, pred)
    out["macro_f1"] = macro_f1(labels, pred, num_classes)
    if bootstrap:
        out["accuracy_ci"] = bootstrap_interval(accuracy, labels, pred, samples=bootstrap, seed=seed)
        out["macro_f1_ci"] = bootstrap_interval(
            lambda t, p: macro_f1(t, p, num_classes), labels, pred, samples=bootstrap, seed=seed
        )
    prf = per_class_prf(labels, pred, num_classes)
    out["per_class"] = [
        {
            "class": c,
            "support": int(prf["support"][i]),
            "precision": float(prf["precision"][i]),
            "recall": float(prf["recall"][i]),
            "f1": float(prf["f1"][i]),
        }
        for i, c in enumerate(classes)
    ]
    out["confusion"] = confusion_matrix(labels, pred, num_classes).tolist()
    return out


def per_class_lines(report: Dict) -> List[str]:
    """The per-class table as aligned text lines (for logs and the CLI)."""
    rows = report["per_class"]
    width = max([5] + [len(r["class"]) for r in rows])
    if report["multi_label"]:
        head = f"{'class':<{width}}  support      AP"
        ap = lambda r: "-" if r["ap"] is None else f"{r['ap']:.4f}"
        body = [f"{r['class']:<{width}}  {r['support']:>7}  {ap(r):>6}" for r in rows]
    else:
        head = f"{'class':<{width}}  support  precision  recall      F1"
        body = [
            f"{r['class']:<{width}}  {r['support']:>7}  {r['precision']:>9.3f}  {r['recall']:>6.3f}  {r['f1']:>6.3f}"
            for r in rows
        ]
    return [head] + body


def plot_confusion_matrix(
    confusion: Union[np.ndarray, List[List[int]]],
    classes: Sequence[str],
    path: Union[str, Path],
    title: Optional[str] = None,
) -> Path:
    """A confusion-matrix PNG: class names on both axes, the count in every cell, accuracy in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cm = np.asarray(confusion)
    n = len(classes)
    acc = np.trace(cm) / max(cm.sum(), 1)
    size = min(max(5.5, 0.5 * n + 2.0), 20.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=120)
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="clips")
    bar.locator = matplotlib.ticker.MaxNLocator(integer=True)  # counts: no 0.5 ticks
    bar.update_ticks()
    ax.set_xticks(
        range(n), labels=list(classes), rotation=45 if max(map(len, classes)) > 3 else 0, ha="right"
    )
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 40:  # beyond that the numbers no longer fit in the cells
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if cm[i, j] > threshold else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=9)
    ax.set_title(
        f"{title + ': ' if title else ''}accuracy {acc:.1%} ({int(np.trace(cm))}/{int(cm.sum())} clips)"
    )
    fig.tight_layout()
    path = Path(path)
    write_png(path, fig)
    plt.close(fig)
    return path
