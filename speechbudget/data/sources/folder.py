"""Any folder of audio, with an optional ``path<TAB>text`` transcript file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option, path_id

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


@dataclass
class FolderOptions:
    path: Optional[Path] = option(help="The audio folder (searched recursively).", argument=True)
    transcripts: Optional[Path] = option(help="A path<TAB>text file; none = unlabeled audio.")
    split: str = option("train", help="Split name for the folder's audio.")


def find_items(opts: FolderOptions, ctx: FindContext) -> List[SourceItem]:
    root, transcripts, split = Path(opts.path), opts.transcripts, opts.split
    if not root.is_dir():
        raise SpeechBudgetError(f"audio folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise SpeechBudgetError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    texts = read_transcripts(transcripts, root) if transcripts else None
    items = []
    for f in files:
        rel = f.relative_to(root)
        item_id = path_id("dir", rel)
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


SOURCE = Source(
    "dir",
    "Any folder of audio (wav, flac, mp3, ogg, opus, sph), unlabeled or with a path<TAB>text file.",
    FolderOptions,
    find_items,
    (
        "speechbudget prepare dir /audio/unlabeled --out data/ --name mycorpus",
        "speechbudget prepare dir /audio --transcripts text.tsv --num-jobs 8 --out data/",
    ),
)
