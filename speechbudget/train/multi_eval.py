"""Evaluate what ``train-multi`` trained: cross-modal retrieval and per-layer ABX, into files in EXP.

EXP is a schedule folder (its ``multi.json`` names the phases; the last phase's newest checkpoint is
evaluated) or one phase folder. ``probe abx`` also takes any training run (pretrain, finetune): it
needs only the encoder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .. import atomic
from ..config import TrainConfig, from_dict
from ..data.manifests import load_cuts, one_manifest
from ..errors import SpeechBudgetError
from ..evaluation.abx import abx_per_layer, cut_items
from ..evaluation.retrieval import embed_pairs, retrieval_report
from ..models.presets import build_encoder
from . import checkpoint as ckpt
from .multi import SPEC, build_multi_model, make_dataset
from .multi_config import VGSOptions


def _spec_and_checkpoint(exp: Path) -> Tuple[Optional[Dict[str, Any]], Path]:
    """(multi.json or None, the checkpoint to evaluate)."""
    exp = Path(exp)
    for folder in (exp, exp.parent):
        if (folder / SPEC).is_file():
            spec = json.loads((folder / SPEC).read_text())
            run = exp if folder != exp else folder / spec["phases"][-1]["dir"]
            return spec, ckpt.resolve(run)
    if not exp.exists():
        raise SpeechBudgetError(f"{exp} does not exist")
    return None, ckpt.resolve(exp)


def _check_trained_vgs(exp: Path, spec: Dict[str, Any]) -> None:
    """Retrieval needs a VGS head that learnt something: a phase folder whose phases so far all had VGS
    weight 0 (a sequential schedule's HuBERT phase) has a head still at its initial weights."""
    exp = Path(exp)
    names = [p["dir"] for p in spec["phases"]]
    upto = names.index(exp.name) + 1 if exp.name in names else len(names)
    if not any((p.get("objectives") or {}).get("vgs", 0) > 0 for p in spec["phases"][:upto]):
        raise SpeechBudgetError(
            f"{exp} trained no VGS objective (its phases so far: "
            f"{', '.join(names[:upto])}): its retrieval head is untrained; evaluate a later phase or the "
            "schedule folder"
        )


def load_dual_encoder(exp: Path):
    spec, path = _spec_and_checkpoint(exp)
    if spec is None:
        raise SpeechBudgetError(f"{exp} is not a train-multi experiment (no {SPEC} in it or above it)")
    _check_trained_vgs(exp, spec)
    train = from_dict(TrainConfig, spec["train"])
    model = build_multi_model(train, from_dict(VGSOptions, spec["vgs"]), spec["num_clusters"])
    model.load_state_dict(ckpt.load(path)["model"])
    return model, from_dict(VGSOptions, spec["vgs"]), train, path


def _batches(dataset, cuts, max_duration: float):
    from lhotse.dataset import SimpleCutSampler

    for batch_cuts in SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False):
        yield dataset[batch_cuts]


def evaluate_retrieval(exp: Path, cuts_path: Path, bootstrap: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """Recall@1/5/10 both ways with bootstrap 95% CIs; written to ``EXP/retrieval.json``."""
    model, vgs, train, path = load_dual_encoder(exp)
    cuts = load_cuts(one_manifest(cuts_path, "evaluate-retrieval")).to_eager()
    dataset = make_dataset(model, vgs, with_kmeans=False)
    pairs = embed_pairs(model.heads["vgs"], _batches(dataset, cuts, train.max_duration))
    report = retrieval_report(
        pairs["speech"], pairs["images"], pairs["caption_image"], bootstrap=bootstrap, seed=seed
    )
    out = {"exp_dir": str(exp), "checkpoint": str(path), "cuts": str(Path(cuts_path).absolute()), **report}
    atomic.write_json(Path(exp) / "retrieval.json", out)
    return out


def load_encoder(exp: Path) -> Tuple[torch.nn.Module, Path]:
    spec, path = _spec_and_checkpoint(exp)
    enc_spec, weights, path = ckpt.encoder_state(path)
    encoder = build_encoder(enc_spec)
    encoder.load_state_dict(weights)
    return encoder, path


def probe_abx(
    exp: Path,
    cuts_path: Path,
    layers: Sequence[str] = ("all",),
    mode: str = "across",
    max_per_group: Optional[int] = 4,
) -> Dict[str, Any]:
    """ABX error of each encoder layer (``input``, ``layer1``..), items labelled by their transcript;
    written to ``EXP/abx.json``."""
    if mode not in ("across", "within"):
        raise SpeechBudgetError(f"--mode must be across or within, got {mode!r}")
    encoder, path = load_encoder(exp)
    feats, labels, speakers = cut_items(load_cuts(one_manifest(cuts_path, "probe abx")))
    if not feats:
        raise SpeechBudgetError(f"{cuts_path} has no cuts")
    report = abx_per_layer(encoder, feats, labels, speakers, mode=mode, max_per_group=max_per_group)
    wanted = [x for x in layers if x != "all"]
    if wanted:
        names = [w if w == "input" or w.startswith("layer") else f"layer{w}" for w in wanted]
        unknown = [n for n in names if n not in report["layers"]]
        if unknown:
            raise SpeechBudgetError(
                f"no layer {unknown[0]!r}; this encoder has: {', '.join(report['layers'])} (or 'all')"
            )
        report["layers"] = {n: report["layers"][n] for n in names}
    finite = {k: v["error"] for k, v in report["layers"].items() if math.isfinite(v["error"])}
    if not finite:  # nothing to score: say why, and leave an earlier abx.json as it was
        raise SpeechBudgetError(
            f"no ABX triplet in {cuts_path}: {mode} needs a transcript said "
            + ("by two speakers" if mode == "across" else "twice by one speaker")
            + " (give cuts of more speakers or utterances, or the other --mode)"
        )
    report["best_layer"] = min(finite, key=finite.get)
    for v in report["layers"].values():  # no triplet (no label said by two speakers): null, not NaN
        v["error"] = v["error"] if math.isfinite(v["error"]) else None
    out = {"exp_dir": str(exp), "checkpoint": str(path), "cuts": str(Path(cuts_path).absolute()), **report}
    atomic.write_json(Path(exp) / "abx.json", out)
    return out
