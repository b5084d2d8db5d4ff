"""``speechbudget prepare <source>``: one command per registered source, built from its options.

The flags of ``prepare fsdd`` are the fields of fsdd's options dataclass plus the options every
source shares, with their defaults and help, so the command line and a recipe's ``prepare:``
section can never drift apart: both go through :meth:`CorpusSpec.build`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.table import Table

from . import cli_common as ui
from .data.corpus_spec import CorpusSpec, PrepareOptions
from .data.sources import Source, registry
from .errors import SpeechBudgetError

#: command-line-only parameters: where the corpus goes, and how results are shown
CLI_ONLY = ("out_dir", "as_json")


def _cli_annotation(tp: Any) -> Any:
    """A dataclass field's type as the command line takes it (lists as one comma-separated string)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return Optional[_cli_annotation(args[0])]
    if typing.get_origin(tp) is list:
        return Optional[str]
    return tp


def _cli_default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return ",".join(map(str, value)) or None if isinstance(value, list) else value


def _parameters(options: type) -> List[inspect.Parameter]:
    hints = typing.get_type_hints(options)
    params = []
    for f in dataclasses.fields(options):
        help_text = f.metadata.get("help", "")
        if f.metadata.get("argument"):
            default = typer.Argument(..., help=help_text)
            annotation = Path
        else:
            annotation = _cli_annotation(hints[f.name])
            flag = f"--{f.name.replace('_', '-')}"
            if annotation is bool:
                flag = f"{flag}/--no-{f.name.replace('_', '-')}"
            default = typer.Option(_cli_default(f), flag, help=help_text)
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
    return params


KEY = "prepare-options"  # what CorpusSpec's messages prefix option names with; _as_flags turns it into flags


def _as_flags(message: str, names: List[str]) -> str:
    """ "config key 'prepare-options.num_jobs' must ..." -> "--num-jobs must ..."; a source's own
    messages name its options as recipe keys ("test_speakers/dev_speakers name ..."): those with an
    underscore (never a word of prose) become flags too."""
    message = re.sub(
        rf"(config key )?'?{KEY}\.(\w+)'?", lambda m: "--" + m.group(2).replace("_", "-"), message
    )
    keys = sorted((n for n in names if "_" in n), key=len, reverse=True)
    if not keys:
        return message
    return re.sub(rf"\b({'|'.join(keys)})\b", lambda m: "--" + m.group(1).replace("_", "-"), message)


def _command(src: Source) -> Callable[..., None]:
    def command(**kwargs: Any) -> None:
        out_dir, as_json = kwargs.pop("out_dir"), kwargs.pop("as_json")
        ui.quiet_if_json(as_json)
        values = {k: v for k, v in kwargs.items() if v is not None}
        try:
            _run(CorpusSpec.build(src.name, values, key=KEY), out_dir, as_json)
        except SpeechBudgetError as e:  # the user typed flags, not recipe keys: name the flag
            raise SpeechBudgetError(_as_flags(str(e), flag_names)) from None

    flag_names = [f.name for f in dataclasses.fields(src.options) + dataclasses.fields(PrepareOptions)]

    params = _parameters(src.options) + _parameters(PrepareOptions)
    params.append(
        inspect.Parameter(
            "out_dir",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                Path("data"), "--out", help="Output folder; the corpus goes to OUT/<name>/."
            ),
            annotation=Path,
        )
    )
    params.append(
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=ui.JSON_OPT, annotation=bool)
    )
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = f"prepare_{src.name}"
    command.__doc__ = f"{src.summary} Bad items are skipped and reported."
    return command


def _run(spec: CorpusSpec, out_dir: Path, as_json: bool) -> None:
    from .data.prepare import prepare

    summary = prepare(spec, out_dir)
    if as_json:
        ui.emit_json(summary.to_dict())
    else:
        t = Table(title=f"prepared {spec.name} -> {summary.corpus_dir} ({summary.seconds:.1f} s)")
        for col in ("split", "kept", "rejected", "converted", "hours", "status", "reasons"):
            t.add_column(col)
        for s in summary.splits:
            t.add_row(
                s.split,
                str(s.kept),
                str(s.rejected),
                str(s.converted),
                f"{s.hours:.3f}",
                "kept (--force redoes)" if s.skipped else "done",
                ", ".join(f"{k}: {v}" for k, v in s.reasons.items()),
            )
        ui.print_table(t)
        if any(s.rejected for s in summary.splits):
            ui.out.print(f"rejected items and reasons: {summary.corpus_dir}/rejected_<split>.jsonl")
    if summary.usable == 0:
        raise SpeechBudgetError("nothing usable was left after validation; see rejected_<split>.jsonl")


def register(app: typer.Typer) -> typer.Typer:
    """Add ``prepare`` with one subcommand per registered source."""
    prepare_app = typer.Typer(
        help="Turn audio into lhotse manifests (16 kHz mono) and fbank features; bad items are skipped "
        "and reported. One subcommand per source: `speechbudget prepare SOURCE --help`.",
        epilog="Examples:\n\n  speechbudget prepare fsdd ../shared/data/fsdd --out data/ --test-speakers theo"
        "\n\n  speechbudget prepare dir my-audio/ --out data/ --name mine",
        no_args_is_help=True,
    )
    for src in registry().values():
        epilog = "Examples:\n\n" + "\n\n".join(f"  {e}" for e in src.examples) if src.examples else None
        prepare_app.command(src.name, epilog=epilog)(_command(src))
    app.add_typer(prepare_app, name="prepare")
    return prepare_app
