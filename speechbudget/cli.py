"""The ``speechbudget`` command line: parse arguments, call the library, render with rich.

No logic lives here beyond choosing what to call and how to show it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__, progress
from .errors import SpeechBudgetError

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

app = typer.Typer(
    name="speechbudget",
    help="Budget-aware self-supervised speech pretraining: prepare -> plan -> pretrain -> finetune -> WER.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Inspect prepared data.", no_args_is_help=True)
models_app = typer.Typer(help="Encoder presets: parameters, FLOPs, frame rates.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of tables.")


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def quiet_if_json(as_json: bool) -> None:
    if as_json:
        progress.set_enabled(False)


def _version(value: bool) -> None:
    if value:
        out.print(f"speechbudget {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Budget-aware self-supervised speech pretraining.

    Example: `speechbudget prepare synthetic --hours 0.2 --out data/` then `speechbudget data describe data/synthetic`.
    """


# --------------------------------------------------------------------------------------- prepare
@app.command(
    epilog="Examples:\n\n"
    "  speechbudget prepare synthetic --hours 0.5 --out data/ --noise-dir ../shared/data/noise --snr 20\n\n"
    "  speechbudget prepare fsdd ../shared/data/fsdd --test-speakers theo --out data/\n\n"
    "  speechbudget prepare commonvoice ../shared/data/commonvoice-mini --out data/\n\n"
    "  speechbudget prepare librispeech /corpora/LibriSpeech --parts train-clean-100 --out data/\n\n"
    "  speechbudget prepare dir /audio/unlabeled --out data/ --name mycorpus\n\n"
    "  speechbudget prepare dir /audio --transcripts text.tsv --num-jobs 8 --executor dask --scheduler tcp://host:8786 --out data/"
)
def prepare(
    source: str = typer.Argument(..., help="synthetic | fsdd | commonvoice | librispeech | dir"),
    path: Optional[Path] = typer.Argument(None, help="Corpus folder (not needed for synthetic)."),
    out_dir: Path = typer.Option(Path("data"), "--out", help="Output folder; the corpus goes to OUT/<name>/."),
    name: Optional[str] = typer.Option(None, help="Corpus name (default: the source name)."),
    hours: float = typer.Option(0.2, help="synthetic: hours of audio to synthesize."),
    seed: int = typer.Option(0, help="synthetic: random seed (same seed, same corpus)."),
    noise_dir: Optional[Path] = typer.Option(None, help="synthetic: folder of noise wavs to mix in."),
    snr: float = typer.Option(20.0, help="synthetic: signal-to-noise ratio in dB when mixing noise."),
    test_speakers: str = typer.Option("theo", help="fsdd: comma-separated held-out test speakers."),
    dev_speakers: str = typer.Option("", help="fsdd: comma-separated dev speakers."),
    table: Optional[Path] = typer.Option(None, help="commonvoice: the .tsv/.csv table (default: validated.tsv)."),
    test_fraction: float = typer.Option(0.2, help="commonvoice: share of speakers held out for test."),
    parts: Optional[str] = typer.Option(None, help="librispeech: comma-separated parts (default: all found)."),
    download: bool = typer.Option(False, help="librispeech: download the parts first (needs network)."),
    transcripts: Optional[Path] = typer.Option(None, help="dir: a path<TAB>text file; none = unlabeled audio."),
    split: str = typer.Option("train", help="dir: split name for the folder's audio."),
    features: bool = typer.Option(True, "--features/--no-features", help="Compute 80-dim fbank features."),
    force: bool = typer.Option(False, "--force", help="Redo splits that are already prepared."),
    num_jobs: int = typer.Option(1, "--num-jobs", "-j", help="Parallel worker processes."),
    executor: str = typer.Option("local", help="local (process pool) or dask."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address for --executor dask."),
    as_json: bool = JSON_OPT,
) -> None:
    """Turn audio into lhotse manifests (16 kHz mono) and fbank features; bad items are skipped and reported."""
    from .data import prepare as prep
    from .data.sources import SOURCES

    quiet_if_json(as_json)
    if source not in SOURCES:
        raise SpeechBudgetError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source != "synthetic" and path is None:
        raise SpeechBudgetError(f"`prepare {source}` needs the corpus folder as second argument")
    corpus = name or source
    opts: Dict[str, Any] = {"source": source, "path": path}
    if source == "synthetic":
        from .data.sources import synthetic

        opts.update(hours=hours, seed=seed, noise_dir=noise_dir, snr=snr)
        find = lambda ex: synthetic.find_items(  # noqa: E731
            out_dir / corpus / "synth", hours, seed, noise_dir, snr if noise_dir else None, ex)
    elif source == "fsdd":
        from .data.sources import fsdd

        opts.update(test_speakers=test_speakers, dev_speakers=dev_speakers)
        find = lambda ex: fsdd.find_items(path, _csv(test_speakers), _csv(dev_speakers))  # noqa: E731
    elif source == "commonvoice":
        from .data.sources import commonvoice

        find = lambda ex: commonvoice.find_items(path, table, test_fraction=test_fraction)  # noqa: E731
    elif source == "librispeech":
        from .data.sources import librispeech

        find = lambda ex: librispeech.find_items(path, _csv(parts) or None, download)  # noqa: E731
    else:
        from .data.sources import folder

        find = lambda ex: folder.find_items(path, transcripts, split)  # noqa: E731
    summary = prep.prepare(find, corpus, out_dir, features=features, force=force, num_jobs=num_jobs,
                           executor_kind=executor, scheduler=scheduler, options=opts)
    if as_json:
        emit_json(summary.to_dict())
    else:
        t = Table(title=f"prepared {corpus} -> {summary.corpus_dir} ({summary.seconds:.1f} s)")
        for col in ("split", "kept", "rejected", "converted", "hours", "status", "rejection reasons"):
            t.add_column(col)
        for s in summary.splits:
            t.add_row(s.split, str(s.kept), str(s.rejected), str(s.converted), f"{s.hours:.3f}",
                      "already prepared (use --force)" if s.skipped else "done",
                      ", ".join(f"{k}: {v}" for k, v in s.reasons.items()))
        out.print(t)
        if any(s.rejected for s in summary.splits):
            out.print(f"rejected items and reasons: {summary.corpus_dir}/rejected_<split>.jsonl")
    if summary.usable == 0:
        raise SpeechBudgetError("nothing usable was left after validation; see rejected_<split>.jsonl")


def _csv(s: Optional[str]) -> List[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


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
    for col in ("split", "utterances", "hours", "speakers", "labeled", "features", "mean s", "p5 s", "p50 s", "p95 s", "max s"):
        t.add_column(col, justify="right")
    for split, s in stats.items():
        d = s["duration_s"]
        t.add_row(split, str(s["utterances"]), f"{s['hours']:.3f}", str(s["speakers"]), str(s["labeled"]),
                  str(s["with_features"]), *(f"{d.get(k, 0):.2f}" for k in ("mean", "p5", "p50", "p95", "p100")))
    out.print(t)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        rc = app(args=argv, standalone_mode=False)  # returns an exit code when a command exits early
    except SpeechBudgetError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click_exc.NoArgsIsHelpError:  # typer has printed the help
        sys.exit(0)
    except click_exc.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "speechbudget"
        err.print(f"[red]error:[/red] {e.format_message()} (see `{cmd} --help`)", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to resume")
        sys.exit(130)
    if isinstance(rc, int) and rc == 130:  # typer turns Ctrl-C into Exit(130)
        err.print("interrupted; re-run the same command to resume")
    if isinstance(rc, int) and rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    main()
