"""``speechbudget run``: every stage of a recipe in order, each skipped once done.

Stages write into the run's experiment folder and read only what earlier stages wrote there:

    prepare -> plan -> kmeans -> pretrain -> [kmeans2 -> pretrain2] -> [teacher -> distill] -> [folds]
    -> finetune -> [scratch] -> decode -> report

``prepare`` is the pretraining corpus; an optional ``labeled`` corpus (prepared in the same stage)
is what fine-tuning and decoding read, when the transcribed audio comes from elsewhere. An optional
``pool:`` lists more unlabeled corpora (prepared in the same stage) that k-means and pretraining read
together with ``prepare``'s, from the union in ``EXP/pool/`` (:mod:`speechbudget.data.pool`). A
``teacher:`` section (classification) trains a teacher classifier on the labelled training split,
``distill`` stores its logits on that split, and ``finetune`` learns from them (CMKD, FastAST).

A stage is done when ``EXP/.stages/<stage>.json`` exists; that marker is written (atomically)
only after the stage succeeded, so a run killed anywhere resumes at the stage it was in, and
the training stages resume from their own newest checkpoint.

``folds: speakers`` (or ``run --folds speakers``) adds the ``folds`` stage: pretraining, which reads no
labels, is shared; fine-tuning, the scratch baseline and decoding then run once per leave-one-speaker-out
fold in ``EXP/folds/<speaker>/`` (each with its own stage markers, so a finished fold is not re-run),
before the final all-speaker run that alone decodes the test speakers (:mod:`speechbudget.folds`).

On a CPU with two or more threads the scratch baseline trains in a second process beside
``kmeans -> pretrain -> finetune``, the threads split between them (``scratch_alongside``; two 1-thread
runs do more per second than one 2-thread run). It needs only the prepared data and its budget, the
FLOPs pretraining and fine-tuning spend: it trains to their planned budgets (a lower bound: runs stop
at most one step past a budget) and, once they are done, resumes to exactly what they spent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from lhotse import CutSet

from . import atomic
from .config import (
    KmeansConfig,
    TrainConfig,
    deep_merge,
    from_dict,
    load_train_config,
    load_yaml,
    parse_overrides,
    split_csv,
)
from .data.corpus_spec import CorpusSpec
from .data.manifests import cut_speaker, cuts_path, repoint
from .data.pool import PoolMember, Scored
from .errors import OptionError, SpeechBudgetError
from .folds import FOLDS_DIR, Fold
from .locks import lock_experiment
from .run_recipe import TTS_CORPUS, RunRecipe, validated_recipe

TIMES_FILE = "stage_seconds.json"  # beside the stage markers; not a stage
STAGES = (
    "prepare",
    "plan",
    "kmeans",
    "pretrain",
    "kmeans2",
    "pretrain2",
    "teacher",
    "distill",
    "folds",
    "finetune",
    "scratch",
    "decode",
    "report",
)
#: the stages that run once per fold (in the fold's folder) as well as in the final run
FOLD_STAGES = ("finetune", "scratch", "decode")
#: the stages that train a model that decode and report read (each in EXP/<stage>/)
MODEL_STAGES = ("teacher", "finetune", "scratch")
#: the recipe keys each stage's result depends on: a finished stage records them in its marker, and a
#: later `run` whose recipe changed them stops instead of reporting the old result as the new one's
STAGE_KEYS: Dict[str, Tuple[str, ...]] = {
    "prepare": ("prepare", "labeled", "pool"),
    "plan": ("plan",),
    "kmeans": ("kmeans",),
    "pretrain": ("pretrain", "seed"),
    "kmeans2": ("kmeans2",),
    "pretrain2": ("pretrain2", "seed"),
    "teacher": ("teacher", "seed"),
    "distill": ("teacher",),
    "folds": ("finetune", "tts", "decode", "folds", "seed"),
    "finetune": ("finetune", "tts", "seed"),
    "scratch": ("finetune", "tts", "seed"),
    "decode": ("decode",),
}
RECIPE_KEY = "_recipe"  # where a stage marker keeps the recipe values it ran with
#: the stages a comparison arm may take from another exp_dir (``run --reuse BASE``), with the folders
#: they write; everything after them (teacher, folds, fine-tuning, ...) is the arm's own
REUSABLE: Dict[str, Tuple[str, ...]] = {
    "prepare": ("data", "pool"),
    "plan": ("pilots",),
    "kmeans": ("kmeans",),
    "pretrain": ("pretrain",),
    "kmeans2": ("kmeans2",),
    "pretrain2": ("pretrain2",),
}
#: what a reusable folder holds that a later stage made (the base's own ``tts:`` corpus): never taken
NOT_REUSED: Dict[str, Tuple[str, ...]] = {"data": (TTS_CORPUS,)}
#: the stages whose results each stage is made from (decode and report: ``_asks_more``)
UPSTREAM: Dict[str, Tuple[str, ...]] = {
    "kmeans": ("prepare",),
    "pretrain": ("plan", "kmeans"),
    "kmeans2": ("pretrain",),
    "pretrain2": ("kmeans2",),
    "teacher": ("prepare",),
    "distill": ("teacher",),
    "folds": ("prepare", "pretrain", "pretrain2"),
    "finetune": ("prepare", "pretrain", "pretrain2", "distill"),
    "scratch": ("prepare", "pretrain", "pretrain2", "finetune"),  # its budget is their compute
}


def _decode_key(run: str, split: str) -> str:
    """The decode stage's result key: which model, on which set ("finetune/test")."""
    return f"{run}/{split}"


def _trained_threads(decoded: Dict[str, Any]) -> Optional[int]:
    """The CPU threads the decoded model was trained with (its run card): the same recipe trained on
    another number of threads sums in another order, so ``compare`` says when two arms' runs differ."""
    card = Path(decoded.get("checkpoint") or "").parent / "run_card.json"
    try:
        return int(json.loads(card.read_text())["device"]["cpu_threads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_of(key: str) -> str:
    """The model a decode result key names (the inverse of :func:`_decode_key`)."""
    return key.split("/")[0]


def standalone_config(
    recipe: Path, section: str, overrides: Sequence[str], give: str = "give train_cuts=..."
) -> TrainConfig:
    """What `speechbudget pretrain|finetune RECIPE` trains when the recipe's section names no
    train_cuts: the config `run` gives that stage (its inputs from EXP/kmeans or EXP/data, its folder
    EXP/<section>), so the stand-alone command and `run` share one run folder. ``overrides`` are the
    command's, relative to the section (``exp_dir=`` moves the run's folder)."""
    given = parse_overrides(overrides)
    given = deep_merge({k: v for k, v in given.items() if k != section}, given.get(section) or {})
    exp_dir = given.pop("exp_dir", None)
    top = {k: given.pop(k) for k in ("seed", "device") if k in given}
    data = deep_merge(load_yaml(recipe), {**top, section: given})
    if not data.get("exp_dir"):
        raise SpeechBudgetError(
            f"the recipe's {section} section sets no train_cuts and the recipe no exp_dir to find them in: "
            f"give train_cuts=... (a cuts_*.jsonl.gz from `speechbudget prepare` or `kmeans`)"
        )
    pipe = Pipeline(validated_recipe(data, recipe))
    if section == "pretrain":
        cfg = pipe.pretrain_config()
        if not Path(cfg.train_cuts).is_file():
            raise SpeechBudgetError(
                f"no k-means targets at {cfg.train_cuts}: make them with `speechbudget run {recipe} "
                f"--stop-stage kmeans`, or {give}"
            )
    else:
        init = (given.get("classify" if pipe.classifies else "ctc") or {}).get("init_checkpoint", True)
        cfg = pipe.finetune_config(True if init is True else (str(init) if init else None))
        missing = [p for p in split_csv(cfg.train_cuts) if not Path(p).is_file()]
        if missing:
            raise SpeechBudgetError(
                f"no labelled cuts at {missing[0]}: prepare them with `speechbudget run {recipe} "
                "--stop-stage prepare`, or give train_cuts=..."
            )
    if exp_dir:
        cfg.exp_dir = str(exp_dir)
    return cfg


def sweep_recipe(recipe: Path) -> Dict[str, Any]:
    """The recipe `sweep` runs its pilots from: a `run` recipe whose pretrain section names no
    train_cuts reads its pretrain stage's inputs (EXP/kmeans), as `speechbudget pretrain RECIPE` does."""
    data = load_yaml(recipe)
    section = data.get("pretrain") if isinstance(data.get("pretrain"), dict) else {}
    if section.get("train_cuts") or not data.get("exp_dir"):
        return data
    cfg = standalone_config(recipe, "pretrain", [], give="set pretrain.train_cuts in the recipe")
    inputs = {"train_cuts": cfg.train_cuts, **({"dev_cuts": cfg.dev_cuts} if cfg.dev_cuts else {})}
    return {**data, "pretrain": {**section, **inputs}}


class Pipeline:
    def __init__(
        self,
        recipe: Dict[str, Any],
        log: Callable[[str], None] = print,
        fold: Optional[Fold] = None,
    ):
        """``fold``: this pipeline runs that fold's fine-tuning and decoding (in EXP/folds/<speaker>/)
        on the shared pretraining of EXP."""
        self.raw = recipe
        self.r: RunRecipe = from_dict(RunRecipe, recipe)
        self.exp = Path(self.r.exp_dir)
        self.log = log
        self.fold = fold
        #: where fine-tuning, scratch and decoding write (and keep their stage markers)
        self.runs_dir = self.exp / FOLDS_DIR / fold.name if fold else self.exp
        self._sidecar: Optional[Any] = None  # the scratch baseline's process, while it runs alongside
        self._threads: Optional[int] = None  # this process's torch threads before it shared them
        self._sidecar_t0 = 0.0
        #: stages made in this process (a stage may run another's, as plan runs kmeans for its
        #: pilots), and of those the ones whose result is new: what a finished later stage is stale on
        self._made_now: Set[str] = set()
        self._remade: Set[str] = set()
        self._labeled_checked: Set[str] = set()  # the stages whose labelled data check_labeled passed

    # --------------------------------------------------------------------------- paths
    @property
    def corpus_dir(self) -> Path:
        """The (unlabeled) pretraining corpus."""
        return self.exp / "data" / self.r.prepare.name

    @property
    def pretrain_dir(self) -> Path:
        """What k-means and pretraining read: the pool's union when the recipe has a pool."""
        return self.exp / "pool" if self.r.pool else self.corpus_dir

    @property
    def labeled_dir(self) -> Path:
        """The corpus fine-tuning and decoding read: ``labeled`` when the recipe has one."""
        p = self.r.labeled
        return self.exp / "data" / p.name if p else self.corpus_dir

    def marker(self, stage: str) -> Path:
        return (self.runs_dir if stage in FOLD_STAGES else self.exp) / ".stages" / f"{stage}.json"

    def _read_marker(self, stage: str) -> Optional[Dict[str, Any]]:
        """The stage's marker as written: its result and the recipe values it ran with."""
        m = self.marker(stage)
        return json.loads(m.read_text()) if m.is_file() else None

    def done(self, stage: str) -> Optional[Dict[str, Any]]:
        return _result(self._read_marker(stage))

    def stage_recipe(self, stage: str) -> Dict[str, Any]:
        """The recipe values ``stage`` depends on, as JSON would store them."""
        values = {k: self.raw.get(k) for k in STAGE_KEYS.get(stage, ())}
        if "seed" in values:
            values["seed"] = self.r.seed
        return _comparable(json.loads(json.dumps(values, default=str)))

    def recipe_diffs(self, stage: str, stored: Dict[str, Any]) -> List[str]:
        """The recipe keys whose values ``stage`` ran with (``stored``: its marker's) differ from the
        recipe's now."""
        stored, now = _comparable(stored), self.stage_recipe(stage)
        return [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]

    def check_unchanged(self, stage: str, stored: Optional[Dict[str, Any]]) -> None:
        """Stop when a finished stage ran (``stored``: its marker's recipe values) with other recipe
        values than the recipe now gives."""
        if stored is None:  # a marker of an older version: nothing to compare
            return
        diffs = self.recipe_diffs(stage, stored)
        if diffs:
            stored, now = _comparable(stored), self.stage_recipe(stage)
            where = f" of fold {self.fold.name}" if self.fold else ""
            changed = "; ".join(_changed_keys(k, stored.get(k), now.get(k)) for k in diffs)
            raise SpeechBudgetError(
                f"stage {stage}{where} finished with other recipe values than now ({changed}): run it again "
                f"with --stage {stage} (a training stage continues from its checkpoint), or use another exp_dir"
            )

    def enabled(self, stage: str) -> bool:
        r = self.r
        return {
            "plan": r.plan is not None,
            "kmeans2": r.kmeans2 is not None,
            "folds": r.folds is not None,
            "pretrain2": r.kmeans2 is not None,
            "scratch": r.scratch_baseline,
            "teacher": r.teacher is not None,
            "distill": r.teacher is not None,
            # a classifier trained from scratch (no `pretrain:` section) needs no targets, no pretraining
            "kmeans": not self.classify_from_scratch,
            "pretrain": not self.classify_from_scratch,
        }.get(stage, True)

    @property
    def classifies(self) -> bool:
        """``finetune.task: classify``: fine-tuning trains a clip classifier, decode evaluates it."""
        return (self.raw.get("finetune") or {}).get("task") == "classify"

    @property
    def classify_from_scratch(self) -> bool:
        return self.classifies and "pretrain" not in self.raw

    # -------------------------------------------------------------------------- stages
    def stage_prepare(self) -> Dict[str, Any]:
        out = self._prepare(self.r.prepare)
        if self.r.labeled is not None:
            if self.labeled_dir == self.corpus_dir:
                raise SpeechBudgetError(
                    "prepare and labeled name the same corpus folder; give labeled a name"
                )
            out = {**out, "labeled": self._prepare(self.r.labeled, "labeled")}
        if self.r.pool:
            out = {**out, "pool": self._write_pool()}
        return out

    def _write_pool(self) -> Dict[str, Any]:
        """Prepare each pool corpus, then write the union with ``prepare``'s train (and dev) cuts."""
        from .data.pool import write_pool

        base = self.r.prepare
        members = [PoolMember(base.name, self.corpus_dir, base.source)]
        for i, e in enumerate(self.r.pool):
            self._prepare(e.corpus, f"pool[{i}]")
            members.append(
                PoolMember(e.name, self.exp / "data" / e.name, e.corpus.source, tuple(e.splits), e.max_hours)
            )
        d = self.r.decode
        scored = [Path(c) for c in d.cuts] or [cuts_path(self.labeled_dir, s) for s in d.sets]
        cuts = tuple(c for p in scored if p.is_file() for c in _cuts(p))
        source = None if d.cuts else (self.r.labeled or self.r.prepare).source
        summary = write_pool(members, self.pretrain_dir, Scored(cuts, source), self.r.seed)
        for name, c in summary["corpora"].items():
            self.log(f"[prepare] pool: {name} {c['hours']:.3f} h ({c['cuts']} cuts, {'+'.join(c['splits'])})")
        return summary

    def _prepare(self, spec: CorpusSpec, key: str = "prepare", out: Optional[Path] = None) -> Dict[str, Any]:
        from .data.prepare import prepare

        opts = spec.options
        if (
            spec.source in ("synthetic", "tts")
            and opts.noise_dir is not None
            and not Path(opts.noise_dir).is_dir()
        ):
            self.log(f"note: noise folder {opts.noise_dir} not found; synthesizing clean speech")
            spec = dataclasses.replace(spec, options=dataclasses.replace(opts, noise_dir=None))
        out = out or self.exp / "data"
        s = prepare(spec, out)
        if s.usable == 0:
            raise SpeechBudgetError(
                f"{key} left nothing usable; see {out / spec.name}/rejected_<split>.jsonl"
            )
        return s.to_dict()

    def stage_plan(self) -> Dict[str, Any]:
        """The planner's recommendation for this corpus; with use_recommendation it drives pretraining.
        With ``pilot_fraction``: pilots -> fit -> plan of the budget the pilots left."""
        from .plan.planner import BudgetSpec, candidate_costs, plan
        from .plan.scaling import ScalingLaw

        p = self.r.plan
        unique_hours = sum(c.duration for c in _cuts(self.pretrain_dir / "cuts_train.jsonl.gz")) / 3600
        law = ScalingLaw.from_json(Path(p.law)) if p.law else None
        spec = BudgetSpec(p.budget, unit=p.unit, device=p.device)
        try:
            if p.pilot_fraction is not None:
                return self._plan_with_pilots(spec, unique_hours, law)
            cands = candidate_costs(family=p.family, grid=p.grid, presets=p.presets or None, tome=p.tome)
            return plan(spec, unique_hours, cands, law=law, law_source=p.law).to_json()
        except OptionError as e:  # the planner names its command-line flag; here it is a recipe key
            raise SpeechBudgetError(e.as_key("plan")) from None

    def _plan_with_pilots(self, spec, unique_hours: float, law) -> Dict[str, Any]:
        """Pilots on this run's k-means labels (made now if not yet), so candidates must share the
        labels' frame rate; the pilots' spend comes out of the budget the plan gets."""
        from .plan.costs import count_cost
        from .plan.pilots import PILOTS_DIR, check_fraction, plan_with_pilots
        from .plan.planner import candidate_costs

        p = self.r.plan
        check_fraction(p.pilot_fraction)  # before the k-means stage runs
        self._run_stages(("kmeans",), redo=None)
        cands = candidate_costs(family=p.family, grid=p.grid, presets=p.presets or None, tome=p.tome)
        rate = count_cost((self.raw.get("pretrain") or {}).get("encoder", "zipformer-tiny")).frame_rate_hz
        cands = [c for c in cands if abs(c.frame_rate_hz - rate) < 1e-9]
        return plan_with_pilots(
            spec,
            unique_hours,
            cands,
            {**self.raw, "pretrain": self._pretrain_inputs(self.raw.get("pretrain") or {}, "kmeans")},
            self.exp / PILOTS_DIR,
            p.pilot_fraction,
            prior_law=law,
            prior_source=p.law,
            sizes=p.pilot_sizes,
            budgets=p.pilot_budgets,
            min_steps=p.min_steps,
            bootstrap=p.bootstrap,
            log=lambda line: self.log(f"[plan] {line}"),
        )

    def stage_kmeans(self, which: str = "kmeans") -> Dict[str, Any]:
        from .train.targets import make_targets

        k: KmeansConfig = getattr(self.r, which)
        ckpt_path = (
            Path(k.checkpoint) if k.checkpoint else (self.exp / "pretrain" if which == "kmeans2" else None)
        )
        return make_targets(
            [self.pretrain_dir],
            self.exp / which,
            features=k.features,
            num_clusters=k.num_clusters,
            max_frames=k.max_frames,
            # a preset name or a config dict: the labels follow that encoder's own frame rate
            encoder=self._pretrain_section().get("encoder", "zipformer-tiny"),
            checkpoint=ckpt_path,
            layer=k.layer,
            seed=k.seed,
            cmn=k.cmn,
        )

    def _pretrain_section(self) -> Dict[str, Any]:
        sec = dict(self.raw.get("pretrain") or {})
        plan = self.done("plan")
        if plan and self.r.plan and self.r.plan.use_recommendation:
            rec = plan["recommended"]
            sec["encoder"] = rec.get("preset") or rec.get("config")
            sec["budget"] = {**(sec.get("budget") or {}), "flops": rec["budget_flops"]}
        return sec

    def stage_pretrain(self, which: str = "pretrain") -> Dict[str, Any]:
        from .train.pretrain import pretrain

        return pretrain(self.pretrain_config(which), self.raw)

    def pretrain_config(self, which: str = "pretrain") -> TrainConfig:
        """The pretraining stage's config: this run's k-means labels in, EXP/<which> out."""
        labels = "kmeans2" if which == "pretrain2" else "kmeans"
        sec = {**self._pretrain_inputs(self._pretrain_section(), labels), "exp_dir": str(self.exp / which)}
        return load_train_config({**self._top(), "pretrain": sec}, "pretrain")

    def _pretrain_inputs(self, sec: Dict[str, Any], labels: str) -> Dict[str, Any]:
        """``sec`` reading this run's labels: each stage reads what the previous one wrote."""
        sec = {**sec, "train_cuts": str(self.exp / labels / "cuts_train.jsonl.gz")}
        if (self.exp / labels / "cuts_dev.jsonl.gz").is_file():  # held-out masked-prediction loss
            sec.setdefault("dev_cuts", str(self.exp / labels / "cuts_dev.jsonl.gz"))
        return sec

    def _top(self) -> Dict[str, Any]:
        return {k: self.raw[k] for k in ("seed", "device") if k in self.raw}

    def _latest_pretrain(self) -> Path:
        from .train.checkpoint import final_model

        for which in ("pretrain2", "pretrain"):
            ck = final_model(self.exp / which) if self.enabled(which) else None
            if ck is not None:
                return ck  # its averaged.pt when the recipe averages
        raise SpeechBudgetError("no pretraining checkpoint; run the pretrain stage first")

    def _finetune_section(self, exp_name: str, init: Optional[str]) -> Dict[str, Any]:
        labeled = self.labeled_dir
        sec = {
            **(self.raw.get("finetune") or {}),
            "train_cuts": self._finetune_train_cuts(),
            "exp_dir": str(self.runs_dir / exp_name),
        }
        if self.fold:  # the fold's own split, whatever the recipe names
            sec["dev_cuts"] = str(cuts_path(self.runs_dir, "dev"))
        if "dev_cuts" not in sec and (labeled / "cuts_dev.jsonl.gz").is_file():
            sec["dev_cuts"] = str(labeled / "cuts_dev.jsonl.gz")
        if sec.get("extra_train_cuts"):
            sec["extra_train_cuts"] = self._extra_train_cuts(sec["extra_train_cuts"])
        if self.r.tts is not None:
            tts = str(cuts_path(self.tts_dir, "train"))
            sec["extra_train_cuts"] = ",".join(split_csv(sec.get("extra_train_cuts")) + [tts])
        if self.classifies:
            sec["classify"] = {**sec.get("classify", {}), "init_checkpoint": init}
        else:
            sec["ctc"] = {**sec.get("ctc", {}), "init_checkpoint": init}
        if self.enabled("teacher"):  # learn from this run's teacher unless the recipe names a table
            sec["distill"] = {"targets": str(self.teacher_targets), **(sec.get("distill") or {})}
        if init is None:
            sec["encoder"] = self._pretrain_section().get("encoder", sec.get("encoder", "zipformer-tiny"))
        return sec

    def _finetune_train_cuts(self) -> str:
        """What fine-tuning trains on: a fold's own split, else ``finetune.train_cuts`` or the
        labelled corpus's train split."""
        if self.fold:
            return str(cuts_path(self.runs_dir, "train"))
        return str((self.raw.get("finetune") or {}).get("train_cuts") or cuts_path(self.labeled_dir, "train"))

    @property
    def tts_dir(self) -> Path:
        """``tts:``'s corpus: this run's (or fold's) fine-tuning transcripts, spoken."""
        assert self.r.tts is not None
        return self.runs_dir / "data" / self.r.tts.spec.name

    def _prepare_tts(self) -> None:
        """Speak the fine-tuning split's transcripts (done files are kept: a re-run only checks)."""
        assert self.r.tts is not None
        train = Path(self._finetune_train_cuts())
        s = self._prepare(self.r.tts.speaking(train), "tts", out=self.tts_dir.parent)
        hours = sum(split["hours"] for split in s["splits"])
        self.log(f"[tts] the transcripts of {train} spoken: {hours:.3f} h in {self.tts_dir}")

    def _extra_train_cuts(self, spec: Any) -> str:
        """``prepare`` -> the prepared unlabeled corpus's train manifest; refused when a manifest holds
        a cut that is scored here (a test cut, or a fold's dev cut): it would be trained on."""
        paths = [
            str(cuts_path(self.corpus_dir, "train")) if p == "prepare" else p
            for p in (split_csv(spec) if isinstance(spec, str) else [str(x) for x in spec])
        ]
        scored = set(_cuts(cuts_path(self.runs_dir, "dev")).ids) if self.fold else set()
        test = cuts_path(self.labeled_dir, "test")
        scored |= set(_cuts(test).ids) if test.is_file() else set()
        for p in paths:
            if Path(p).is_file() and not scored.isdisjoint(_cuts(Path(p)).ids):
                raise SpeechBudgetError(
                    f"finetune.extra_train_cuts: {p} holds cuts that are scored (test or a fold's dev "
                    "speaker); name a manifest without them"
                )
        return ",".join(paths)

    @property
    def teacher_targets(self) -> Path:
        return self.exp / "teacher" / "logits-train"

    def stage_teacher(self) -> Dict[str, Any]:
        """The CMKD teacher: a classifier trained from scratch on the labelled training split."""
        from .train.finetune import finetune

        labeled = self.labeled_dir
        sec = {
            "train_cuts": str(labeled / "cuts_train.jsonl.gz"),
            "task": "classify",
            **self.r.teacher.values,
        }
        sec["exp_dir"] = str(self.exp / "teacher")
        if "dev_cuts" not in sec and (labeled / "cuts_dev.jsonl.gz").is_file():
            sec["dev_cuts"] = str(labeled / "cuts_dev.jsonl.gz")
        if sec["task"] != "classify":
            raise SpeechBudgetError("teacher.task must be classify: a CMKD teacher is a classifier")
        return finetune(load_train_config({**self._top(), "finetune": sec}, "finetune"), self.raw)

    def stage_distill(self) -> Dict[str, Any]:
        """The teacher's logits on the training split, once, for every student run to read."""
        from .evaluate import distill_targets

        cuts = self.labeled_dir / "cuts_train.jsonl.gz"
        return distill_targets(self.exp / "teacher", cuts, out=self.teacher_targets)

    def stage_finetune(self) -> Dict[str, Any]:
        from .train.finetune import finetune

        return finetune(self.finetune_config(), self.raw)

    def finetune_config(self, init: Union[str, None, bool] = True) -> TrainConfig:
        """The fine-tuning stage's config; ``init``: True = from this run's pretraining (none for a
        classifier without a `pretrain:` section), else that checkpoint (None: from scratch)."""
        if init is True:
            init = None if self.classify_from_scratch else str(self._latest_pretrain())
        sec = self._finetune_section("finetune", init)
        return load_train_config({**self._top(), "finetune": sec}, "finetune")

    def stage_scratch(self, budget: Optional[float] = None) -> Dict[str, Any]:
        """From scratch with the compute the pretrained model had in total (pretraining + fine-tuning);
        ``budget``: a lower bound of it, for a run beside them (topped up when they are done)."""
        from .train.finetune import finetune

        spent = sum((self.done(s) or {}).get("flops", 0.0) for s in ("pretrain", "pretrain2", "finetune"))
        sec = self._finetune_section("scratch", None)
        sec["budget"] = {"flops": budget if budget is not None else spent}
        sec["ctc"]["freeze_encoder_steps"] = 0
        return finetune(load_train_config({**self._top(), "finetune": sec}, "finetune"), self.raw)

    def stage_decode(self) -> Dict[str, Any]:
        from .decode import decode

        d = self.r.decode
        results = {}
        for run in MODEL_STAGES:
            if not self.enabled(run):
                continue
            manifests = [Path(c) for c in d.cuts] or [self.labeled_dir / f"cuts_{s}.jsonl.gz" for s in d.sets]
            if self.fold:  # a fold is scored on its dev speaker only, never on the test speakers
                manifests = [cuts_path(self.runs_dir, "dev")]
            for cuts in manifests:
                if not cuts.is_file():
                    raise SpeechBudgetError(
                        f"decode manifest {cuts} does not exist; choose prepared splits in decode.sets"
                    )
                if self.classifies:  # accuracy, macro-F1/mAP, confusion matrix instead of WER
                    from .evaluate import evaluate

                    res = evaluate(self.runs_dir / run, cuts)
                    results[_decode_key(run, res["set"])] = {k: v for k, v in res.items() if k != "per_class"}
                    continue
                res = decode(self.runs_dir / run, cuts, method=d.method, beam_size=d.beam_size)
                results[_decode_key(run, res["set"])] = res
        return results

    def stage_folds(self) -> Dict[str, Any]:
        """Every leave-one-speaker-out fold's fine-tuning and decoding; the summary of the runs
        finished so far after each one (with ``pending``: how many are not), so a run stopped part
        way leaves every finished fold in ``folds.json``, not only the last complete run's."""
        from .folds import speaker_folds, summary_lines, write_fold

        cuts, test = self._fold_cuts()
        subs = []
        for fold in speaker_folds(cuts, self.r.fold_seeds):
            sub = Pipeline({**self.raw, "seed": self.r.seed + fold.repeat}, self.log, fold=fold)
            write_fold(cuts, fold, sub.runs_dir)
            subs.append(sub)
        in_processes = self._folds_in_processes(subs, test) if self.r.fold_jobs > 1 else {}
        for sub in subs:
            fold, seed = sub.fold, sub.r.seed
            here = in_processes.get(fold.name) != 0
            if here:
                self.log(
                    f"[folds] fold {fold.name}: dev {fold.dev_speaker}, train {', '.join(fold.train_speakers)}"
                    + (f", seed {seed}" if self.r.fold_seeds > 1 else "")
                )
            else:  # finished in its process: its stages checked, quietly
                sub.log = lambda _: None
            sub._run_stages(FOLD_STAGES, redo=None)
            if here:
                self._write_fold_summary(subs, test)
        summary = self._write_fold_summary(subs, test)
        for line in summary_lines(summary):
            self.log(f"[folds] {line}")
        return summary

    def _fold_row(self, sub: Pipeline, decoded: Dict[str, Any]) -> Dict[str, Any]:
        """One fold run's line of ``folds.json``: its speakers, seed and each model's dev WER."""
        row: Dict[str, Any] = {
            "dev_speaker": sub.fold.dev_speaker,
            "train_speakers": list(sub.fold.train_speakers),
        }
        if self.r.fold_seeds > 1:
            row["seed"] = sub.r.seed
        row["wer"] = {_run_of(key): res.get("wer") for key, res in decoded.items()}
        row["threads"] = {_run_of(key): _trained_threads(res) for key, res in decoded.items()}
        return row

    def _write_fold_summary(self, subs: List[Pipeline], test: List[str]) -> Dict[str, Any]:
        """``folds.json`` from every fold run whose stages have all finished, in fold order (read back
        from their stage markers); returns it."""
        from .folds import summarize, write_summary

        finished = [s for s in subs if all(s.done(x) is not None for x in FOLD_STAGES if s.enabled(x))]
        summary = summarize([self._fold_row(s, s.done("decode")) for s in finished], test)
        if len(finished) < len(subs):
            summary["pending"] = len(subs) - len(finished)
        write_summary(self.exp, summary)
        return summary

    def _folds_in_processes(self, subs: List[Pipeline], test: List[str]) -> Dict[str, int]:
        """The folds not yet finished, ``fold_jobs`` at a time, each in a process with its share of
        this run's threads; their exit codes by fold name, ``folds.json`` rewritten as each ends. A
        fold that stopped there (and any fold not run) is then run, or resumed from its checkpoint,
        in this process, where its error shows."""
        import torch

        from . import sidecar

        todo = [s for s in subs if any(s.enabled(x) and s.done(x) is None for x in FOLD_STAGES)]
        if not todo:
            return {}
        parallel = min(self.r.fold_jobs, len(todo))
        threads = max(1, torch.get_num_threads() // parallel)
        jobs = [
            sidecar.Job(
                f"[folds] fold {s.fold.name} (dev {s.fold.dev_speaker}, seed {s.r.seed})",
                _fold_in_sidecar,
                (s.raw, s.fold),
                s.runs_dir / "fold.log",
            )
            for s in todo
        ]
        codes = sidecar.run_all(
            jobs, parallel, threads, self.log, on_end=lambda *_: self._write_fold_summary(subs, test)
        )
        return {s.fold.name: codes[j.name] for s, j in zip(todo, jobs)}

    def _fold_cuts(self) -> Tuple[CutSet, List[str]]:
        """The cuts the folds split by speaker, and the test speakers they leave out: every labelled
        speaker but the test speakers (also when a corpus has them in train or dev)."""
        test = sorted({cut_speaker(c) for c in self._labeled_splits("test")})
        cuts = self._labeled_splits("train", "dev").filter(lambda c: cut_speaker(c) not in test).to_eager()
        return cuts, test

    def check_labeled(self, stages: Sequence[str]) -> None:
        """What fine-tuning and decoding will read, checked as soon as the data is prepared: a missing
        test split or too few speakers must stop the run now, not after hours of pretraining. Only for
        ``stages``, those this call runs: a run stopped before a stage may lack what it needs."""
        runs = {x for x in stages if self.enabled(x)}
        if self.fold is not None or runs <= self._labeled_checked or not self.done("prepare"):
            return
        self._check_labeled_for(runs)
        self._labeled_checked |= runs

    def _check_labeled_for(self, runs: Set[str]) -> None:
        corpus = self.labeled_dir
        have = sorted(s for s in ("train", "dev", "test") if cuts_path(corpus, s).is_file())
        section = "labeled" if self.r.labeled is not None else "prepare"
        from .data.sources import get_source, option_names

        options = option_names(get_source((self.r.labeled or self.r.prepare).source))  # the source registry's
        named = [f"{section}.{k}" for k in ("test_speakers", "test_fraction") if k in options]
        hold_out = f"hold speakers out with {' or '.join(named)}" if named else f"prepare it in {section}"
        decoded = [] if self.r.decode.cuts else list(self.r.decode.sets)
        for split in decoded if "decode" in runs else []:
            if split not in have:
                raise SpeechBudgetError(
                    f"decode.sets names {split}, but the labelled corpus {corpus} has no {split} split (it has "
                    f"{', '.join(have) or 'none'}): {hold_out}, or set decode.sets / decode.cuts"
                )
        if not {"finetune", "scratch", "folds"} & runs:
            return
        train = Path(self._finetune_train_cuts())
        if not train.is_file():
            raise SpeechBudgetError(
                f"fine-tuning reads {train}, which the prepared data lacks (the labelled corpus has "
                f"{', '.join(have) or 'no splits'}): give it a train split, or set finetune.train_cuts"
            )
        if "folds" in runs:  # two speakers at least, each cut with one: now, not after the pretraining
            from .folds import speaker_folds

            speaker_folds(self._fold_cuts()[0])
        wanted = (self.raw.get("finetune") or {}).get("train_speakers")
        if wanted is not None and not self.r.folds:
            speakers = {cut_speaker(c) for c in _cuts(train)}
            if wanted > len(speakers):
                raise SpeechBudgetError(
                    f"finetune.train_speakers is {wanted}, but {train} has {len(speakers)} speaker"
                    f"{'s' if len(speakers) != 1 else ''}: lower it, or set it to null to train on every speaker"
                )

    def _labeled_splits(self, *splits: str) -> CutSet:
        """The labelled corpus's cuts of those of ``splits`` that were prepared."""
        paths = [cuts_path(self.labeled_dir, s) for s in splits]
        return CutSet.from_cuts(c for p in paths if p.is_file() for c in _cuts(p)).to_eager()

    def stage_report(self) -> Dict[str, Any]:
        from .report import build_report

        runs = [self.exp / r for r in MODEL_STAGES if self.enabled(r)]
        return build_report(runs, self.exp / "report")

    # ---------------------------------------------------------------- scratch alongside
    def _scratch_alongside_budget(self, stages: Tuple[str, ...]) -> Optional[float]:
        """The scratch baseline's FLOPs, known before pretraining ends, when it may run alongside:
        the planned FLOP budgets of pretraining (or what it spent, once done) and fine-tuning. Runs stop
        at most one step past a budget, so this is at most what they spend; the top-up after them
        (``stage_scratch`` resuming the checkpoint) makes it exact. None: the scratch waits its turn."""
        r = self.r
        if r.scratch_alongside is False or not self.enabled("scratch") or "scratch" not in stages:
            return None
        if self.fold or r.folds or r.teacher is not None or r.kmeans2 is not None or self.classifies:
            return None
        if self.done("scratch") or self.done("finetune"):
            return None
        if r.scratch_alongside is None:  # auto: only where two processes have cores to share
            import torch

            if (
                torch.get_num_threads() < 2
                or r.device.startswith("cuda")
                or (r.device == "auto" and torch.cuda.is_available())
            ):
                return None
        pretrained = self.done("pretrain")
        budgets = [
            pretrained["flops"] if pretrained else _flops_budget(self._pretrain_section()),
            _flops_budget(self.raw.get("finetune") or {}),
        ]
        return None if None in budgets else float(sum(budgets))

    def _start_scratch_alongside(self, stages: Tuple[str, ...]) -> None:
        import torch

        from . import sidecar

        budget = self._scratch_alongside_budget(stages)
        if budget is None:
            return
        self._threads = torch.get_num_threads()
        theirs = self._threads // 2
        torch.set_num_threads(self._threads - theirs)
        log = self.exp / "scratch" / "alongside.log"
        self._sidecar = sidecar.start(_scratch_in_sidecar, (self.raw, budget), theirs, log)
        self._sidecar_t0 = time.perf_counter()
        self.log(
            f"[scratch] training alongside ({theirs} of {self._threads} threads, this run keeps "
            f"{self._threads - theirs}) on {budget:.4g} FLOPs, topped up to the exact total later; log: {log}"
        )

    def _wait_for_sidecar(self) -> None:
        proc, self._sidecar = self._sidecar, None
        self.log("[scratch] waiting for the run alongside to finish")
        proc.join()
        self._restore_threads()
        minutes = (time.perf_counter() - self._sidecar_t0) / 60
        self.log(f"[scratch] the run alongside trained for {minutes:.1f} min (overlapping the stages before)")
        if proc.exitcode != 0:
            self.log(
                f"[scratch] the run alongside stopped (exit {proc.exitcode}; see "
                f"{self.exp / 'scratch' / 'alongside.log'}); continuing it here"
            )

    def _stop_sidecar(self) -> None:
        proc, self._sidecar = self._sidecar, None
        if proc is not None and proc.is_alive():
            proc.terminate()  # it resumes from its checkpoint in the next `run`
            proc.join()
        self._restore_threads()

    def _restore_threads(self) -> None:
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    # ----------------------------------------------------------------------------- run
    def run(self, start: Optional[str] = None, stop: Optional[str] = None) -> Dict[str, Any]:
        for s in (start, stop):
            if s is not None and s not in STAGES:
                raise SpeechBudgetError(f"unknown stage {s!r}; stages: {', '.join(STAGES)}")
            if s is not None and not self.enabled(s):
                on = ", ".join(x for x in STAGES if self.enabled(x))
                raise SpeechBudgetError(f"this recipe has no {s} stage; its stages: {on}")
        i0 = STAGES.index(start) if start else 0
        i1 = STAGES.index(stop) if stop else len(STAGES) - 1
        if i0 > i1:
            raise SpeechBudgetError(f"--stage {start} comes after --stop-stage {stop}: nothing would run")
        if start is not None:  # before the lock, which would make the folder of a run that cannot start
            self._check_upstream(STAGES[i0 : i1 + 1], start)
        with lock_experiment(self.exp):  # a second `run` into this exp_dir stops here, saying who holds it
            try:
                return self._run_stages(STAGES[i0 : i1 + 1], redo=start)
            finally:
                self._stop_sidecar()

    def reuse(self, base: Path) -> List[str]:
        """Start this exp_dir from ``base``'s finished stages, in order, while each ran with the recipe
        values this recipe gives it (the first that differs, or has not finished, and all after it are
        this run's own): their folders hard-linked (the files shared, never rewritten in place; what
        this run writes there is its own) and their markers copied. The manifests taken are rewritten
        to name this exp_dir's links, so ``base`` may be deleted afterwards. The stages taken, in order."""
        base = Path(base).resolve()
        if base == self.exp.resolve():
            raise SpeechBudgetError(f"--reuse {base} is this run's own exp_dir: name another one")
        them = Pipeline({**self.raw, "exp_dir": str(base)}, self.log)
        if not them.marker("prepare").is_file():
            raise SpeechBudgetError(
                f"--reuse {base}: no finished prepare stage there (no {them.marker('prepare')})"
            )
        taken: Dict[str, Dict[str, Any]] = {}  # stage -> base's marker
        for stage in REUSABLE:
            if not self.enabled(stage):
                continue
            marker = them._read_marker(stage)
            if marker is None or RECIPE_KEY not in marker or self.recipe_diffs(stage, marker[RECIPE_KEY]):
                break
            taken[stage] = marker
        already = [s for s, m in taken.items() if self._read_marker(s) == m]  # a re-run of the arm
        for stage in taken:
            if stage not in already and (
                self.marker(stage).is_file() or any((self.exp / d).exists() for d in REUSABLE[stage])
            ):
                raise SpeechBudgetError(
                    f"--reuse {base}: {self.exp} has a {stage} stage of its own; give the arm a new exp_dir"
                )
        roots = _prepared_in(base)
        with lock_experiment(self.exp):
            for stage in (s for s in taken if s not in already):
                for folder in REUSABLE[stage]:
                    if (base / folder).is_dir():
                        shutil.copytree(
                            base / folder,
                            self.exp / folder,
                            copy_function=_link,
                            symlinks=True,
                            ignore=_leave_out(base / folder, NOT_REUSED.get(folder, ())),
                        )
                        repoint(self.exp / folder, roots, self.exp.resolve())
                atomic.write_json(self.marker(stage), taken[stage])
        self.log(
            f"[reuse] {', '.join(taken)} from {base}"
            if taken
            else f"[reuse] nothing from {base}: its prepare stage ran with other recipe values"
        )
        return list(taken)

    def _check_upstream(self, stages: Tuple[str, ...], start: str) -> None:
        """``--stage START`` skips the stages before it: each stage that will run must find what the
        skipped ones make (a fresh exp_dir with ``--stage finetune`` has no pretraining to start from)."""
        needs = {**UPSTREAM, "decode": MODEL_STAGES, "report": ("decode",)}
        for stage in stages:
            for up in needs.get(stage, ()) if self.enabled(stage) else ():
                if self.enabled(up) and up not in stages and self.done(up) is None:
                    raise SpeechBudgetError(
                        f"--stage {start}: stage {stage} reads what stage {up} makes, which has not finished in "
                        f"{self.exp}; run with --stage {up}, or without --stage to run every stage not yet done"
                    )

    def _run_stages(self, stages: Tuple[str, ...], redo: Optional[str]) -> Dict[str, Any]:
        """``stages`` in order, each skipped once done except ``redo``."""
        results: Dict[str, Any] = {}
        ran: Set[str] = set()  # stages that ran in this call: what a finished later stage may be stale on
        where = f"fold {self.fold.name}: " if self.fold else ""
        tts_ready = self.r.tts is None or not {"finetune", "scratch"} & set(stages)  # nothing to speak for
        for stage in stages:
            if not self.enabled(stage):
                continue
            marker = self._read_marker(stage)
            prior = _result(marker)
            if marker is not None and stage != redo:
                self.check_unchanged(stage, marker.get(RECIPE_KEY))
                stale = [u for u in UPSTREAM.get(stage, ()) if u in self._remade]
                if stale and stage not in self._made_now:  # made after them in this process: fresh
                    raise SpeechBudgetError(
                        f"stage {stage}{' of fold ' + self.fold.name if self.fold else ''} finished on the "
                        f"{stale[0]} stage's earlier result, which this run has just made again: move "
                        f"{self.marker(stage)} (and the stage's folder) aside to redo it on the new one, "
                        "or use another exp_dir"
                    )
            if prior is not None and stage != redo and not self._asks_more(stage, prior, ran):
                self.log(f"[{where}{stage}] done already (delete {self.marker(stage)} to redo)")
                results[stage] = prior
                continue
            if stage != "prepare":
                self.check_labeled(stages)
            if not tts_ready and stage in ("kmeans", "pretrain", "finetune", "scratch"):
                self._prepare_tts()  # before the scratch baseline may start alongside, which reads it
                tts_ready = True
            if stage in ("kmeans", "pretrain", "finetune") and self._sidecar is None:
                self._start_scratch_alongside(stages)
            if stage == "scratch" and self._sidecar is not None:
                self._wait_for_sidecar()
            self.log(f"[{where}{stage}] running")
            fn = {
                "kmeans2": lambda: self.stage_kmeans("kmeans2"),
                "pretrain2": lambda: self.stage_pretrain("pretrain2"),
            }.get(stage) or getattr(self, f"stage_{stage}")
            t0 = time.perf_counter()
            out = fn()
            atomic.write_json(self.marker(stage), {**out, RECIPE_KEY: self.stage_recipe(stage)})
            self.record_time(stage, time.perf_counter() - t0)
            results[stage] = out
            ran.add(stage)
            self._made_now.add(stage)
            if _made_anew(out):
                self._remade.add(stage)
        return results

    def _asks_more(self, stage: str, prior: Dict[str, Any], ran: Set[str]) -> bool:
        """A finished stage that must run again: folds the recipe now wants with another ``fold_seeds``
        or with a model its folds lack (their finished runs are kept, only what is new trains); decode
        when a model it reads was trained in this call or it lacks one the recipe now has (a scratch
        baseline asked for after the run); report after either."""
        models = {m for m in MODEL_STAGES if self.enabled(m)}
        if stage == "folds":
            rows = prior.get("folds", [])
            lacking = any(m not in r.get("wer", {}) for r in rows for m in models & set(FOLD_STAGES))
            return lacking or len({r.get("seed") for r in rows}) != self.r.fold_seeds
        if stage == "decode":
            return bool(ran & models) or not models <= {_run_of(key) for key in prior}
        return stage == "report" and bool(ran & {"decode", "folds"})

    def record_time(self, stage: str, seconds: float) -> None:
        """Wall seconds of each stage, kept across resumed runs: where a run's time went."""
        path = self.marker(stage).parent / TIMES_FILE
        times = json.loads(path.read_text()) if path.is_file() else {}
        times[stage] = round(seconds, 1)
        atomic.write_json(path, times)

    def stage_times(self) -> Dict[str, float]:
        path = self.exp / ".stages" / TIMES_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


#: keys that change how fast or where a stage runs, or what it logs, never its result
HOW_KEYS = frozenset(
    ("num_jobs", "executor", "scheduler", "force", "device", "num_workers", "log_every", "profile_steps")
)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _result(marker: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A stage marker's result: all of it but the recipe values it ran with."""
    return None if marker is None else {k: v for k, v in marker.items() if k != RECIPE_KEY}


def _comparable(value: Any) -> Any:
    """The values that decide a stage's result, numbers as numbers: YAML reads ``8.0e12`` as a string
    and ``8e12`` given on the command line is the same budget."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in HOW_KEYS}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _made_anew(out: Dict[str, Any]) -> bool:
    """Whether a stage that ran made a new result: a trainer whose budget was spent already and a
    prepare that kept every split did not."""
    if out.get("already_done"):
        return False
    splits = [s for part in (out, out.get("labeled") or {}) for s in part.get("splits", [])]
    return not splits or not all(isinstance(s, dict) and s.get("skipped") for s in splits)


def _changed_keys(key: str, old: Any, new: Any, limit: int = 3) -> str:
    """``finetune.budget.flops: 1e13 -> 5e12``: the leaves that differ, at most ``limit`` of them."""
    leaves: List[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(f"{path}.{k}", a.get(k), b.get(k))
        elif a != b:
            leaves.append(f"{path}: {a!r} -> {b!r}")

    walk(key, old, new)
    return "; ".join(leaves[:limit]) + (f"; and {len(leaves) - limit} more" if len(leaves) > limit else "")


def _cuts(path: Path):
    from .data.manifests import load_cuts

    return load_cuts(path)


def _flops_budget(section: Dict[str, Any]) -> Optional[float]:
    """A training section's budget when it is FLOPs and nothing else (then its spend is known ahead)."""
    budget = {k: v for k, v in (section.get("budget") or {}).items() if v is not None}
    given = set(budget) - {"device", "dtype", "utilisation"}
    return float(budget["flops"]) if given == {"flops"} else None


def _prepared_in(base: Path) -> List[Path]:
    """The exp_dirs whose paths ``base``'s manifests name: ``base`` and, where it reused another
    exp_dir's corpora before they were re-pointed on reuse, the one that prepared them."""
    roots = {base}
    for card in base.glob("data/*/prepare.json"):
        corpus_dir = json.loads(card.read_text()).get("summary", {}).get("corpus_dir")
        if corpus_dir:
            roots.add(Path(corpus_dir).parent.parent)
    return sorted(roots)


def _leave_out(top: Path, names: Tuple[str, ...]):
    """``copytree``'s ``ignore``: ``names`` directly under ``top`` are not copied, deeper ones are."""

    def ignore(folder: str, present: List[str]) -> List[str]:
        return [n for n in names if n in present] if Path(folder) == top else []

    return ignore


def _link(src: str, dst: str) -> None:
    """A hard link (no bytes copied), or a copy where the two folders lie on different file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fold_in_sidecar(recipe: Dict[str, Any], fold: Fold) -> None:
    """One leave-one-speaker-out fold's stages in its own process (``fold_jobs``)."""
    Pipeline(recipe, fold=fold)._run_stages(FOLD_STAGES, redo=None)


def _scratch_in_sidecar(recipe: Dict[str, Any], budget: float) -> None:
    """The scratch baseline in its own process (:mod:`speechbudget.sidecar`), up to ``budget``."""
    Pipeline(recipe).stage_scratch(budget)
