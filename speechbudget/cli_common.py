"""What every command module of the CLI shares: the consoles, ``--json`` and its rendering.

Its own module so that ``cli.py`` and ``cli_plan.py`` both import it and neither imports the other.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

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


def print_table(t: Table, console: Optional[Console] = None) -> None:
    """Every table the CLI prints: as it is when it fits the terminal, else one block of "column: value"
    lines per row, so no header is ever cut to "spl..." in an 80-column terminal."""
    console = console or out
    from rich import box
    from rich.measure import Measurement

    def fits() -> bool:
        return Measurement.get(console, console.options.update(max_width=100_000), t).maximum <= console.width

    if not fits():  # first without the vertical rules and the padding at the edges
        t.box, t.pad_edge, t.collapse_padding = box.SIMPLE_HEAD, False, True
    if fits():
        console.print(t)
        return
    tall = Table(title=t.title, caption=t.caption, caption_justify=t.caption_justify, show_lines=False)
    tall.add_column("field", no_wrap=True)
    tall.add_column("value", overflow="fold")
    cells = [list(c.cells) for c in t.columns]
    for i in range(t.row_count):
        for j, col in enumerate(t.columns):
            tall.add_row(str(col.header), cells[j][i], end_section=j == len(t.columns) - 1)
    console.print(tall)
