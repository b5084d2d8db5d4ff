"""Every command's --help: exits 0 and shows at least one example, as the brief asks of the CLI."""

from __future__ import annotations

import pytest
import typer
from conftest import cli_result


def _command_paths():
    from speechbudget.cli import app

    def walk(cmd, path):
        yield path  # groups too (the root: path []), not only the commands under them
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p))
def test_help_has_examples(path, capsys):
    code, out, err = cli_result(capsys, *path, "--help")
    assert code == 0, err
    assert "Example" in out, f"`speechbudget {' '.join(path)} --help` shows no example"


def test_run_help_names_every_stage(capsys):
    from speechbudget.pipeline import STAGES

    _, out, _ = cli_result(capsys, "run", "--help")
    text = " ".join(out.split())
    missing = [s for s in STAGES if s not in text]
    assert not missing, f"run --help does not name the stages {missing}"


def test_help_loads_neither_torch_nor_lhotse():
    """Help is asked for often and must answer at once: importing torch and lhotse takes seconds."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from speechbudget.cli import main\n"
        "for args in (['--help'], ['prepare', '--help'], ['prepare', 'fsdd', '--help'], ['run', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'lhotse', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
