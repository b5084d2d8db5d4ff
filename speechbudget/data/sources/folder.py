"""Any folder of audio, with an optional ``path<TAB>text`` transcript file."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ...errors import SpeechBudgetError
from ...userfiles import read_user_text
from . import FindContext, Source, SourceItem, option, path_id, speaker_splits

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".sph"}


def read_transcripts(path: Path, root: Path) -> Dict[str, str]:
    """``path<TAB>text`` lines; paths relative to the audio folder or absolute."""
    out: Dict[str, str] = {}
    for line in read_user_text(path, "transcripts file").splitlines():
        if not line.strip():
            continue
        if "\t" not in line:
            out[str((root / line.strip()).resolve())] = ""  # a path with no text: rejected later
            continue
        p, text = line.split("\t", 1)
        full = Path(p) if Path(p).is_absolute() else root / p
        out[str(full.resolve())] = text.strip()
    return out


def read_label_csv(path: Path, root: Path) -> Dict[str, List[str]]:
    """``path,labels`` rows (an optional header row ``path,labels``), several labels separated by ";";
    paths relative to the audio folder or absolute -> {resolved path: [labels]}."""
    text = read_user_text(path, "labels file")
    out: Dict[str, List[str]] = {}
    for i, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
        if not row or not row[0].strip() or (i == 0 and [c.strip() for c in row[:2]] == ["path", "labels"]):
            continue
        names = [x.strip() for x in (row[1] if len(row) > 1 else "").split(";") if x.strip()]
        full = Path(row[0].strip()) if Path(row[0].strip()).is_absolute() else root / row[0].strip()
        out[str(full.resolve())] = names
    return out


def _folder_label(rel: Path) -> Tuple[Optional[List[str]], Optional[str]]:
    """``labels: folders``: the first folder below the root is the class."""
    if len(rel.parts) < 2:
        return None, "not in a class folder (labels: folders)"
    return [rel.parts[0]], None


@dataclass
class FolderOptions:
    path: Optional[Path] = option(help="The audio folder (searched recursively).", argument=True)
    transcripts: Optional[Path] = option(help="A path<TAB>text file; none = unlabeled audio.")
    split: str = option("train", help="Split name for the folder's audio (the speakers not held out below).")
    test_speakers: List[str] = option(
        help="Comma-separated test speakers (a speaker = the first folder below PATH).", factory=list
    )
    dev_speakers: List[str] = option(help="Comma-separated dev speakers.", factory=list)
    test_fraction: float = option(0.0, help="Share of speakers held out for test (by a hash of the name).")
    dev_fraction: float = option(0.0, help="Share of speakers held out for dev (by a hash of the name).")
    labels: Optional[str] = option(
        help="Class labels: 'folders' (the first folder is the class) or a CSV path,labels "
        "(several labels separated by ';' = multi-label)."
    )


def _held_out(opts: FolderOptions) -> bool:
    """Whether any speakers are held out, by name or by share."""
    return bool(opts.test_speakers or opts.dev_speakers) or opts.dev_fraction > 0 or opts.test_fraction > 0


def _speaker_split(opts: FolderOptions) -> Callable[[Optional[str]], str]:
    """speaker -> split: held-out speakers by name or hashed share, everyone else ``opts.split``."""
    speaker_splits.check_named(opts.test_speakers, opts.dev_speakers)
    speaker_splits.check_fractions(opts.dev_fraction, opts.test_fraction)
    held_out = _held_out(opts)
    if held_out and opts.labels == "folders":
        raise SpeechBudgetError(
            "labels: folders makes the first folder the class, not the speaker: hold out test audio with "
            "split (one prepare per folder) instead of test_speakers/dev_speakers/test_fraction/dev_fraction"
        )

    def split_of(speaker: Optional[str]) -> str:
        if speaker is None or not held_out:
            return opts.split
        return speaker_splits.split_of(
            speaker, opts.test_speakers, opts.dev_speakers, opts.dev_fraction, opts.test_fraction, opts.split
        )

    return split_of


def find_items(opts: FolderOptions, ctx: FindContext) -> List[SourceItem]:
    root, transcripts = Path(opts.path), opts.transcripts
    if not root.is_dir():
        raise SpeechBudgetError(f"audio folder {root} does not exist")
    split_of = _speaker_split(opts)
    # a link to a missing file is kept, to be reported as rejected, not dropped without a word
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES and (p.is_file() or (p.is_symlink() and not p.exists()))
    )
    if not files:
        raise SpeechBudgetError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    texts = read_transcripts(transcripts, root) if transcripts else None
    by_folder = opts.labels == "folders"
    table = read_label_csv(Path(opts.labels), root) if opts.labels and not by_folder else None
    items = []
    for f in files:
        rel = f.relative_to(root)
        item_id = path_id("dir", rel)
        speaker = rel.parts[0] if len(rel.parts) > 1 and not by_folder else None
        split = split_of(speaker)
        labels, problem = None, None
        if by_folder:
            labels, problem = _folder_label(rel)
        elif table is not None:
            labels = table.pop(str(f.resolve()), None)
            problem = "no row in the labels CSV" if labels is None else None
        if not f.exists():
            problem = "a link to a file that does not exist"
        if texts is None:
            items.append(
                SourceItem(
                    id=item_id,
                    audio=str(f),
                    split=split,
                    speaker=speaker,
                    labeled=False,
                    labels=labels,
                    problem=problem,
                )
            )
        else:
            items.append(
                SourceItem(
                    id=item_id,
                    audio=str(f),
                    split=split,
                    speaker=speaker,
                    text=texts.get(str(f.resolve())),
                    labels=labels,
                    problem=problem,
                )
            )
    speakers = {item.speaker for item in items if item.speaker is not None}
    named = list(opts.test_speakers) + list(opts.dev_speakers)
    if _held_out(opts) and not speakers:
        raise SpeechBudgetError(
            f"no speaker folders under {root}: speaker splits read the speaker from the first folder "
            "(PATH/<speaker>/...); put each speaker's files in a folder, or prepare each split with split"
        )
    speaker_splits.check_found(named, speakers, "folder")
    speaker_splits.check_shares(set(speakers) - set(named), opts.dev_fraction, opts.test_fraction, opts.split)
    for missing in sorted(table or {}):  # rows naming no audio file here: reported, not dropped
        items.append(
            SourceItem(
                id=path_id("dir-missing", Path(missing)),  # unique even for two missing files of one name
                audio=missing,
                split=opts.split,
                labeled=False,
                problem="in the labels CSV but no such audio file",
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
        "speechbudget prepare dir /audio --transcripts text.tsv --test-speakers anna,ben --out data/"
        "   # /audio/<speaker>/*.wav",
        "speechbudget prepare dir /audio/by-class --labels folders --out data/ --name sounds",
        "speechbudget prepare dir /audio --labels tags.csv --out data/   # path,labels (a;b = multi-label)",
    ),
)
