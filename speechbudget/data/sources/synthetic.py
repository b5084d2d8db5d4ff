"""The embedded default corpus: synthesize with espeak-ng (through the executor), then list it."""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import List, Optional

from ...errors import SpeechBudgetError
from ..executor import run_map
from ..synthetic import plan_corpus, synthesize
from . import SourceItem


def find_items(
    out_dir: Path,
    hours: float,
    seed: int = 0,
    noise_dir: Optional[Path] = None,
    snr_db: Optional[float] = None,
    executor: Optional[Executor] = None,
    grammar: str = "sentences",
    speakers: int = 24,
) -> List[SourceItem]:
    if hours <= 0:
        raise SpeechBudgetError(f"--hours must be positive (got {hours})")
    if noise_dir is not None and not Path(noise_dir).is_dir():
        raise SpeechBudgetError(f"noise folder {noise_dir} does not exist")
    specs = plan_corpus(hours, seed=seed, num_speakers=speakers, grammar=grammar)
    args = [(s, Path(out_dir), noise_dir, snr_db) for s in specs]
    paths = run_map(executor, synthesize, args, "synthesizing")
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
