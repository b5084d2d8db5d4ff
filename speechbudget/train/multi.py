"""``speechbudget train-multi``: HuBERT + VGS on one shared encoder, simultaneous or in phases.

Each phase is one Trainer run in ``EXP[/SCHEDULE]/phase-N-OBJECTIVES`` (budget, checkpoints, exact
resume, metrics): a killed run re-run with the same command skips the finished phases (their
budgets are spent) and resumes the one it was in. A phase starts from the previous phase's last
checkpoint (weights, and optimizer moments with ``optimizer: carry``). After each phase the held-out
losses of *every* objective are recorded, so the SSL loss before and after VGS shows forgetting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import atomic, locks
from ..config import TrainConfig, to_dict
from ..data.image_batches import ImageSpeechDataset
from ..errors import SpeechBudgetError
from ..models.image_encoder import ImageCNN, PrecomputedImageFeatures
from ..objectives.multi import MultiObjectiveModel
from ..objectives.vgs import VGSModel
from . import checkpoint as ckpt
from . import distributed
from .multi_config import MultiRecipe, Phase, VGSOptions, phase_config
from .pretrain import build_model as build_hubert
from .pretrain import count_clusters
from .setup import (
    dev_loader,
    encoder_cost_cached,
    encoder_input,
    make_data,
    total_seconds,
    training_cuts,
)
from .trainer import Trainer

SPEC = "multi.json"  # what evaluate-retrieval and probe abx rebuild the model from
STAGE = "ssl_vgs"


def build_multi_model(train: TrainConfig, vgs: VGSOptions, num_clusters: int) -> MultiObjectiveModel:
    """The same initial weights for the same seed, whatever the phase (heads included)."""
    hubert = build_hubert(train, num_clusters)
    image = (
        PrecomputedImageFeatures.from_file(Path(vgs.image_features))
        if vgs.image_features
        else ImageCNN(tuple(vgs.image_channels))
    )
    head = VGSModel(
        hubert.encoder,
        image,
        dim=vgs.dim,
        pooling=vgs.pooling,
        margin=vgs.margin,
        temperature=vgs.temperature,
        image_size=vgs.image_size,
        layer=vgs.layer,
    )
    return MultiObjectiveModel(hubert.encoder, {"hubert": hubert, "vgs": head})


def make_dataset(model: MultiObjectiveModel, vgs: VGSOptions, with_kmeans: bool = True) -> ImageSpeechDataset:
    return ImageSpeechDataset(
        image_size=vgs.image_size,
        load_pixels=not vgs.image_features,
        **encoder_input(model.encoder),
        with_kmeans=with_kmeans,
    )


def phase_cost(base: Dict[str, float], model: MultiObjectiveModel) -> Dict[str, float]:
    """The encoder charge times its passes per batch, the active heads per frame."""
    passes = model.encoder_passes()
    return {
        **base,
        "macs_per_input_second": base["macs_per_input_second"] * passes,
        "encoder_macs_per_input_second": base["macs_per_input_second"],
        "encoder_passes": passes,
        "head_macs_per_frame": model.head_macs_per_frame(),
        "objectives": model.active(),
    }


def _start_from(model: MultiObjectiveModel, trainer: Trainer, previous: Path, phase: Phase) -> None:
    """A fresh phase: the previous phase's weights; with ``carry`` its optimizer moments too (this
    phase's learning rates and schedule stay)."""
    state = ckpt.load(previous)
    model.load_state_dict(state["model"])
    if phase.optimizer == "carry":
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
        trainer.optimizer.load_state_dict(state["optimizer"])
        for g, keep in zip(trainer.optimizer.param_groups, fresh):
            g.update(keep)


def phase_dir(root: Path, index: int, phase: Phase) -> Path:
    return root / f"phase-{index}-{phase.label}"


def run_schedule(
    recipe: MultiRecipe, phases: List[Phase], root: Path, raw: Optional[Dict[str, Any]], dist
) -> Dict[str, Any]:
    train = phase_config(recipe.train, phases[0], root)
    cuts = training_cuts(train, dist.is_main)
    num_clusters = train.hubert.num_clusters or count_clusters(cuts)
    if not num_clusters:
        raise SpeechBudgetError("the training cuts carry no k-means labels: run `speechbudget kmeans` first")
    seconds = total_seconds(cuts)
    probe = build_multi_model(train, recipe.vgs, num_clusters)
    base = encoder_cost_cached(probe.encoder, root, 0)
    if dist.is_main:
        atomic.write_json(
            root / SPEC,
            {
                "stage": STAGE,
                "train": to_dict(recipe.train),
                "vgs": to_dict(recipe.vgs),
                "num_clusters": num_clusters,
                "phases": [
                    {**to_dict(p), "dir": phase_dir(root, i, p).name} for i, p in enumerate(phases, 1)
                ],
            },
        )
    results, previous = [], None
    for i, phase in enumerate(phases, 1):
        pdir = phase_dir(root, i, phase)
        cfg = phase_config(recipe.train, phase, pdir)
        model = build_multi_model(cfg, recipe.vgs, num_clusters)
        model.set_weights(phase.objectives)
        dataset = make_dataset(model, recipe.vgs)
        sampler, loader = make_data(cfg, cuts, dataset, dist)
        trainer = Trainer(
            cfg,
            model,
            loader=loader,
            sampler=sampler,
            dist=dist,
            cost=phase_cost(base, model),
            epoch_seconds=seconds,
            stage=STAGE,
            recipe=raw,
            find_unused_parameters=True,
            valid_loader=dev_loader(cfg, dataset),
            card_extra={
                "phase": i,
                "objectives": phase.objectives,
                "init_from": str(previous) if previous else None,
            },
            extra_flops=model.batch_extra_flops,
        )
        if previous is not None and ckpt.latest_checkpoint(pdir / "checkpoints") is None:
            _start_from(model, trainer, previous, phase)
        summary = trainer.fit()
        results.append(
            {
                "phase": i,
                "objectives": phase.objectives,
                "optimizer": phase.optimizer,
                "exp_dir": str(pdir),
                "steps": summary["steps"],
                "flops": summary["flops"],
                "final": summary.get("final", {}),
                "valid": summary.get("valid", {}),
                "already_done": summary.get("already_done", False),
            }
        )
        previous = ckpt.latest_checkpoint(pdir / "checkpoints")
    out = {
        "stage": STAGE,
        "exp_dir": str(root),
        "phases": results,
        "flops": sum(r["flops"] for r in results),
        "checkpoint": str(previous),
        "final": results[-1]["final"],
        # the forgetting measure: the SSL objective's held-out loss after each phase
        "ssl_heldout_loss": [r["valid"].get("valid_hubert_loss") for r in results],
    }
    if dist.is_main:
        atomic.write_json(root / "summary.json", out)
    return out


def train_multi(
    recipe: MultiRecipe, raw: Optional[Dict[str, Any]] = None, only: Optional[List[str]] = None
) -> Dict[str, Any]:
    """Every schedule of the recipe (or those named in ``only``), in order, each in its own folder."""
    names = list(recipe.schedules)
    if only:
        missing = [n for n in only if n not in recipe.schedules]
        if missing:
            raise SpeechBudgetError(
                f"no schedule {missing[0]!r} in the recipe; it has: {', '.join(n or '(one)' for n in names)}"
            )
        names = only
    dist = distributed.setup(recipe.train.device)
    try:
        runs = {}
        for name in names:
            root = Path(recipe.train.exp_dir) / name if name else Path(recipe.train.exp_dir)
            lock = locks.lock_experiment(root) if dist.is_main else None
            try:
                runs[name or "run"] = run_schedule(recipe, recipe.schedules[name], root, raw, dist)
            finally:
                if lock is not None:
                    lock.release()
        return {"stage": STAGE, "exp_dir": recipe.train.exp_dir, "schedules": runs}
    finally:
        distributed.teardown(dist)
