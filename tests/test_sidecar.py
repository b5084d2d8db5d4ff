"""`sidecar.run_all`: jobs in processes of their own, N at a time, each one's end reported, none
stopping the others (what `run --fold-jobs` stands on)."""

from __future__ import annotations

import os

from speechbudget import sidecar
from speechbudget.data.sources import speaker_splits


def test_jobs_run_n_at_a_time_and_a_failed_or_killed_one_stops_no_other(tmp_path):
    said = []
    jobs = [
        sidecar.Job("fine", speaker_splits.check_fractions, (0.1, 0.1), tmp_path / "fine.log"),
        sidecar.Job("mistake", speaker_splits.check_fractions, (2.0, 0.0), tmp_path / "mistake.log"),
        sidecar.Job("killed", os._exit, (137,), tmp_path / "killed.log"),
        sidecar.Job("fine too", speaker_splits.check_fractions, (0.0, 0.2), tmp_path / "fine2.log"),
    ]
    ended = []
    codes = sidecar.run_all(
        jobs, parallel=2, threads=1, say=said.append, on_end=lambda j, c: ended.append((j.name, c))
    )
    assert codes == {"fine": 0, "mistake": 1, "killed": 137, "fine too": 0}
    assert sorted(ended) == sorted(codes.items())  # each job's end seen here as it happened
    assert "error: dev_fraction must be in [0, 1), got 2.0" in (tmp_path / "mistake.log").read_text()
    started = [m for m in said if "started in a process of its own (1 thread;" in m]
    assert [m.split(":")[0] for m in started] == ["fine", "mistake", "killed", "fine too"]  # in order
    ended = {m.split(":")[0]: m for m in said if "after" in m}
    assert ended["fine"].startswith("fine: done after") and "stopped (exit 137; see" in ended["killed"]
    # never more than two at once: the third starts only after one of the first two has ended
    order = [("start" if "started" in m else "end", m.split(":")[0]) for m in said]
    assert order.index(("start", "killed")) > min(
        order.index(("end", "fine")), order.index(("end", "mistake"))
    )
