"""Any folder of audio, with an optional ``path<TAB>text`` transcript file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from ...errors import SpeechBudgetError
from . import SourceItem

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".sph"}


def read_transcripts(path: Path, root: Path) -> Dict[str, str]:
    """``path<TAB>text`` lines; paths relative to the audio folder or absolute."""
    out: Dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if "\t" not in line:
            out[str((root / line.strip()).resolve())] = ""  # a path with no text: rejected later
            continue
        p, text = line.split("\t", 1)
        full = Path(p) if Path(p).is_absolute() else root / p
        out[str(full.resolve())] = text.strip()
    return out


def find_items(root: Path, transcripts: Optional[Path] = None, split: str = "train") -> List[SourceItem]:
    root = Path(root)
    if not root.is_dir():
        raise SpeechBudgetError(f"audio folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise SpeechBudgetError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    texts = read_transcripts(transcripts, root) if transcripts else None
    items = []
    for f in files:
        rel = f.relative_to(root).with_suffix("")
        item_id = "dir-" + "-".join(rel.parts)
        speaker = rel.parts[0] if len(rel.parts) > 1 else None
        if texts is None:
            items.append(SourceItem(id=item_id, audio=str(f), split=split, speaker=speaker, labeled=False))
        else:
            items.append(
                SourceItem(
                    id=item_id, audio=str(f), split=split, speaker=speaker, text=texts.get(str(f.resolve()))
                )
            )
    return items
