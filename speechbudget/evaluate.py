"""``speechbudget evaluate`` and ``predict``: a trained classifier on cut sets, or on any audio files.

``evaluate`` writes, atomically, into ``EXP/evaluate-<set>/``: ``metrics-<set>.json`` (accuracy,
macro-F1 or mAP with bootstrap 95% intervals, per-class rows, confusion counts), ``per-class-<set>.txt``,
``predictions-<set>.tsv`` (id, true classes, top class, its probability) and ``confusion-<set>.png``
(single-label). ``report`` reads the metrics file; the classes are the experiment's ``labels.json``.

``distill-targets`` runs a trained classifier (the CMKD teacher) once over a cut set and stores its
logits beside the cuts, for students to read (``distill.targets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from lhotse.dataset import SimpleCutSampler

from . import atomic, progress
from .config import ClassifyConfig, from_dict
from .data.audio import audio_files, none_read, read_audio
from .data.dataset import make_loader
from .data.labels import VOCAB_FILE, LabelVocabulary, label_transform, load_vocabulary
from .data.manifests import load_cuts
from .errors import SpeechBudgetError
from .evaluation.classification import classification_report, per_class_lines, plot_confusion_matrix
from .models.presets import build_encoder
from .objectives.classify import ClassifierModel, collect_predictions
from .objectives.teacher_logits import predict_logits, save_teacher_logits, table_paths
from .train import checkpoint as ckpt
from .train.classify import build_classifier
from .train.distributed import device_option
from .train.setup import dataset_for, encoder_input


def _exp_of(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_classifier(
    path: Path, device: torch.device
) -> Tuple[ClassifierModel, LabelVocabulary, Dict[str, Any]]:
    """A classification experiment folder (its newest checkpoint) or a checkpoint file -> eval-mode model."""
    ck, exp = ckpt.resolve(Path(path)), _exp_of(path)
    state = ckpt.load(ck)
    config = state.get("config") or {}
    if state.get("stage") == "pretrain":
        raise SpeechBudgetError(
            f"{ck} is a pretraining checkpoint; fine-tune a classifier from it first "
            "(`speechbudget finetune RECIPE task=classify classify.init_checkpoint=...`)"
        )
    if config.get("task") != "classify":
        raise SpeechBudgetError(
            f"{ck} is not a classifier (task {config.get('task', 'ctc')!r}); use `speechbudget decode` for CTC"
        )
    vocab = load_vocabulary(exp / VOCAB_FILE)
    options = from_dict(ClassifyConfig, config.get("classify") or {}, prefix="classify.")
    model = build_classifier(build_encoder(config["encoder"]), vocab, options, training=False)
    model.load_state_dict(state["model"])
    info = {
        "checkpoint": str(ck),
        "exp_dir": str(exp),
        "step": (state.get("counters") or {}).get("step"),
        "encoder": config["encoder"],
    }
    return model.to(device).eval(), vocab, info


def evaluate(
    model_path: Path,
    cuts_path: Path,
    out_dir: Optional[Path] = None,
    set_name: Optional[str] = None,
    bootstrap: int = 1000,
    max_duration: float = 120.0,
    device: str = "cpu",
) -> Dict[str, Any]:
    dev = device_option(device)
    model, vocab, info = load_classifier(model_path, dev)
    cuts = load_cuts(cuts_path).to_eager()
    if len(cuts) == 0:
        raise SpeechBudgetError(f"{cuts_path} holds no cuts to evaluate")
    vocab.check(cuts)
    set_name = set_name or Path(cuts_path).name.replace("cuts_", "").split(".")[0]
    out_dir = Path(out_dir) if out_dir else Path(info["exp_dir"]) / f"evaluate-{set_name}"
    atomic.check_writable(out_dir, "evaluation output folder")
    dataset = dataset_for(model.encoder, transform=label_transform(cuts, vocab))
    loader = make_loader(dataset, SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False))
    batches = progress.track(loader, total=None, description=f"evaluating {set_name}")
    pred = collect_predictions(model, batches, dev)
    report = classification_report(
        pred["scores"], pred["labels"], vocab.classes, vocab.multi_label, bootstrap=bootstrap
    )
    summary: Dict[str, Any] = {
        "set": set_name,
        "cuts": str(cuts_path),
        **{
            k: report[k]
            for k in ("clips", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "mAP", "mAP_ci")
            if k in report
        },
        "checkpoint": info["checkpoint"],
        "step": info["step"],
        "out_dir": str(out_dir),
    }
    atomic.write_json(out_dir / f"metrics-{set_name}.json", {**summary, "report": report})
    atomic.write_text(out_dir / f"per-class-{set_name}.txt", "\n".join(per_class_lines(report)) + "\n")
    _write_predictions(out_dir / f"predictions-{set_name}.tsv", pred, vocab)
    if not vocab.multi_label:
        png = plot_confusion_matrix(
            report["confusion"], vocab.classes, out_dir / f"confusion-{set_name}.png", set_name
        )
        summary["confusion_png"] = str(png)
    summary["per_class"] = report["per_class"]
    return summary


def _write_predictions(path: Path, pred: Dict[str, Any], vocab: LabelVocabulary) -> None:
    lines = ["id\ttrue\tpredicted\tprobability"]
    for cid, scores, label in zip(pred["ids"], pred["scores"], pred["labels"]):
        true = (
            [vocab.classes[i] for i in np.flatnonzero(label)]
            if vocab.multi_label
            else [vocab.classes[int(label)]]
        )
        top = int(np.argmax(scores))
        lines.append(f"{cid}\t{';'.join(true)}\t{vocab.classes[top]}\t{scores[top]:.4f}")
    atomic.write_text(path, "\n".join(lines) + "\n")


def predict(
    model_path: Path, audio: Sequence[Path], top: int = 5, device: str = "cpu"
) -> List[Dict[str, Any]]:
    """The ``top`` classes with their probabilities for each audio file, or folder of them (long
    files: the mean over windows the encoder accepts). A file that cannot be read gets an ``error``
    instead, and the others are still scored; none readable is an error."""
    if top < 1:
        raise SpeechBudgetError(f"--top must be at least 1 (got {top})")
    files = audio_files(audio)
    dev = device_option(device)
    model, vocab, _ = load_classifier(model_path, dev)
    from .data.features import fbank_extractor

    reads = encoder_input(model.encoder)  # the rule every stage's dataset follows
    waveform = reads["input_kind"] == "waveform"
    extractor = None if waveform else fbank_extractor(reads["num_mel_bins"])
    results: List[Dict[str, Any]] = []
    for path in files:
        try:
            wave = read_audio(path)
        except SpeechBudgetError as e:  # skipped and reported, the other files still scored
            results.append({"audio": str(path), "error": str(e)})
            continue
        feats = wave.unsqueeze(-1) if waveform else torch.from_numpy(extractor.extract(wave.numpy(), 16000))
        windows = len(feats.split(model.max_input_frames or feats.size(0)))
        probs = model.probabilities(feats.unsqueeze(0).to(dev), torch.tensor([feats.size(0)], device=dev))[0]
        k = min(top, len(vocab))
        values, idx = probs.cpu().topk(k)
        results.append(
            {
                "audio": str(path),
                "seconds": round(wave.numel() / 16000, 3),
                "windows": windows,
                "top": [
                    {"class": vocab.classes[i], "probability": float(p)} for p, i in zip(values, idx.tolist())
                ],
            }
        )
    if all("error" in r for r in results):
        raise none_read([r["error"] for r in results])
    return results


def default_targets_path(teacher: Path, cuts_path: Path) -> Path:
    """``<cuts folder>/logits-<teacher exp>-<set>``: beside the cuts, one table per teacher and set."""
    set_name = Path(cuts_path).name.replace("cuts_", "").split(".")[0]
    return Path(cuts_path).parent / f"logits-{_exp_of(Path(teacher)).name}-{set_name}"


def distill_targets(
    teacher: Path,
    cuts_path: Path,
    out: Optional[Path] = None,
    max_duration: float = 120.0,
    device: str = "cpu",
) -> Dict[str, Any]:
    """The teacher's logits for every cut (labelled or not), with its identity and class vocabulary
    recorded; -> where they went and what was stored."""
    dev = device_option(device)
    model, vocab, info = load_classifier(teacher, dev)
    cuts = load_cuts(cuts_path).to_eager()
    if len(cuts) == 0:
        raise SpeechBudgetError(f"{cuts_path} holds no cuts to compute teacher logits for")
    out = Path(out) if out else default_targets_path(teacher, cuts_path)
    atomic.check_writable(out.parent, "teacher logits folder")  # before the logits, not after
    loader = make_loader(
        dataset_for(model.encoder), SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False)
    )
    logits = predict_logits(model, progress.track(loader, total=None, description="teacher logits"), dev)
    identity = {
        **info,
        "params": sum(p.numel() for p in model.parameters()),
        "cuts": str(cuts_path),
    }
    npz = save_teacher_logits(out, logits, vocab.classes, identity)
    return {
        "targets": str(table_paths(npz)[0].with_suffix("")),
        "npz": str(npz),
        "clips": len(logits),
        "classes": len(vocab),
        "teacher": identity,
    }
