"""The transcripts of a transcribed corpus, spoken by synthetic voices: more voices for fine-tuning.

With a few real speakers, a CTC model learns their voices as much as the words. Speaking the same
transcripts in many synthetic voices (text-to-speech augmentation; Rosenberg et al. 2019, Laptev et
al. 2020) shows it each word in voices the real speakers do not have. Recipes add it to fine-tuning
with a ``tts:`` section; the pipeline then speaks the fine-tuning split's own transcripts (a fold's
training speakers' only, so nothing of a scored speaker is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from ..accents import ACCENT_CHOICES, check_accent_options
from ..synthetic import ESPEAK, check_engine, engine_voices, plan_transcripts
from . import FindContext, Source, SourceItem, option
from .synthetic import spoken_items


@dataclass
class TtsOptions:
    transcripts: Optional[Path] = option(
        help="A cut or supervision manifest (.jsonl.gz) whose transcripts are spoken; recipes: the "
        "fine-tuning split, set by the pipeline."
    )
    copies: float = option(
        1.0, help="Times each transcript is spoken, each time by another voice (0.5: a seeded half of them)."
    )
    speakers: int = option(64, help="Number of voices (round robin over them).")
    engine: str = option(
        "espeak",
        help="Speech engine: espeak (espeak-ng's formant voices) or flite (four voices made from real "
        "people's recordings, each speaker at its own pitch and speed; apt-get install flite).",
    )
    accents: List[str] = option(
        help=f"Comma-separated accents some voices speak English with: {ACCENT_CHOICES}; the "
        "English phonemes said with that language's sounds by its espeak-ng voice.",
        factory=list,
    )
    accent_share: float = option(0.5, help="Share of the voices that speak with `accents`.")
    seed: int = option(0, help="Random seed: the voices, their pitch and speed.")
    noise_dir: Optional[Path] = option(help="Folder of noise wavs to mix in.")
    snr: float = option(20.0, help="Signal-to-noise ratio in dB when mixing noise.")
    silence: Optional[float] = option(
        help="Seconds of silence kept at each end of a clip (unset: as espeak-ng speaks, which ends every "
        "clip with ~0.3 s); 0.02 for a corpus cut close to its words, such as FSDD."
    )

    def __post_init__(self) -> None:
        # a recipe's typo stops at load, not after the folds began
        check_engine(self.engine)
        check_accent_options(self.accents, self.accent_share)
        if self.accents and self.engine != ESPEAK:
            raise SpeechBudgetError("tts accents are spoken by espeak-ng: use engine espeak or no accents")


def read_transcripts(path: Path) -> List[str]:
    """The non-empty supervision texts of a cut or supervision manifest, in its order."""
    from lhotse import CutSet, SupervisionSet, load_manifest

    if not Path(path).is_file():
        raise SpeechBudgetError(f"transcripts manifest {path} not found: give a cuts_<split>.jsonl.gz")
    try:
        manifest = load_manifest(path)
    except Exception as e:  # lhotse raises several kinds for a file that is not a manifest
        raise SpeechBudgetError(f"{path} is not a lhotse cut or supervision manifest ({e})") from None
    if isinstance(manifest, CutSet):
        sups = [s for c in manifest for s in c.supervisions]
    elif isinstance(manifest, SupervisionSet):
        sups = list(manifest)
    else:
        raise SpeechBudgetError(f"{path} holds no transcripts: give a cut or supervision manifest")
    texts = [s.text.strip() for s in sups if s.text and s.text.strip()]
    if not texts:
        raise SpeechBudgetError(f"{path} has no transcripts to speak")
    return texts


def find_items(opts: TtsOptions, ctx: FindContext) -> List[SourceItem]:
    if opts.transcripts is None:
        raise SpeechBudgetError("tts needs --transcripts: the manifest whose transcripts are spoken")
    voices = engine_voices(opts.engine, opts.speakers)
    specs = plan_transcripts(
        read_transcripts(opts.transcripts),
        opts.copies,
        opts.seed,
        opts.speakers,
        voices,
        opts.accents,
        opts.accent_share,
    )
    return spoken_items(specs, opts.noise_dir, opts.snr, ctx, opts.silence)


SOURCE = Source(
    "tts",
    "A transcribed corpus's transcripts spoken by espeak-ng or flite voices (more voices for fine-tuning).",
    TtsOptions,
    find_items,
    (
        "speechbudget prepare tts --transcripts data/fsdd/cuts_train.jsonl.gz --band-limit-hz 4000 --silence 0.02 --out data/",
        "speechbudget prepare tts --transcripts data/cv/cuts_train.jsonl.gz --copies 2 --speakers 32 --out data/",
        "speechbudget prepare tts --transcripts data/fsdd/cuts_train.jsonl.gz --engine flite --silence 0.02 --out data/",
        "speechbudget prepare tts --transcripts data/fsdd/cuts_train.jsonl.gz --accents el,fr --silence 0.02 --out data/",
    ),
)
