"""How fast does speechbudget's fbank extraction run, in times real time per CPU core?

Feature extraction has to keep up with training data preparation on cheap CPUs, and the team's
target is 200x real time per core. This script measures, single-threaded, on real 16 kHz audio:

* ``direct``: lhotse's ``Fbank.extract`` (the extractor ``speechbudget.data.features`` builds) on
  audio already in memory: the pure compute cost.
* ``pipeline``: ``speechbudget.data.features.compute_fbank``, i.e. ``CutSet.compute_and_store_features``
  with ``LilcomChunkyWriter`` and ``num_jobs=1``: audio reading + fbank + lilcom compression + writing.
* ``stages``: the pipeline's parts timed one by one (read audio, fbank, lilcom write) so the
  difference to ``pipeline`` is lhotse's own bookkeeping.

Three regimes, because per-call overhead matters for short utterances: FSDD spoken digits (real
speech, 8 kHz resampled to 16 kHz up front, mostly < 1 s), 1-2 s windows and 60 s stretches of the
16 kHz noise recordings. ``x RT`` is audio seconds / CPU seconds of this process (``process_time``);
the wall-clock figure is given too. Each is the median over ``--reps`` runs. A cProfile of one
pipeline run of the slowest regime shows where the time goes.

Run: ``python bench/fbank_speed.py [--quick]``; results go to bench/results/fbank_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import (
    SHARED_DATA,
    default_out,
    fmt_load,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    median,
    save_results,
    timed,
)
from lhotse import CutSet, LilcomChunkyWriter, Recording
from scipy.signal import resample_poly

from speechbudget import progress
from speechbudget.data.features import compute_fbank, fbank_extractor

SR = 16000


@dataclass
class Regime:
    """A set of utterances of one size class, in memory and as lhotse cuts over 16 kHz files."""

    name: str
    description: str
    clips: list[np.ndarray]
    cuts: CutSet

    @property
    def audio_seconds(self) -> float:
        return sum(len(c) for c in self.clips) / SR


# ---------------------------------------------------------------------------------------------
# audio


def noise_files() -> list[Path]:
    files = sorted((SHARED_DATA / "noise").glob("*.wav"))
    if not files:
        raise SystemExit(f"no noise wavs under {SHARED_DATA / 'noise'}")
    return files


def long_regime(n_files: int, seconds: float) -> Regime:
    """The first ``seconds`` of each 16 kHz noise recording: one long utterance per file."""
    clips, cuts = [], []
    for path in noise_files()[:n_files]:
        rec = Recording.from_file(path)
        dur = min(seconds, rec.duration)
        cut = rec.to_cut().truncate(duration=dur)
        clips.append(cut.load_audio()[0].astype(np.float32))
        cuts.append(cut)
    return Regime(
        "long", f"first {seconds:g} s of each 16 kHz noise recording", clips, CutSet.from_cuts(cuts)
    )


def short_regime(total_seconds: float, seed: int = 0) -> Regime:
    """Back-to-back windows of 1-2 s (uniform) over the noise recordings, until ``total_seconds``."""
    rng = random.Random(seed)
    clips, cuts = [], []
    total = 0.0
    for path in noise_files():
        rec = Recording.from_file(path)
        audio = rec.load_audio()[0].astype(np.float32)
        offset = 0.0
        while total < total_seconds:
            dur = round(rng.uniform(1.0, 2.0), 2)
            if offset + dur > rec.duration:
                break
            cut = rec.to_cut().truncate(offset=offset, duration=dur)
            cuts.append(cut.with_id(f"{cut.id}-{len(cuts)}"))
            start = round(offset * SR)
            clips.append(audio[start : start + round(dur * SR)])
            offset += dur
            total += dur
    return Regime("short", "1-2 s windows of the 16 kHz noise recordings", clips, CutSet.from_cuts(cuts))


def fsdd_regime(total_seconds: float, workdir: Path) -> Regime:
    """FSDD digit recordings resampled 8 -> 16 kHz (untimed) and written as 16 kHz wavs."""
    paths = sorted((SHARED_DATA / "fsdd" / "recordings").glob("*.wav"))
    if not paths:
        raise SystemExit(f"no FSDD wavs under {SHARED_DATA / 'fsdd' / 'recordings'}")
    out_dir = workdir / "fsdd16k"
    out_dir.mkdir(parents=True, exist_ok=True)
    clips, cuts = [], []
    total = 0.0
    for path in paths:
        if total >= total_seconds:
            break
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        audio16 = resample_poly(audio, SR, sr).astype(np.float32)
        dest = out_dir / path.name
        sf.write(dest, audio16, SR, subtype="PCM_16")
        clips.append(audio16)
        cuts.append(Recording.from_file(dest).to_cut())
        total += len(audio16) / SR
    return Regime("fsdd", "FSDD spoken digits, 8 kHz resampled to 16 kHz", clips, CutSet.from_cuts(cuts))


# ---------------------------------------------------------------------------------------------
# measurements


def repeat(fn: Callable[[], object], reps: int) -> list[dict]:
    return [timed(fn)[1].to_dict() for _ in range(reps)]


def speed_summary(audio_seconds: float, runs: list[dict]) -> dict:
    """Median times-real-time by CPU and by wall time over repeated runs."""
    return {
        "runs": runs,
        "x_rt_cpu": median([audio_seconds / r["cpu_s"] for r in runs]),
        "x_rt_wall": median([audio_seconds / r["wall_s"] for r in runs]),
        "cpu_s": median([r["cpu_s"] for r in runs]),
        "wall_s": median([r["wall_s"] for r in runs]),
    }


def measure_direct(regime: Regime, reps: int) -> dict:
    extractor = fbank_extractor()

    def run():
        for clip in regime.clips:
            extractor.extract(clip, SR)

    run()  # warm-up: first calls build FFT plans and allocate
    return speed_summary(regime.audio_seconds, repeat(run, reps))


def run_pipeline(regime: Regime, storage: Path) -> CutSet:
    return compute_fbank(regime.cuts, storage, num_jobs=1)


def storage_bytes(cuts: CutSet) -> int:
    """Size of the feature files the cuts point to (LilcomChunkyWriter appends ``.lca`` to the path)."""
    paths = {Path(cut.features.storage_path) for cut in cuts}
    return sum(p.stat().st_size for p in paths)


def measure_pipeline(regime: Regime, reps: int, workdir: Path) -> dict:
    storage = workdir / f"feats-{regime.name}"
    cuts = run_pipeline(regime, storage)  # warm-up (page cache, imports)
    summary = speed_summary(regime.audio_seconds, repeat(lambda: run_pipeline(regime, storage), reps))
    summary["stored_bytes_per_audio_second"] = storage_bytes(cuts) / regime.audio_seconds
    return summary


def measure_stages(regime: Regime, reps: int, workdir: Path) -> dict:
    """CPU seconds of each pipeline stage on its own: read audio, fbank, lilcom compress + write."""
    extractor = fbank_extractor()
    cuts = list(regime.cuts)
    feats = [extractor.extract(clip, SR) for clip in regime.clips]

    def read():
        for cut in cuts:
            cut.load_audio()

    def extract():
        for clip in regime.clips:
            extractor.extract(clip, SR)

    def write():
        with LilcomChunkyWriter(workdir / f"stage-{regime.name}.lca") as writer:
            for cut, f in zip(cuts, feats):
                writer.write(cut.id, f)

    return {
        name: median([r["cpu_s"] for r in repeat(fn, reps)])
        for name, fn in [("read_audio", read), ("fbank", extract), ("lilcom_write", write)]
    }


# (label, file suffix, function) whose cumulative time cProfile reports; they may nest (see label)
PROFILE_GROUPS = [
    ("audio read (MonoCut.load_audio)", "lhotse/cut/mono.py", "load_audio"),
    (
        "  of which: torchaudio availability check (lhotse.utils.is_torchaudio_available)",
        "lhotse/utils.py",
        "is_torchaudio_available",
    ),
    ("fbank (Fbank.extract)", "features/kaldi/extractors.py", "extract"),
    ("lilcom compress + write (LilcomChunkyWriter.write)", "lhotse/features/io.py", "write"),
]


def profile_pipeline(regime: Regime, workdir: Path, top: int) -> dict:
    """cProfile one pipeline run: cumulative time of its main parts, and the ``top`` functions by
    own time (profiler overhead inflates small Python calls, so shares are indicative)."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    run_pipeline(regime, workdir / f"feats-profile-{regime.name}")
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt
    groups = {label: 0.0 for label, _, _ in PROFILE_GROUPS}
    rows = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        for label, suffix, name in PROFILE_GROUPS:
            if func == name and filename.endswith(suffix):
                groups[label] += cumtime
        where = (
            func if filename == "~" else f"{Path(filename).parent.name}/{Path(filename).name}:{line}({func})"
        )
        rows.append(
            {
                "function": where,
                "calls": ncalls,
                "own_s": tottime,
                "cum_s": cumtime,
                "own_share": tottime / total if total else 0.0,
            }
        )
    rows.sort(key=lambda r: -r["own_s"])
    return {
        "regime": regime.name,
        "total_cpu_s": total,
        "groups": [[k, v] for k, v in groups.items()],
        "top": rows[:top],
    }


def overhead_fit(results: dict[str, dict]) -> dict:
    """Least-squares fit of pipeline CPU time = a x audio seconds + b x utterances over the regimes.

    ``1 / a`` is the speed on endless utterances; ``b`` the fixed cost per utterance; the
    utterance length at which the pipeline runs at exactly ``x`` times real time is b / (1/x - a).
    """
    rows = list(results.values())
    design = np.array([[r["audio_seconds"], r["utterances"]] for r in rows])
    cpu = np.array([r["pipeline"]["cpu_s"] for r in rows])
    (a, b), *_ = np.linalg.lstsq(design, cpu, rcond=None)
    return {
        "cpu_s_per_audio_s": float(a),
        "x_rt_long_limit": float(1 / a) if a > 0 else float("inf"),
        "cpu_ms_per_utterance": float(b) * 1e3,
    }


def break_even_seconds(fit: dict, target: float) -> float:
    """Shortest utterance that still runs at ``target`` x real time (inf if never)."""
    headroom = 1 / target - fit["cpu_s_per_audio_s"]
    return fit["cpu_ms_per_utterance"] / 1e3 / headroom if headroom > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# report


def diagnosis(results: dict[str, dict], fit: dict, target: float) -> str:
    """Is the target met per core, and if not, what the missing time is spent on."""
    worst = min(results, key=lambda r: results[r]["pipeline"]["x_rt_cpu"])
    worst_rt = results[worst]["pipeline"]["x_rt_cpu"]
    cost = (
        f"A fit over the regimes gives {fit['cpu_ms_per_utterance']:.2f} CPU ms of fixed cost per utterance "
        f"plus {fit['x_rt_long_limit']:.0f}x real time on the audio itself, so utterances shorter than "
        f"{break_even_seconds(fit, target):.2f} s fall below {target:g}x."
    )
    if worst_rt >= target:
        return (
            f"Target {target:g}x real time per core: **met** in every regime through the full pipeline "
            f"(slowest: {worst}, {worst_rt:.0f}x by CPU time). {cost}"
        )
    stages = results[worst]["stages"]
    total = results[worst]["pipeline"]["cpu_s"]
    parts = ", ".join(f"{k} {v / total:.0%}" for k, v in stages.items())
    other = 1 - sum(stages.values()) / total
    met = [name for name, r in results.items() if r["pipeline"]["x_rt_cpu"] >= target]
    return (
        f"Target {target:g}x real time per core: **not met** for {worst} ({worst_rt:.0f}x by CPU time)"
        + (f"; met for {', '.join(met)}" if met else "")
        + f". {cost} Share of the {worst} pipeline's CPU "
        f"time: {parts}, lhotse per-cut bookkeeping (the rest) {other:.0%}."
    )


def render_markdown(data: dict) -> str:
    headers = [
        "regime",
        "utts",
        "audio s",
        "mean utt s",
        "direct xRT cpu",
        "direct xRT wall",
        "pipeline xRT cpu",
        "pipeline xRT wall",
        "stage CPU s (read/fbank/lilcom) vs pipeline",
        "bytes/audio s",
        "load 1m",
    ]
    rows = []
    for name in data["regime_order"]:  # the JSON is written with sorted keys
        r = data["regimes"][name]
        st, pipe = r["stages"], r["pipeline"]
        loads = [run for part in ("direct", "pipeline") for run in r[part]["runs"]]
        rows.append(
            [
                name,
                r["utterances"],
                f"{r['audio_seconds']:.0f}",
                f"{r['mean_utterance_s']:.2f}",
                f"{r['direct']['x_rt_cpu']:.0f}",
                f"{r['direct']['x_rt_wall']:.0f}",
                f"{pipe['x_rt_cpu']:.0f}",
                f"{pipe['x_rt_wall']:.0f}",
                f"{st['read_audio']:.2f}/{st['fbank']:.2f}/{st['lilcom_write']:.2f} vs {pipe['cpu_s']:.2f}",
                f"{pipe['stored_bytes_per_audio_second']:.0f}",
                fmt_load(loads[0]["load_before"], loads[-1]["load_after"]),
            ]
        )
    prof = data["profile"]
    group_rows = [[label, f"{sec:.3f}", f"{sec / prof['total_cpu_s']:.0%}"] for label, sec in prof["groups"]]
    prof_rows = [
        [p["function"], p["calls"], f"{p['own_s']:.3f}", f"{p['own_share']:.0%}"] for p in prof["top"]
    ]
    s = data["settings"]
    return "\n\n".join(
        [
            "## Fbank extraction speed (bench/fbank_speed.py)",
            machine_markdown(data["machine"]),
            (
                f"Single thread (`torch.set_num_threads(1)`), lhotse `Fbank` 80 bins / 10 ms as built by "
                f"`speechbudget.data.features.fbank_extractor()`. xRT = audio seconds / CPU seconds of the process "
                f"(`time.process_time`; the wall-clock figure next to it), median of {s['reps']} runs after one "
                f"warm-up run. *direct*: `Fbank.extract` on in-memory audio. *pipeline*: `compute_fbank` = "
                f"`CutSet.compute_and_store_features(LilcomChunkyWriter, num_jobs=1)`, i.e. read wav + fbank + "
                f"lilcom + write (files in the page cache). Stage columns time each part alone."
                + (" **Quick mode: reduced audio, numbers are a smoke check only.**" if s["quick"] else "")
            ),
            markdown_table(headers, rows),
            data["diagnosis"],
            (
                f"cProfile of one pipeline run ({prof['regime']}, {prof['total_cpu_s']:.2f} CPU s under the profiler), "
                "cumulative time of its parts (cProfile inflates Python-heavy parts such as the per-cut checks):"
            ),
            markdown_table(["part", "cum s", "share"], group_rows),
            "Top functions by own time:",
            markdown_table(["function", "calls", "own s", "share"], prof_rows),
        ]
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=default_out("fbank_speed"), help="JSON output (a .md goes next to it)"
    )
    p.add_argument("--quick", action="store_true", help="smoke check: ~30 s of audio per regime, 1 run")
    p.add_argument("--reps", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--long-seconds", type=float, default=60.0, help="length of each long utterance")
    p.add_argument("--short-total", type=float, default=360.0, help="total audio of the 1-2 s regime (s)")
    p.add_argument("--fsdd-total", type=float, default=300.0, help="total audio of the FSDD regime (s)")
    p.add_argument("--target", type=float, default=200.0, help="target times real time per core")
    p.add_argument("--profile-top", type=int, default=12, help="functions listed from cProfile")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    progress.set_enabled(False)
    if args.quick:
        args.reps, args.long_seconds, args.short_total, args.fsdd_total = 1, 30.0, 30.0, 30.0
    info = machine_info()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fbank-bench-") as tmp:
        workdir = Path(tmp)
        regimes = [
            fsdd_regime(args.fsdd_total, workdir),
            short_regime(args.short_total),
            long_regime(1 if args.quick else len(noise_files()), args.long_seconds),
        ]
        for regime in regimes:
            print(
                f"[fbank] {regime.name}: {len(regime.clips)} utterances, {regime.audio_seconds:.0f} s",
                flush=True,
            )
            results[regime.name] = {
                "description": regime.description,
                "utterances": len(regime.clips),
                "audio_seconds": regime.audio_seconds,
                "mean_utterance_s": regime.audio_seconds / len(regime.clips),
                "direct": measure_direct(regime, args.reps),
                "pipeline": measure_pipeline(regime, args.reps, workdir),
                "stages": measure_stages(regime, args.reps, workdir),
            }
        slowest = min(regimes, key=lambda r: results[r.name]["pipeline"]["x_rt_cpu"])
        profile = profile_pipeline(slowest, workdir, args.profile_top)
    fit = overhead_fit(results)
    data = {
        "benchmark": "fbank_speed",
        "settings": vars(args) | {"out": str(args.out), "threads": torch.get_num_threads()},
        "machine": info,
        "loadavg_at_end": loadavg(),
        "regime_order": list(results),
        "regimes": results,
        "profile": profile,
        "target_x_rt": args.target,
        "overhead_fit": fit,
        "break_even_utterance_s": break_even_seconds(fit, args.target),
        "diagnosis": diagnosis(results, fit, args.target),
    }
    markdown = render_markdown(data)
    md_path = save_results(args.out, data, markdown)
    print(markdown)
    print(f"\nwrote {args.out} and {md_path}")


if __name__ == "__main__":
    main()
