"""`speechbudget models list/show` report parameters and FLOPs from the real counter."""

from __future__ import annotations

import json

from speechbudget.cli import main
from speechbudget.models.catalog import encoder_cost


def run_json(capsys, *args):
    try:
        main(list(args) + ["--json"])
    except SystemExit as e:
        assert not e.code
    return json.loads(capsys.readouterr().out)


def test_models_list_has_every_family_and_the_reference_presets(capsys):
    rows = {r["name"]: r for r in run_json(capsys, "models", "list")}
    for name in (
        "zipformer-base",
        "zipformer-large",
        "zipformer-medium",
        "zipformer-small",
        "zipformer-tiny",
        "transformer-base",
        "transformer-small",
        "transformer-slim",
        "bimamba-tiny",
        "bimamba-small",
    ):
        assert name in rows
    assert (
        abs(rows["transformer-small"]["params"] - rows["transformer-slim"]["params"])
        / rows["transformer-small"]["params"]
        < 0.05
    )
    only = run_json(capsys, "models", "list", "--family", "bimamba")
    assert {r["family"] for r in only} == {"bimamba"}


def test_models_show_json_matches_the_flop_counter(capsys):
    d = run_json(capsys, "models", "show", "transformer-tiny", "--seconds", "2")
    assert {"params", "gflops_per_audio_second", "frame_rate_hz", "by_module"} <= set(d)
    ref = encoder_cost("transformer-tiny", seconds=2.0)
    assert d["params"] == ref["params"]
    assert abs(d["gflops_per_audio_second"] - ref["gflops_per_audio_second"]) < 1e-9
    assert d["frame_rate_hz"] == 50.0
    assert (
        abs(sum(v for k, v in d["by_module"].items() if "." not in k) - d["gflops_per_audio_second"]) < 1e-6
    )


def test_unknown_preset_is_one_line(capsys):
    try:
        main(["models", "show", "nope"])
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset" in err[0]
