"""What a GPU-hour really buys: default model-FLOP utilisation from published speech SSL runs.

GPU-hours become FLOPs through ``hours x peak x utilisation``. A guess of 0.35 overstated what a
GPU-hour buys by 3-6x: published HuBERT / wav2vec 2.0 pretraining runs reach far less. Each run
below is reduced to the 6ND rule (N = encoder parameters, D = output frames at 50 Hz, 6 = forward
+ backward FLOPs per parameter per frame) over ``GPUs x seconds x dense peak``.

Our FLOP counter is not 6ND: it counts the encoder's real contractions (attention included) from
fvcore. For ``transformer-base`` (the HuBERT Base shape, fbank front end) it counts
:data:`OURS_PER_6ND` = 1.10 x 6ND (measured; a test recounts it), so a utilisation in our units is
``1.10 x`` the published 6ND figure. ``speechbudget calibrate`` on the user's own device replaces
these defaults, and ``plan`` says which one it used.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

FRAME_RATE_HZ = 50.0
#: our training FLOPs of transformer-base per 6ND FLOPs (fvcore: 4.949 GMACs per audio second,
#: 90.27M parameters -> 6 x 4.949e9 / (6 x 90.27e6 x 50) = 1.097)
OURS_PER_6ND = 1.097


@dataclass(frozen=True)
class PublishedRun:
    """One published pretraining run, with what is needed to redo its arithmetic."""

    name: str
    device: str  # key of cost.devices.DEVICES
    dtype: str
    gpus: int
    hours: float  # wall-clock
    updates: float
    audio_seconds_per_update: float
    params: float  # encoder parameters, N
    source: str

    @property
    def frames(self) -> float:
        return self.updates * self.audio_seconds_per_update * FRAME_RATE_HZ

    def mfu_6nd(self, peak_flops: float) -> float:
        """6ND over GPU-seconds x dense peak: the published utilisation."""
        return 6.0 * self.params * self.frames / (self.gpus * self.hours * 3600.0 * peak_flops)


#: HuBERT Base's schedule (400k updates of 32 GPUs x 87.5 s = 2,800 s of audio) appears in several
#: rows: reimplementations that report only their wall time trained the same schedule.
RUNS: List[PublishedRun] = [
    PublishedRun(
        "fairseq HuBERT Base (iteration 2)",
        "v100",
        "fp16",
        8,
        5.7 * 24,
        400e3,
        2800.0,
        95e6,
        "Hsu et al. 2021 schedule; ~5.7 days on 8 V100 as implied by Fast-HuBERT (arXiv 2309.13860)",
    ),
    PublishedRun(
        "minimal_hubert HuBERT Base",
        "h100",
        "bf16",
        16,
        10.0,
        400e3,
        2800.0,
        95e6,
        "github mxmpl/minimal_hubert README: HuBERT Base in ~10 h on 16 H100",
    ),
]

#: runs whose utilisation is reported as a figure or a range (6ND basis) rather than re-derived here:
#: (run, device, dtype, low, high, source). A range is used at its midpoint.
REPORTED_MFU: List[Tuple[str, str, str, float, float, str]] = [
    ("SpidR", "h100", "bf16", 0.05, 0.05, "facebookresearch/spidr paper/results/speed.csv"),
    ("SpidR", "a100", "bf16", 0.10, 0.10, "facebookresearch/spidr paper/results/speed.csv"),
    (
        "NVIDIA DeepLearningExamples wav2vec 2.0 Base",
        "a100",
        "bf16",
        0.06,
        0.15,
        "DeepLearningExamples wav2vec2 README: 8 A100, bf16, 48.1 h; the range spans the batch-size reading",
    ),
]

#: a device class with no published run takes the nearest one's figure
NEAREST = {"h200": "h100", "l4": "a100"}

#: this project's own measurement on a 2-core CPU (BENCHMARKS.md section 3): quickstart pretraining
#: at ~13% of the measured fp32 matmul peak, already in our FLOP units
CPU_DEFAULT = (
    0.13,
    "measured here: quickstart pretraining at ~13% of the fp32 matmul peak (BENCHMARKS.md 3)",
)


PeakFn = Callable[[str, str], float]  # (device, dtype) -> dense peak FLOP/s


def evidence(peak: PeakFn) -> List[Dict[str, object]]:
    """Every published figure, the re-derived ones with the peak of the dtype they trained in."""
    rows = []
    for run in RUNS:
        mfu = run.mfu_6nd(peak(run.device, run.dtype))
        rows.append(
            {"run": run.name, "device": run.device, "dtype": run.dtype, "mfu_6nd": mfu, "source": run.source}
        )
    for name, device, dtype, low, high, source in REPORTED_MFU:
        rows.append(
            {"run": name, "device": device, "dtype": dtype, "mfu_6nd": (low + high) / 2, "source": source}
        )
    return rows


def default_utilisation(device: str, kind: str, peak: PeakFn) -> Tuple[float, str]:
    """``(utilisation in our FLOP units, where it comes from)`` for an uncalibrated device."""
    if kind == "cpu":
        return CPU_DEFAULT
    name = NEAREST.get(device, device)
    figures = [r for r in evidence(peak) if r["device"] == name]
    if not figures:
        figures = [r for r in evidence(peak) if r["device"] == "a100"]
        name = f"a100 (no published run on {device})"
    mfu = statistics.median(float(r["mfu_6nd"]) for r in figures)
    note = "" if name == device else f", taken from {name}"
    return (
        mfu * OURS_PER_6ND,
        f"published runs ({len(figures)} on {name.split(' ')[0]}: median 6ND MFU {mfu:.3f} x {OURS_PER_6ND} "
        f"for our FLOP count{note})",
    )
