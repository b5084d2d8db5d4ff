"""Audio validation and conversion to 16 kHz mono.

Every item of every source goes through :func:`check_and_convert`, so "what counts as bad
audio" is decided in one place. Audio that is fine but not 16 kHz mono wav/flac is converted
once to FLAC (written under a temporary name, then renamed) so later stages never resample.

torch and lhotse are imported where they are used: the source registry reads this module's
constants, and `speechbudget prepare --help` must not wait for them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from ..atomic import atomic_output
from ..errors import SpeechBudgetError

if TYPE_CHECKING:
    import torch
    from lhotse import CutSet, Recording

SAMPLE_RATE = 16000
MIN_DURATION = 0.1  # seconds; shorter clips cannot give even a few encoder frames
SILENCE_PEAK = 1e-4  # full scale is 1.0; quieter than this everywhere is digital silence
NATIVE_FORMATS = {"WAV", "FLAC"}


@dataclass
class CheckResult:
    item_id: str
    recording: Optional[Recording]
    reason: Optional[str] = None  # why it was rejected
    note: Optional[str] = None  # what was converted


def read_audio(path: Path) -> torch.Tensor:
    """Any file soundfile reads -> 16 kHz mono float32 (resampled as ``prepare`` does)."""
    import torch

    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for missing or corrupt files
        raise SpeechBudgetError(
            f"cannot read audio {path} ({type(e).__name__}: {str(e).strip()[:100]})"
        ) from None
    if samples.shape[0] == 0:
        raise SpeechBudgetError(f"{path} holds no samples")
    return torch.from_numpy(resample(samples.mean(axis=1), sr, SAMPLE_RATE).astype(np.float32))


def audio_files(paths: Sequence[Path]) -> List[Path]:
    """The files as given, each folder replaced by the audio files below it (sorted)."""
    return [f for f, _ in speaker_files(paths)]


def speaker_files(paths: Sequence[Path]) -> List[Tuple[Path, str]]:
    """(file, speaker) for the files as given and the audio files below each folder (sorted). Below a
    folder the speaker is the first folder under it, as ``prepare dir`` reads it; a file given alone,
    or lying in the folder itself, is a speaker of its own (its speaker is unknown: never pooled)."""
    from .sources.folder import AUDIO_SUFFIXES

    out: List[Tuple[Path, str]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append((p, str(p)))
            continue
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        if not found:
            raise SpeechBudgetError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {p}")
        for f in found:
            rel = f.relative_to(p)
            out.append((f, str(p / rel.parts[0]) if len(rel.parts) > 1 else str(f)))
    return out


def is_audio_input(path: Path) -> bool:
    """An audio file, or a folder with audio below it and no prepared corpus in it (which a command
    that reads cuts would otherwise be asked to read)."""
    from .sources.folder import AUDIO_SUFFIXES

    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in AUDIO_SUFFIXES
    if not path.is_dir() or any(path.glob("cuts_*.jsonl.gz")) or any(path.glob("*/cuts_*.jsonl.gz")):
        return False
    return any(f.suffix.lower() in AUDIO_SUFFIXES for f in path.rglob("*"))


def none_read(errors: Sequence[str]) -> SpeechBudgetError:
    """The error when not one of the files a user named could be read (one file: its own reason)."""
    return SpeechBudgetError(
        errors[0] if len(errors) == 1 else f"none of the {len(errors)} files read: {errors[0]}"
    )


def memory_cuts(paths: Sequence[Path]) -> Tuple[CutSet, List[Tuple[Path, str]]]:
    """Audio files (or folders of them) that were never prepared, as 16 kHz mono cuts held in memory
    with their speaker (:func:`speaker_files`), and the files that could not be read with why: what
    decoding a user's recordings reads."""
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts, skipped = [], []
    for path, speaker in speaker_files(paths):
        try:
            wave = read_audio(path).numpy()
        except SpeechBudgetError as e:
            skipped.append((path, str(e)))
            continue
        buf = io.BytesIO()
        sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="FLOAT")
        rec = Recording.from_bytes(buf.getvalue(), recording_id=str(path))
        cut = rec.to_cut()  # a supervision without text: who speaks, for per-speaker normalisation
        cut.supervisions = [SupervisionSegment(cut.id, rec.id, 0.0, rec.duration, speaker=speaker)]
        cuts.append(cut)
    return CutSet.from_cuts(cuts), skipped


def atomic_write_audio(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write FLAC to a temporary name in the same folder, then rename: never a half file."""
    with atomic_output(path) as tmp:
        sf.write(str(tmp), samples, sample_rate, format="FLAC", subtype="PCM_16")


def resample(
    samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, dtype: type = np.float32
) -> np.ndarray:
    """Polyphase resampling (scipy): exact rational ratio, no torchaudio needed. ``dtype=np.float64``
    keeps the precision of the synthetic corpus, which mixes and scales its clips before writing them."""
    if orig_sr == target_sr:
        return samples
    from scipy.signal import resample_poly  # here, not at the top: scipy.signal takes 1.5 s to import

    g = math.gcd(orig_sr, target_sr)
    return resample_poly(samples, target_sr // g, orig_sr // g).astype(dtype)


def band_limit(samples: np.ndarray, cutoff_hz: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Remove everything above ``cutoff_hz``: down to twice the cutoff and back up (the polyphase
    filter is the anti-aliasing low-pass), i.e. the audio as a recorder at that rate would hear it."""
    return resample(resample(samples, sample_rate, 2 * cutoff_hz), 2 * cutoff_hz, sample_rate)[: len(samples)]


def check_and_convert(
    item_id: str, path: str, converted_dir: Path, band_limit_hz: Optional[int] = None
) -> CheckResult:
    """Read ``path``, reject it with a reason or return a 16 kHz mono :class:`Recording`;
    ``band_limit_hz``: keep only frequencies below it (:func:`band_limit`)."""
    from lhotse import Recording

    p = Path(path).absolute()  # manifests hold absolute paths: later stages may run from elsewhere
    if not p.is_file():
        return CheckResult(item_id, None, f"audio file not found: {path}")
    if p.stat().st_size == 0:
        return CheckResult(item_id, None, "empty file (0 bytes)")
    try:
        info = sf.info(str(p))
        samples, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt data
        return CheckResult(item_id, None, f"unreadable audio ({type(e).__name__}: {str(e).strip()[:120]})")
    if samples.shape[0] == 0:
        return CheckResult(item_id, None, "empty audio (0 samples)")
    if not np.isfinite(samples).all():
        return CheckResult(item_id, None, "audio contains NaN or inf samples")
    duration = samples.shape[0] / sr
    if duration < MIN_DURATION:
        return CheckResult(item_id, None, f"too short ({duration:.3f} s < {MIN_DURATION} s)")
    notes = []
    if samples.shape[1] > 1:
        samples = samples.mean(axis=1, keepdims=True)
        notes.append(f"{info.channels} channels -> mono")
    mono = samples[:, 0]
    if float(np.abs(mono).max()) < SILENCE_PEAK:
        return CheckResult(item_id, None, "silent audio (peak below -80 dBFS)")
    if sr != SAMPLE_RATE:
        mono = resample(mono, sr)
        notes.append(f"{sr} Hz -> {SAMPLE_RATE} Hz")
    if (
        band_limit_hz is not None and sr > 2 * band_limit_hz
    ):  # audio recorded at 2x the cutoff has nothing above it
        mono = band_limit(mono, band_limit_hz)
        notes.append(f"band-limited to {band_limit_hz} Hz")
    if info.format not in NATIVE_FORMATS:
        notes.append(f"{info.format} -> FLAC")
    if notes:
        out = Path(converted_dir) / f"{item_id}.flac"
        atomic_write_audio(out, np.clip(mono, -1.0, 1.0), SAMPLE_RATE)
        p = out
    try:
        rec = Recording.from_file(p, recording_id=item_id)
    except Exception as e:
        return CheckResult(item_id, None, f"lhotse cannot read audio ({type(e).__name__}: {e})")
    return CheckResult(item_id, rec, None, "; ".join(notes) or None)
