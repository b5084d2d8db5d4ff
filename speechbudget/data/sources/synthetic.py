"""The embedded default corpus: synthesize with espeak-ng (through the executor), then list it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from ..accents import ACCENT_CHOICES, check_accent_options
from ..executor import run_map
from ..synthetic import UtteranceSpec, check_silence, plan_corpus, synthesize
from . import FindContext, Source, SourceItem, option


@dataclass
class SyntheticOptions:
    hours: float = option(0.2, help="Hours of audio to synthesize.")
    seed: int = option(0, help="Random seed (same seed, same corpus).")
    grammar: str = option(
        "sentences", help="What is said: sentences (open vocabulary) or digits (connected digits)."
    )
    speakers: int = option(24, help="Number of voices; a tenth each (at least one) are dev and test voices.")
    noise_dir: Optional[Path] = option(help="Folder of noise wavs to mix in.")
    snr: float = option(20.0, help="Signal-to-noise ratio in dB when mixing noise.")
    accents: List[str] = option(
        help=f"Comma-separated accents some voices speak English with: {ACCENT_CHOICES}, as in "
        "`prepare tts`; for a pretraining pool that has heard English spoken with another language's sounds.",
        factory=list,
    )
    accent_share: float = option(0.5, help="Share of the voices that speak with `accents`.")

    def __post_init__(self) -> None:
        check_accent_options(self.accents, self.accent_share)


def find_items(opts: SyntheticOptions, ctx: FindContext) -> List[SourceItem]:
    if not opts.hours > 0:
        raise SpeechBudgetError(f"hours must be positive (got {opts.hours})")
    specs = plan_corpus(
        opts.hours,
        seed=opts.seed,
        num_speakers=opts.speakers,
        grammar=opts.grammar,
        accents=opts.accents,
        accent_share=opts.accent_share,
    )
    return spoken_items(specs, opts.noise_dir, opts.snr, ctx)


def spoken_items(
    specs: List[UtteranceSpec],
    noise_dir: Optional[Path],
    snr: float,
    ctx: FindContext,
    silence: Optional[float] = None,
) -> List[SourceItem]:
    """Synthesize every planned utterance (in the executor's workers) and list them as items."""
    if noise_dir is not None and not Path(noise_dir).is_dir():
        raise SpeechBudgetError(f"noise folder {noise_dir} does not exist")
    if silence is not None:
        check_silence(silence)  # once, before the workers synthesize
    snr_db = snr if noise_dir is not None else None
    args = [(s, Path(ctx.corpus_dir) / "synth", noise_dir, snr_db, silence) for s in specs]
    paths = run_map(ctx.executor, synthesize, args, "synthesizing")
    return [
        SourceItem(
            id=s.id,
            audio=str(p),
            split=s.split,
            text=s.text,
            speaker=s.speaker,
            custom={"voice": f"{s.voice}+{s.variant}", "pitch": s.pitch, "speed": s.speed},
        )
        for s, p in zip(specs, paths)
    ]


SOURCE = Source(
    "synthetic",
    "The embedded corpus: espeak-ng speech in many voices (sentences or connected digits), no download.",
    SyntheticOptions,
    find_items,
    (
        "speechbudget prepare synthetic --hours 0.5 --out data/ --noise-dir ../shared/data/noise --snr 20",
        "speechbudget prepare synthetic --grammar digits --hours 2 --speakers 64 --out data/ --name digits",
        "speechbudget prepare synthetic --grammar digits --hours 2 --speakers 64 --accents el,fr --out data/",
    ),
)
