"""Shared fixtures: paths to the real audio in ../shared/data and small copies of it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FSDD = SHARED / "fsdd" / "recordings"
COMMONVOICE = SHARED / "commonvoice-mini"
NOISE = SHARED / "noise"

torch.set_num_threads(1)


FREE_AT_START = pytest.StashKey[float]()


def _free_gb() -> float:
    """Free space where pytest makes the tests' folders (under the system's temporary folder)."""
    return shutil.disk_usage(tempfile.gettempdir()).free / 1e9


def pytest_sessionstart(session):
    session.config.stash[FREE_AT_START] = _free_gb()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A failing run says how full the disk was, at the end where failures are read: set-up errors from
    a full temporary folder look like anything else (one CI run lost its last quarter of tests to one)."""
    if exitstatus != 0:
        terminalreporter.write_line(
            f"free disk in the temporary folder: {config.stash.get(FREE_AT_START, float('nan')):.1f} GB at "
            f"the start, {_free_gb():.1f} GB now (the suite needs about 3.5 GB)"
        )


@pytest.fixture
def two_threads():
    """Two torch threads for one test (the suite runs on one): for what depends on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"real test audio is missing: expected {SHARED} (../shared/data beside the repo)")
    return SHARED


#: recipe overrides that shrink any recipe to seconds on a CPU (stage wiring, not results)
TINY = [
    "prepare.hours=0.02",
    "prepare.speakers=24",
    "prepare.num_jobs=1",
    "kmeans.num_clusters=16",
    "kmeans.max_frames=20000",
    "pretrain.max_duration=8",
    "pretrain.budget.flops=null",
    "pretrain.budget.steps=2",
    "finetune.max_duration=8",
    "finetune.budget.flops=null",
    "finetune.budget.steps=2",
    "finetune.train_hours=null",
    "finetune.ctc.freeze_encoder_steps=1",
    "device=cpu",
]


def copy_fsdd(dst: Path, per_speaker: int = 6, speakers=("george", "jackson", "nicolas", "theo")) -> Path:
    """A small FSDD folder: ``per_speaker`` recordings of each speaker, digits spread evenly."""
    dst.mkdir(parents=True, exist_ok=True)
    for spk in speakers:
        for i in range(per_speaker):
            name = f"{i % 10}_{spk}_{i // 10}.wav"
            shutil.copy(FSDD / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A small prepared synthetic corpus (espeak-ng) with MFCC k-means labels, shared by tests."""
    from speechbudget.cli import main

    root = tmp_path_factory.mktemp("synthetic")
    try:
        main(["prepare", "synthetic", "--hours", "0.04", "--seed", "3", "--out", str(root), "--json"])
    except SystemExit as e:
        assert not e.code, "preparing the synthetic corpus failed"
    try:
        main(
            [
                "kmeans",
                str(root / "synthetic"),
                "--out",
                str(root / "km"),
                "--num-clusters",
                "24",
                "--encoder",
                "zipformer-tiny",
                "--json",
            ]
        )
    except SystemExit as e:
        assert not e.code, "k-means failed"
    return root


class HiddenOnly(torch.nn.Module):
    """jit.trace accepts only tensors/tuples as outputs, so expose an encoder's ``(hidden, lengths)``."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x, lengths):
        out = self.encoder(x, lengths)
        return out.hidden, out.lengths


def cli_result(capsys, *args):
    """(exit code, stdout, stderr) of ``speechbudget ARGS`` run in this process."""
    from speechbudget.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module", autouse=False)
def private_cache_dir(tmp_path_factory):
    """Counted costs and calibrations go to a temporary folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
