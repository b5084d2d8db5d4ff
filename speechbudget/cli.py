"""The ``speechbudget`` command line: parse arguments, call the library, render with rich.

No logic lives here beyond choosing what to call and how to show it.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import __version__
from .cli_common import JSON_OPT, emit_json, err, out, print_table, quiet_if_json
from .config import TOKENIZER_TYPES
from .errors import SpeechBudgetError

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

app = typer.Typer(
    name="speechbudget",
    help="Budget-aware self-supervised speech pretraining: prepare -> plan -> pretrain -> finetune -> WER.",
    epilog="Examples:\n\n  speechbudget recipes copy quickstart my-run/\n\n  speechbudget run my-run/quickstart.yaml"
    "\n\n  speechbudget prepare synthetic --hours 0.2 --out data/ && speechbudget data describe data/synthetic",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register_subcommands() -> None:
    from . import cli_classify, cli_plan, cli_prepare, cli_vgs

    cli_prepare.register(app)  # prepare <source>, one per registered source
    cli_plan.register(app)  # plan, plan fit, sweep, calibrate
    cli_classify.register(app)  # evaluate, predict
    cli_vgs.register(app)  # train-multi, evaluate-retrieval, probe abx


data_app = typer.Typer(
    help="Inspect prepared data.",
    epilog="Example:\n\n  speechbudget data describe data/fsdd",
    no_args_is_help=True,
)
models_app = typer.Typer(
    help="Encoder presets: parameters, FLOPs, frame rates.",
    epilog="Examples:\n\n  speechbudget models list\n\n  speechbudget models show zipformer-tiny --seconds 10",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        out.print(f"speechbudget {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Budget-aware self-supervised speech pretraining (the examples are the app's epilog)."""


# ------------------------------------------------------------------------------------------ data
@data_app.command("describe", epilog="Example:\n\n  speechbudget data describe data/fsdd --json")
def data_describe(
    path: Path = typer.Argument(..., help="A prepared corpus folder or a cuts_*.jsonl.gz file."),
    as_json: bool = JSON_OPT,
) -> None:
    """Hours, utterances, speakers and duration percentiles per split."""
    from .data.describe import describe

    stats = describe(path)
    if as_json:
        emit_json(stats)
        return
    t = Table(title=str(path))
    t.caption = "utts: utterances; spkrs: speakers; fbank: with features; durations in seconds"
    for col in ("split", "utts", "hours", "spkrs", "labeled", "fbank", "mean", "p5", "p50", "p95", "max"):
        t.add_column(col, justify="right")
    for split, s in stats.items():
        d = s["duration_s"]
        t.add_row(
            split,
            str(s["utterances"]),
            f"{s['hours']:.3f}",
            str(s["speakers"]),
            str(s["labeled"]),
            str(s["with_features"]),
            *(f"{d.get(k, 0):.2f}" for k in ("mean", "p5", "p50", "p95", "p100")),
        )
    print_table(t)


# ---------------------------------------------------------------------------------------- models
@models_app.command("list", epilog="Example:\n\n  speechbudget models list --family zipformer --json")
def models_list(
    family: Optional[str] = typer.Option(
        None, help="Only this family: zipformer, transformer, bimamba, aum, ast, mobilenet."
    ),
    flops: bool = typer.Option(
        False, "--flops", help="Also count forward GFLOPs per second of audio (minutes for every preset)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Every encoder preset with its parameters (and, with --flops, its cost)."""
    from .models.catalog import describe_preset, preset_rows
    from .progress import track

    quiet_if_json(as_json)
    rows = preset_rows(family)
    if flops:  # fvcore traces each preset's forward pass on 10 s of audio: minutes for all of them
        rows = [describe_preset(r["name"]) for r in track(rows, description="counting FLOPs")]
    if as_json:
        emit_json(rows)
        return
    t = Table(title="encoder presets")
    if flops:
        t.caption = "GFLOP/s: forward GFLOPs per second of audio"
    cols = ["name", "family", "params M", "frame Hz"] + (["GFLOP/s"] if flops else [])
    for col in cols:
        t.add_column(col, justify="left" if col in ("name", "family") else "right", no_wrap=col == "name")
    for r in rows:
        cells = [r["name"], r["family"], f"{r['params'] / 1e6:.2f}", f"{r['frame_rate_hz']:g}"]
        if flops:
            cells.append(f"{r['gflops_per_audio_second']:.3f}")
        t.add_row(*cells)
    print_table(t)


@models_app.command(
    "show",
    epilog="Examples:\n\n  speechbudget models show zipformer-base\n\n  speechbudget models show bimamba-tiny --json",
)
def models_show(
    name: str = typer.Argument(..., help="Preset name (see `speechbudget models list`)."),
    seconds: float = typer.Option(10.0, help="Audio length the FLOPs are counted at."),
    as_json: bool = JSON_OPT,
) -> None:
    """Parameters, forward GFLOPs per second of audio, output frame rate and the per-module breakdown."""
    from .models.catalog import describe_preset

    d = describe_preset(name, seconds=seconds, breakdown=True)
    if as_json:
        emit_json(d)
        return
    out.print(
        f"[bold]{name}[/bold] ({d['family']}): {d['params'] / 1e6:.2f} M parameters"
        + (f" ({d['encoder_params'] / 1e6:.2f} M without the front end)" if d.get("encoder_params") else "")
        + f", output {d['frame_rate_hz']:g} Hz, {d['gflops_per_audio_second']:.3f} GFLOPs per second of audio "
        f"(FLOPs = 2 x multiply-adds; {d['gmacs_per_audio_second']:.3f} GMACs)"
    )
    t = Table(title=f"forward cost per second of audio (counted at {seconds:g} s)")
    t.add_column("module")
    t.add_column("GFLOPs", justify="right")
    t.add_column("share", justify="right")
    for mod, g in d["by_module"].items():
        t.add_row(mod, f"{g:.4f}", f"{100 * g / max(d['gflops_per_audio_second'], 1e-12):.1f}%")
    print_table(t)
    if d.get("unsupported"):
        out.print(f"[yellow]not counted (fvcore has no handle):[/yellow] {d['unsupported']}")


# ---------------------------------------------------------------------------------- training
OVERRIDES = typer.Argument(
    None, help="key=value overrides of the recipe section, e.g. budget.steps=100 optim.lr=0.01"
)


def _train_stage(run, recipe: Path, section: str, overrides: Optional[List[str]], as_json: bool) -> None:
    """A recipe's training section (with overrides) through ``run``, rendered as a table or JSON."""
    from .config import load_train_config, load_yaml

    quiet_if_json(as_json)
    cfg = load_train_config(recipe, section, overrides or [])
    if not cfg.train_cuts:  # a `run` recipe: train what its stage would, in EXP/<section>
        from .pipeline import standalone_config

        cfg = standalone_config(recipe, section, overrides or [])
    _render_train(run(cfg, load_yaml(recipe)), as_json)


def _render_train(summary: Dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(summary)
        return
    t = Table(title=f"{summary['stage']} -> {summary['exp_dir']}")
    t.add_column("")
    t.add_column("value", justify="right")
    final = summary.get("final") or {}
    rows = [
        ("steps", summary["steps"]),
        ("epochs", f"{summary['epochs']:.2f}"),
        ("training FLOPs", f"{summary['flops']:.3e}"),
        ("FLOP limit", f"{summary['flops_limit']:.3e}" if summary.get("flops_limit") else "-"),
        ("audio hours", f"{summary['audio_hours']:.4f}"),
        ("wall seconds", f"{summary['wall_seconds']:.1f}"),
        ("budget used", f"{100 * summary['budget_used']:.1f}% ({summary['binding_limit']})"),
        ("skipped non-finite steps", summary["bad_steps"]),
        ("checkpoint", summary["checkpoint"]),
    ]
    rows += [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in final.items()]
    for k, v in rows:
        t.add_row(k, str(v))
    print_table(t)
    if summary.get("already_done"):
        out.print("the budget was already spent: nothing to do (delete the exp_dir to start over)")


@app.command(
    epilog="Examples:\n\n"
    "  speechbudget kmeans data/synthetic --out exp/km1 --features mfcc --num-clusters 100\n\n"
    "  speechbudget kmeans data/synthetic --out exp/km2 --features layer --checkpoint exp/pt/checkpoints --layer 4 --num-clusters 500"
)
def kmeans(
    cuts: List[Path] = typer.Argument(
        ..., help="Corpus folder or cuts_<split>.jsonl.gz files; k-means is fit on the train split."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Where the labeled cuts and the k-means model go."),
    features: str = typer.Option(
        "mfcc", help="mfcc (39-dim with deltas, iteration 1) | fbank | layer (iteration 2)."
    ),
    num_clusters: int = typer.Option(100, help="Clusters (HuBERT: 100 on MFCC, 500 on a hidden layer)."),
    max_frames: int = typer.Option(200_000, help="Frames sampled to fit k-means."),
    encoder: str = typer.Option(
        "zipformer-tiny", help="Encoder preset whose output frame rate and lengths the labels follow."
    ),
    checkpoint: Optional[Path] = typer.Option(
        None, help="features=layer: a pretraining checkpoint (file or its folder)."
    ),
    layer: Optional[int] = typer.Option(None, help="features=layer: which encoder layer."),
    seed: int = typer.Option(0),
    cmn: bool = typer.Option(False, "--cmn", help="Subtract each utterance's mean feature first."),
    as_json: bool = JSON_OPT,
) -> None:
    """HuBERT targets: k-means labels at the encoder frame rate, written into the cuts as custom["kmeans"]."""
    from .train.targets import make_targets

    quiet_if_json(as_json)
    summary = make_targets(
        cuts,
        out_dir,
        features=features,
        num_clusters=num_clusters,
        max_frames=max_frames,
        encoder=encoder,
        checkpoint=checkpoint,
        layer=layer,
        seed=seed,
        cmn=cmn,
    )
    if as_json:
        emit_json(summary)
        return
    u = summary["usage"]
    out.print(f"k-means ({features}, k={num_clusters}) -> {out_dir}")
    t = Table()
    for col in ("split", "cuts", "labeled manifest"):
        t.add_column(col)
    for split, s in summary["splits"].items():
        t.add_row(split, str(s["cuts"]), s["path"])
    print_table(t)
    out.print(
        f"cluster usage: entropy {u['entropy_bits']:.2f} of {u['max_entropy_bits']:.2f} bits, "
        f"perplexity {u['perplexity']:.1f}, empty clusters {u['empty_clusters']}"
    )


@app.command(
    epilog="Examples:\n\n"
    "  speechbudget pretrain recipes/quickstart.yaml   # after `run ... --stop-stage kmeans`: EXP/pretrain, as run\n\n"
    "  speechbudget pretrain recipes/quickstart.yaml budget.flops=2e13 encoder=zipformer-xs exp_dir=exp/xs\n\n"
    "  speechbudget pretrain my.yaml train_cuts=exp/km/cuts_train.jsonl.gz exp_dir=exp/pt\n\n"
    "  torchrun --nproc_per_node 8 -m speechbudget.cli pretrain recipes/librispeech-100h-zipformer-base.yaml\n\n"
    "Re-running the same command resumes from the newest checkpoint."
)
def pretrain(
    recipe: Path = typer.Argument(..., help="Recipe YAML; its `pretrain:` section is used."),
    overrides: Optional[List[str]] = OVERRIDES,
    as_json: bool = JSON_OPT,
) -> None:
    """HuBERT masked-prediction pretraining on k-means targets, stopping at the budget."""
    from .train.pretrain import pretrain as run

    _train_stage(run, recipe, "pretrain", overrides, as_json)


@app.command(
    epilog="Examples:\n\n"
    "  speechbudget finetune recipes/quickstart.yaml   # from EXP/pretrain into EXP/finetune, as run\n\n"
    "  speechbudget finetune recipes/quickstart.yaml ctc.init_checkpoint=null exp_dir=exp/scratch   # from scratch\n\n"
    "  speechbudget finetune recipes/fsdd-keywords.yaml task=classify train_cuts=data/fsdd/cuts_train.jsonl.gz"
)
def finetune(
    recipe: Path = typer.Argument(..., help="Recipe YAML; its `finetune:` section is used."),
    overrides: Optional[List[str]] = OVERRIDES,
    as_json: bool = JSON_OPT,
) -> None:
    """CTC fine-tuning of a pretrained or fresh encoder within a budget; task=classify trains a classifier."""
    from .train.finetune import finetune as run

    _train_stage(run, recipe, "finetune", overrides, as_json)


@app.command(
    epilog="Examples:\n\n"
    "  speechbudget decode exp/ft data/synthetic/cuts_test.jsonl.gz\n\n"
    "  speechbudget decode exp/ft data/fsdd/cuts_test.jsonl.gz --method beam --beam-size 8 --json\n\n"
    "  speechbudget decode exp/ft data/fsdd/cuts_test.jsonl.gz --method lexicon   # known words only\n\n"
    "  speechbudget decode exp/ft my-recordings/ clip.wav --method lexicon   # transcribe audio files"
)
def decode(
    model: Path = typer.Argument(..., help="Fine-tuning exp dir (newest checkpoint) or a checkpoint file."),
    cuts: List[Path] = typer.Argument(
        ...,
        help="One or more cut manifests to decode; a corpus folder: each of its splits. Audio files or "
        "folders of them (never prepared) are transcribed; a folder's subfolders are its speakers.",
    ),
    method: str = typer.Option(
        "greedy",
        help="greedy | beam (CTC prefix beam search) | lexicon (beam search that only spells known words).",
    ),
    beam_size: int = typer.Option(8, help="Beam size for --method beam and lexicon."),
    lexicon: Optional[Path] = typer.Option(
        None,
        help="Word list (one per line) for --method lexicon. Default: the fine-tuning transcripts' words.",
    ),
    out_dir: Optional[Path] = typer.Option(
        None,
        "--out",
        help="Default: EXP/decode-<method>; EXP/decode-<method>-<checkpoint> for another checkpoint "
        "than the run's final model.",
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    as_json: bool = JSON_OPT,
) -> None:
    """Decode cut sets and write icefall-style recogs-, errs- and wer-summary- files; transcribe audio."""
    from .data.audio import is_audio_input
    from .data.manifests import split_manifests
    from .decode import decode as run
    from .decode import decode_audio

    quiet_if_json(as_json)
    audio = [c for c in cuts if is_audio_input(c)]
    results = [
        run(model, c, out_dir, method, beam_size, device=device, lexicon=lexicon)
        for c in split_manifests([c for c in cuts if c not in audio])
    ]
    if audio:
        results.append(decode_audio(model, audio, out_dir, method, beam_size, device=device, lexicon=lexicon))
    if as_json:
        emit_json(results if len(results) > 1 else results[0])
        return
    if audio:  # the user's recordings: what was said in each, no WER to show
        r = results.pop()
        t = Table(title=f"transcripts ({method})")
        t.add_column("audio")
        t.add_column("text")
        for h in r["hypotheses"]:
            t.add_row(h["id"], h["text"])
        print_table(t)
        for s in r["skipped"]:
            err.print(f"skipped: {s['error']}")
        if not results:
            out.print(f"result files: {r['out_dir']}")
            return
    t = Table(title=f"WER ({method})")
    for col in ("set", "utts", "WER %", "95% CI", "CER %", "ins", "del", "sub", "words"):
        t.add_column(col, justify="right")
    for r in results:
        if r["wer"] is None:
            t.add_row(r["set"], str(r["utterances"]), "-", "-", "-", "-", "-", "-", "-")
            out.print(f"{r['set']}: {r['note']}")
            continue
        ci = f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}" if r.get("ci95") else "-"
        t.add_row(
            r["set"],
            str(r["utterances"]),
            f"{r['wer']:.2f}",
            ci,
            f"{r['cer']:.2f}",
            str(r["insertions"]),
            str(r["deletions"]),
            str(r["substitutions"]),
            str(r["ref_words"]),
        )
    print_table(t)
    out.print(f"result files: {results[0]['out_dir']}")


tokenizer_app = typer.Typer(
    help="Sentencepiece tokenizers for CTC.",
    epilog="Examples:\n\n  speechbudget tokenizer train data/fsdd/cuts_train.jsonl.gz --out exp/tok --type char\n\n"
    "  speechbudget tokenizer train data/fsdd --out exp/tok-phones --type phone   # CTC on phones",
    no_args_is_help=True,
)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command(
    "train",
    epilog="Examples:\n\n  speechbudget tokenizer train data/fsdd/cuts_train.jsonl.gz --out exp/tok --type char\n\n"
    "  speechbudget tokenizer train data/fsdd --out exp/tok-phones --type phone   # CTC on phones",
)
def tokenizer_train(
    cuts: Path = typer.Argument(
        ..., help="A cut manifest whose transcripts train the model (a corpus folder: its train split)."
    ),
    out_dir: Path = typer.Option(..., "--out"),
    model_type: str = typer.Option(
        "bpe", "--type", help=f"{' | '.join(TOKENIZER_TYPES)} (phone: the words' phones, by espeak-ng)."
    ),
    vocab_size: int = typer.Option(64, help="Vocabulary size (clamped to what the text supports)."),
    g2p_voice: str = typer.Option("en-us", help="espeak-ng voice that pronounces the words (--type phone)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Train a sentencepiece model (blank = id 0) on normalised transcripts."""
    from .asr.tokenizer import Tokenizer, train_tokenizer
    from .data.manifests import cut_text, load_cuts, split_file

    texts = [cut_text(c) for c in load_cuts(split_file(cuts, "train", "tokenizer train"))]
    path = train_tokenizer(
        [t for t in texts if t.strip()],
        out_dir,
        model_type=model_type,
        vocab_size=vocab_size,
        g2p_voice=g2p_voice,
    )
    tok = Tokenizer(path)
    info = {"model": str(path), "type": model_type, "vocab_size": tok.vocab_size, "texts": len(texts)}
    emit_json(info) if as_json else out.print(
        f"tokenizer -> {path} (vocab {tok.vocab_size}, {len(texts)} transcripts)"
    )


@app.command(
    epilog="Examples:\n\n  speechbudget report exp/quickstart/finetune exp/quickstart/scratch --out exp/report\n\n"
    "  speechbudget report exp/ --out exp/report --json     # every run below exp/"
)
def report(
    exp_dirs: List[Path] = typer.Argument(
        ..., help="Experiment folders (fine-tuning or pretraining runs), or a parent folder."
    ),
    out_dir: Optional[Path] = typer.Option(
        None,
        "--out",
        help="Where report.md, report.json and the PNG plots go (default: report/ in the folder the runs share).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """One table over runs: encoder, parameters, compute used vs planned, labeled hours, WER with 95% CI; plots."""
    from .report import build_report, fold_table, render_table

    rep = build_report(exp_dirs, out_dir)
    if as_json:
        emit_json(rep)
        return
    print_table(render_table(rep))
    for summary in (rep.get("folds") or {}).values():
        print_table(fold_table(summary))
    out.print("files: " + ", ".join(str(f) for f in (rep.get("files") or {}).values()))


@app.command(
    epilog="Examples:\n\n  speechbudget compare exp/fsdd exp/fsdd-tempo   # an arm against the recipe, fold by fold\n\n"
    "  speechbudget compare exp/fsdd exp/fsdd --base-model scratch   # pretrained vs scratch, same folds\n\n"
    "  speechbudget compare exp/fsdd exp/fsdd-tempo --json"
)
def compare(
    base: Path = typer.Argument(..., help="The exp_dir of the recipe to compare against (run with --folds)."),
    arm: Path = typer.Argument(..., help="The exp_dir of the changed recipe (same folds and seeds)."),
    model: str = typer.Option("finetune", "--model", help="The arm's model: finetune, or scratch."),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="The base's model (default: the same as --model)."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Two recipes on the same leave-one-speaker-out folds, paired by fold and seed: each fold's change,
    the fold means, and the paired change with its standard error (the noise a change must beat)."""
    from .folds import compare as compare_folds
    from .folds import load_summary
    from .report import compare_table

    result = compare_folds(load_summary(base), load_summary(arm), model, base_model)
    if as_json:
        emit_json(result)
        return
    print_table(compare_table(result, str(base), str(arm)))


# ------------------------------------------------------------------------------------ recipes
recipes_app = typer.Typer(
    help="Recipes shipped with speechbudget: list and copy them.",
    epilog="Examples:\n\n  speechbudget recipes list\n\n  speechbudget recipes copy fsdd my-run/",
    no_args_is_help=True,
)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list", epilog="Example:\n\n  speechbudget recipes list --json")
def recipes_list(as_json: bool = JSON_OPT) -> None:
    """Every shipped recipe with its description."""
    from .recipes import list_recipes

    rows = list_recipes()
    if as_json:
        emit_json(rows)
        return
    t = Table(title="recipes")
    for col in ("name", "description", "path"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["description"], r["path"])
    print_table(t)


@recipes_app.command(
    "copy",
    epilog="Example:\n\n  speechbudget recipes copy quickstart my-run/   # then edit my-run/quickstart.yaml",
)
def recipes_copy(
    name: str = typer.Argument(...),
    dest: Path = typer.Argument(..., help="Folder (or .yaml path) to copy to."),
) -> None:
    """Copy a recipe to edit it; the original stays untouched."""
    from .recipes import copy_recipe

    out.print(f"copied to {copy_recipe(name, dest)}")


@app.command(
    epilog="Examples:\n\n"
    "  speechbudget run recipes/quickstart.yaml\n\n"
    "  speechbudget run recipes/quickstart.yaml --stage finetune --stop-stage decode\n\n"
    "  speechbudget run recipes/fsdd.yaml pretrain.budget.flops=1e12\n\n"
    "  speechbudget run recipes/fsdd.yaml --folds speakers   # leave-one-speaker-out dev WER first\n\n"
    "  speechbudget run recipes/fsdd.yaml --folds speakers --fold-seeds 3   # and each fold with 3 seeds\n\n"
    "  speechbudget run recipes/fsdd.yaml --folds speakers --fold-jobs 2   # two folds at a time\n\n"
    "  speechbudget run recipes/fsdd.yaml exp_dir=exp/arm finetune.ctc.tempo=0 --reuse exp/fsdd   # an arm on exp/fsdd's pretraining\n\n"
    "Stages: prepare, plan, kmeans, pretrain, kmeans2, pretrain2, teacher, distill, folds, finetune, "
    "scratch, decode, report (a recipe runs those its sections ask for). "
    "A finished stage is skipped; a killed run resumes where it stopped."
)
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see `speechbudget recipes list`)."),
    overrides: Optional[List[str]] = OVERRIDES,
    stage: Optional[str] = typer.Option(None, "--stage", help="Start at this stage (and redo it)."),
    stop_stage: Optional[str] = typer.Option(None, "--stop-stage", help="Stop after this stage."),
    folds: Optional[str] = typer.Option(
        None, "--folds", help="speakers: leave-one-speaker-out folds before the final run (recipe key folds)."
    ),
    fold_seeds: Optional[int] = typer.Option(
        None,
        "--fold-seeds",
        help="Fine-tune every fold with this many seeds; a fold's WER is their mean (recipe key fold_seeds).",
    ),
    fold_jobs: Optional[int] = typer.Option(
        None,
        "--fold-jobs",
        help="Fine-tune this many folds at once, each in a process with its share of the threads (recipe key "
        "fold_jobs; on a CPU, 2 one-thread runs outdo one two-thread run).",
    ),
    reuse: Optional[Path] = typer.Option(
        None,
        "--reuse",
        help="Start from this exp_dir's finished stages (prepare ... pretrain2) that ran with the recipe values "
        "this recipe gives them, hard-linked into the new exp_dir: an arm that changes only what comes after.",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """All stages of a recipe in order, resumable, ending in a WER table."""
    from .pipeline import Pipeline
    from .run_recipe import load_run_recipe

    quiet_if_json(as_json)
    asked = [
        *([f"folds={folds}"] if folds else []),
        *([f"fold_seeds={fold_seeds}"] if fold_seeds is not None else []),
        *([f"fold_jobs={fold_jobs}"] if fold_jobs is not None else []),
    ]
    data = load_run_recipe(recipe, [*(overrides or []), *asked])
    from rich.markup import escape

    log = (
        (lambda m: err.print(escape(m), highlight=False))
        if as_json
        else (lambda m: out.print(f"[bold cyan]{escape(m)}[/bold cyan]", highlight=False))
    )
    pipe = Pipeline(data, log=log)
    if reuse is not None:
        pipe.reuse(reuse)
    results = pipe.run(stage, stop_stage)
    if as_json:
        emit_json(results)
        return
    if results.get("folds"):
        from .report import fold_table

        print_table(fold_table(results["folds"]))
    if "decode" in results:
        _render_wer_summary(results)
    _render_stage_times(pipe.stage_times())


def _render_stage_times(times: Dict[str, float]) -> None:
    """Where the run's time went, stage by stage (an earlier, resumed run's stages included)."""
    if not times:
        return
    t = Table(title="time per stage")
    t.add_column("stage")
    t.add_column("minutes", justify="right")
    t.add_column("share", justify="right")
    total = sum(times.values())
    for stage, sec in times.items():
        t.add_row(stage, f"{sec / 60:.1f}", f"{sec / total:.0%}" if total else "-")
    t.add_row("total", f"{total / 60:.1f}", "100%")
    print_table(t)


def _render_wer_summary(results: Dict[str, Any]) -> None:
    """The run's last word: WER per fine-tuned model and test set, with the compute behind it."""
    rows = {r.get("name"): r for r in (results.get("report") or {}).get("rows", [])}
    from .report import score

    scores = {key: score(r, "accuracy") for key, r in results["decode"].items()}
    if scores and None not in scores.values():  # a classification run: accuracy (mAP multi-label), not WER
        metrics = {found[2] for found in scores.values()}
        name = " / ".join(sorted(metrics))
        t = Table(title=f"{name} (the full table: report/report.md)")
        for col in ("model", "set", "total FLOPs", f"{name} %", "95% CI", "macro-F1"):
            t.add_column(col, justify="left" if col in ("model", "set") else "right")
        for key, r in results["decode"].items():
            model, _ = key.split("/", 1)
            value, ci, metric = scores[key]
            t.add_row(
                model,
                r["set"],
                _flops(rows.get(model, {}).get("total_flops")),
                f"{value:.1f}" + ("" if len(metrics) == 1 else f" ({metric})"),
                f"{ci[0]:.1f}-{ci[1]:.1f}" if r.get(f"{metric}_ci") else "-",
                "-" if r.get("macro_f1") is None else f"{r['macro_f1']:.3f}",
            )
        print_table(t)
        return
    t = Table(title="WER (the full table: report/report.md)")
    for col in ("model", "set", "pretrain FLOPs", "total FLOPs", "WER %", "95% CI", "CER %"):
        t.add_column(col, justify="left" if col in ("model", "set") else "right")
    for key, r in results["decode"].items():
        model, _ = key.split("/", 1)
        rep = rows.get(model, {})
        ci = f"{r['ci95'][0]:.1f}-{r['ci95'][1]:.1f}" if r.get("ci95") else "-"
        t.add_row(
            model,
            r["set"],
            _flops(rep.get("pretrain_flops")),
            _flops(rep.get("total_flops")),
            "-" if r.get("wer") is None else f"{r['wer']:.2f}",
            ci,
            "-" if r.get("cer") is None else f"{r['cer']:.2f}",
        )
    print_table(t)


def _flops(v: Any) -> str:
    return f"{v:.2e}" if isinstance(v, (int, float)) else "-"


_register_subcommands()


#: under this much free space a failed write is taken for a full disk (torch.save then says "unexpected pos")
DISK_FULL_BYTES = 64 * 2**20


def disk_full_message(e: BaseException) -> Optional[str]:
    """The one-line message when ``e`` came from a full disk (ENOSPC, or any failure with almost no space
    left where the command runs or where the failed write went), else None."""
    frees = []
    for folder in dict.fromkeys([".", str(getattr(e, "speechbudget_folder", "."))]):
        try:
            frees.append(shutil.disk_usage(folder).free)
        except OSError:  # the folder is gone: no answer, and the handler must not fail itself
            pass
    free = min(frees, default=DISK_FULL_BYTES)
    if getattr(e, "errno", None) == errno.ENOSPC or free < DISK_FULL_BYTES:
        return (
            f"the disk is full ({free / 2**20:.0f} MiB free; {type(e).__name__}: {e}): free some space and "
            "re-run the same command, which resumes from its last checkpoint"
        )
    return None


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        rc = app(args=argv, standalone_mode=False)  # returns an exit code when a command exits early
    except SpeechBudgetError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_exc.NoArgsIsHelpError:  # typer has printed the help
        sys.exit(0)
    except typer.Abort as e:  # click's word for an EOFError (or a Ctrl-C) inside a command
        if isinstance(e.__cause__, EOFError):
            err.print(
                f"[red]error:[/red] a compressed file ended early ({escape(str(e.__cause__))}): a manifest or "
                "feature file this command reads is truncated (a full disk, a copy cut short); re-run the "
                "stage that wrote it",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)
        err.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    except click_exc.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "speechbudget"
        err.print(
            f"[red]error:[/red] {e.format_message()} (see `{cmd} --help`)", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    except Exception as e:  # a bug of ours: one line by default, the traceback on request
        if os.environ.get("SPEECHBUDGET_DEBUG"):
            raise
        full = disk_full_message(e)
        if full:
            err.print(f"[red]error:[/red] {escape(full)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        err.print(
            f"[red]internal error:[/red] {type(e).__name__}: {e} (re-run with SPEECHBUDGET_DEBUG=1 for the "
            "traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
    if isinstance(rc, int) and rc == 130:  # typer turns Ctrl-C into Exit(130)
        err.print("interrupted; re-run the same command to resume")
    if isinstance(rc, int) and rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    main()
