"""Flickr8k Audio Captions (Harwath & Glass 2015): 40k spoken captions of the 8k Flickr8k images.

Layout: ``wav2capt.txt`` (lines ``wav_name image_name #caption_index``), ``wavs/``, the images in
``Flicker8k_Dataset/`` (the corpus's own spelling; ``Flickr8k_Dataset`` also works), optional
``wav2spk.txt`` (``wav_name speaker``), optional ``Flickr8k.token.txt`` (``image#index<TAB>caption``,
the transcripts) and optional ``Flickr_8k.{train,dev,test}Images.txt`` (the official image splits;
without them images are split by a hash of their name; with them an unlisted image is train).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ...errors import SpeechBudgetError
from . import FindContext, Source, SourceItem, option
from .paired import image_split, with_image_problems

IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")


@dataclass
class Flickr8kOptions:
    path: Optional[Path] = option(
        help="The corpus folder (wav2capt.txt, wavs/, Flicker8k_Dataset/).", argument=True
    )
    dev_fraction: float = option(0.1, help="Images for dev when there are no official split lists.")
    test_fraction: float = option(0.1, help="Images for test when there are no official split lists.")


def _find(root: Path, *names: str, folder: bool = False) -> Optional[Path]:
    for name in names:
        for p in sorted(root.rglob(name)):
            if p.is_dir() == folder:
                return p
    return None


def _two_columns(path: Optional[Path], sep: Optional[str] = None) -> Dict[str, str]:
    if path is None:
        return {}
    rows = (line.split(sep, 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r[0].strip(): r[1].strip() for r in rows if len(r) == 2}


def _official_splits(root: Path) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for split in ("train", "dev", "test"):
        listing = _find(root, f"Flickr_8k.{split}Images.txt")
        if listing is not None:
            out.update({name.strip(): split for name in listing.read_text().split() if name.strip()})
    return out


def find_items(opts: Flickr8kOptions, ctx: FindContext) -> List[SourceItem]:
    root = Path(opts.path).resolve()  # manifests hold absolute paths (image paths included)
    if not root.is_dir():
        raise SpeechBudgetError(f"Flickr8k Audio folder {root} does not exist")
    index = _find(root, "wav2capt.txt")
    images = _find(root, *IMAGE_DIRS, folder=True)
    if index is None or images is None:
        raise SpeechBudgetError(
            f"{root} is not a Flickr8k Audio layout: need wav2capt.txt, wavs/ and {IMAGE_DIRS[0]}/ (the images)"
        )
    wavs = _find(index.parent, "wavs", folder=True) or _find(root, "wavs", folder=True) or index.parent
    speakers = _two_columns(_find(root, "wav2spk.txt"))
    texts = _two_columns(_find(root, "Flickr8k.token.txt"), "\t")
    official = _official_splits(root)
    items = []
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[2].lstrip("#").isdigit():
            items.append(
                SourceItem(
                    f"flickr8k-line{n}", str(index), "train", problem="bad wav2capt.txt line", labeled=False
                )
            )
            continue
        wav, image, number = parts[0], parts[1], parts[2].lstrip("#")
        image_id = Path(image).stem
        if official:  # the official lists cover all 8k images; one they leave out is train
            split = official.get(image, "train")
        else:
            split = image_split(image_id, opts.dev_fraction, opts.test_fraction)
        text = texts.get(f"{image}#{number}")
        items.append(
            SourceItem(
                id=f"flickr8k-{Path(wav).stem}",
                audio=str(wavs / wav),
                split=split,
                text=text,
                speaker=speakers.get(wav) or speakers.get(Path(wav).stem),
                custom={"image": str(images / image), "image_id": image_id, "caption_index": int(number)},
                labeled=bool(texts),
            )
        )
    if not items:
        raise SpeechBudgetError(f"{index} lists no captions")
    return with_image_problems(items, ctx.executor)


SOURCE = Source(
    "flickr8k-audio",
    "Flickr8k Audio Captions: spoken captions paired with Flickr8k images (image-disjoint splits).",
    Flickr8kOptions,
    find_items,
    ("speechbudget prepare flickr8k-audio /corpora/flickr8k --out data/",),
)
