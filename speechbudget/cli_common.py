"""What every command module of the CLI shares: the consoles, ``--json`` and its rendering.

Its own module so that ``cli.py`` and ``cli_plan.py`` both import it and neither imports the other.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from . import progress

out = Console()
err = Console(stderr=True)

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON on stdout instead of tables.")


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def quiet_if_json(as_json: bool) -> None:
    """Progress bars go quiet when stdout is for a script."""
    if as_json:
        progress.set_enabled(False)
