"""LibriSpeech layout (``<part>/<speaker>/<chapter>/*.flac`` + ``*.trans.txt``).

Parsing goes through lhotse's own recipe so our manifests match what the rest of the lhotse
world produces; ``--download`` uses lhotse's downloader when the machine is online.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from ...errors import SpeechBudgetError
from . import SourceItem

SPLIT_OF_PART = {"train": "train", "dev": "dev", "test": "test"}


def _split(part: str) -> str:
    return next((v for k, v in SPLIT_OF_PART.items() if part.startswith(k)), "train")


def find_items(root: Path, parts: Optional[Sequence[str]] = None, download: bool = False) -> List[SourceItem]:
    from lhotse.recipes import librispeech

    root = Path(root)
    if download:
        librispeech.download_librispeech(root.parent, dataset_parts=list(parts or ["mini_librispeech"]))
    if not root.is_dir():
        raise SpeechBudgetError(f"LibriSpeech folder {root} does not exist (pass --download when online)")
    found = [p.name for p in root.iterdir() if p.is_dir()]
    use = list(parts) if parts else found
    manifests = librispeech.prepare_librispeech(root, dataset_parts=use, num_jobs=1)
    if not manifests:
        raise SpeechBudgetError(
            f"no LibriSpeech parts under {root} (expected e.g. train-clean-100/, test-clean/)"
        )
    items = []
    for part, m in manifests.items():
        recs = m["recordings"]
        for sup in m["supervisions"]:
            rec = recs[sup.recording_id]
            items.append(
                SourceItem(
                    id=sup.id,
                    audio=rec.sources[0].source,
                    split=_split(part),
                    text=sup.text,
                    speaker=sup.speaker,
                    custom={"part": part},
                )
            )
    return items
