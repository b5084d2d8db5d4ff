"""Device table, peak lookups, GPU-hour <-> FLOP conversion, CPU peak measurement and cache."""

import json

import pytest
import torch

from speechbudget.cost import devices
from speechbudget.cost.devices import (
    DEVICES,
    flops_to_gpu_hours,
    get_device,
    gpu_hours_to_flops,
    measure_cpu_peak,
)
from speechbudget.errors import SpeechBudgetError

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("A100", "a100"),
        ("a100-80gb", "a100"),
        ("A100-SXM4-80GB", "a100"),
        ("H100_SXM", "h100"),
        ("nvidia-h200", "h200"),
        ("NVIDIA L4", "l4"),
        ("v100-sxm2", "v100"),
        ("CPU", "cpu"),
    ],
)
def test_lookup_is_case_insensitive_and_knows_aliases(name, expected):
    assert get_device(name).name == expected


def test_lookup_passes_a_device_through():
    dev = DEVICES["h100"]
    assert get_device(dev) is dev


def test_unknown_device_error_lists_known_names():
    with pytest.raises(SpeechBudgetError) as err:
        get_device("tpu-v5")
    message = str(err.value)
    assert "tpu-v5" in message
    for name in ("v100", "a100", "l4", "h100", "h200", "cpu"):
        assert name in message


def test_datasheet_peaks_are_dense():
    assert get_device("a100").peak_flops("bf16") == pytest.approx(312e12)
    assert get_device("a100").peak_flops("tf32") == pytest.approx(156e12)
    assert get_device("v100").peak_flops("fp16") == pytest.approx(125e12)
    # The H100/H200/L4 datasheets print sparse numbers (1979, 242 TFLOP/s); we must halve them.
    assert get_device("h100").peak_flops("bf16") == pytest.approx(989.5e12)
    assert get_device("h200").peak_flops("bfloat16") == get_device("h100").peak_flops("bf16")
    assert get_device("l4").peak_flops("torch.float16") == pytest.approx(121e12)
    for dev in DEVICES.values():
        if dev.kind == "gpu":
            assert dev.peak_flops("fp32") < dev.peak_flops("fp16")


def test_missing_dtype_and_unknown_dtype_are_user_errors():
    with pytest.raises(SpeechBudgetError, match="v100 has no bf16"):
        get_device("v100").peak_flops("bf16")
    with pytest.raises(SpeechBudgetError, match="unknown dtype"):
        get_device("a100").peak_flops("int4")


def test_gpu_hours_to_flops_uses_peak_and_utilisation():
    flops = gpu_hours_to_flops(1.0, "a100", "bf16", utilisation=0.5)
    assert flops == pytest.approx(3600 * 312e12 * 0.5)
    default = gpu_hours_to_flops(1.0, "a100", "bf16")
    assert default == pytest.approx(3600 * 312e12 * get_device("a100").default_utilisation)


def test_default_utilisation_comes_from_published_runs():
    """HuBERT Base on 8 V100 in ~5.7 days: 6ND / (GPU-s x fp16 peak) = 0.065 (issue 19's arithmetic)."""
    from speechbudget.cost.utilisation import OURS_PER_6ND, RUNS

    fairseq = next(r for r in RUNS if r.name.startswith("fairseq"))
    assert fairseq.mfu_6nd(125e12) == pytest.approx(0.065, abs=0.002)
    for name in ("v100", "a100", "h100", "h200", "l4"):
        util, source = get_device(name).default_utilisation_source
        assert 0.04 < util < 0.15 and "published" in source, (name, util)  # not the 0.35 guess
    assert get_device("h200").default_utilisation == get_device("h100").default_utilisation
    util, source = get_device("a100").default_utilisation_source
    assert util == pytest.approx(OURS_PER_6ND * 0.1025, rel=1e-6) and "a100" in source
    assert get_device("cpu").default_utilisation == pytest.approx(0.13)


def test_our_flop_count_per_6nd_matches_the_recorded_constant():
    """The conversion of published 6ND figures into our FLOP units, recounted with fvcore."""
    from speechbudget.cost.utilisation import FRAME_RATE_HZ, OURS_PER_6ND
    from speechbudget.models.catalog import encoder_cost

    cost = encoder_cost("transformer-base", seconds=10.0)
    ratio = cost["macs_per_audio_second"] / (cost["params"] * FRAME_RATE_HZ)
    assert ratio == pytest.approx(OURS_PER_6ND, abs=0.002)


@pytest.mark.parametrize("device, dtype", [("v100", "fp16"), ("a100", "bf16"), ("h200", "tf32")])
@pytest.mark.parametrize("hours", [0.0, 0.25, 8.0, 1000.0])
def test_gpu_hours_flops_round_trip(device, dtype, hours):
    flops = gpu_hours_to_flops(hours, device, dtype, utilisation=0.4)
    assert flops_to_gpu_hours(flops, device, dtype, utilisation=0.4) == pytest.approx(hours)


@pytest.mark.parametrize("util", [0.0, -0.1, 1.5])
def test_bad_utilisation_is_rejected(util):
    with pytest.raises(SpeechBudgetError, match="utilisation"):
        gpu_hours_to_flops(1.0, "h100", "bf16", utilisation=util)


def test_measure_cpu_peak_is_plausible_and_cached(tmp_path, monkeypatch):
    cache = tmp_path / "sub" / "cpu_peak.json"
    peak = measure_cpu_peak("fp32", seconds=0.2, cache_path=cache)
    # Anything from a slow shared core to a big AVX-512 socket.
    assert 1e8 < peak < 1e13
    stored = json.loads(cache.read_text())
    assert stored == {"fp32@1threads": peak}

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached peak must not be measured again")

    monkeypatch.setattr(devices, "_time_matmuls", no_timing)
    monkeypatch.setattr(devices, "_pick_matmul_size", no_timing)
    assert measure_cpu_peak("float32", cache_path=cache) == peak
    assert get_device("cpu").peak_flops("fp32", cache_path=cache) == peak


def test_cpu_conversion_reads_the_cache(tmp_path):
    cache = tmp_path / "peak.json"
    cache.write_text(json.dumps({"bf16@1threads": 4e11}))
    flops = gpu_hours_to_flops(2.0, "cpu", "bf16", utilisation=0.5, cache_path=cache)
    assert flops == pytest.approx(2 * 3600 * 4e11 * 0.5)


def test_measuring_adds_to_an_existing_cache(tmp_path):
    cache = tmp_path / "peak.json"
    cache.write_text(json.dumps({"fp32@64threads": 1.0}))
    measure_cpu_peak("bf16", seconds=0.1, cache_path=cache)
    assert set(json.loads(cache.read_text())) == {"fp32@64threads", "bf16@1threads"}


def test_corrupt_cache_is_a_user_error(tmp_path):
    cache = tmp_path / "peak.json"
    cache.write_text("{not json")
    with pytest.raises(SpeechBudgetError, match="delete it"):
        measure_cpu_peak("fp32", seconds=0.1, cache_path=cache)


def test_a_refreshed_peak_keeps_the_best_measurement(tmp_path):
    """A peak measured while other jobs held the cores is low, and it stayed forever: `calibrate`
    measures again and keeps the better one (a peak is the best the CPU did)."""
    cache = tmp_path / "peak.json"
    cache.write_text(json.dumps({"fp32@1threads": 1.0}))  # a measurement from a loaded machine
    assert measure_cpu_peak("fp32", seconds=0.1, cache_path=cache) == 1.0  # planning reads it as it is
    fresh = measure_cpu_peak("fp32", seconds=0.1, cache_path=cache, refresh=True)
    assert fresh > 1e8 and json.loads(cache.read_text())["fp32@1threads"] == fresh
    cache.write_text(json.dumps({"fp32@1threads": 1e15}))  # better than any measurement here: kept
    assert measure_cpu_peak("fp32", seconds=0.1, cache_path=cache, refresh=True) == 1e15
