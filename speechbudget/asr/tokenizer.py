"""SentencePiece tokenizer for CTC targets.

Id layout (chosen so no id shifting is ever needed): id 0 is the CTC blank, stored in the model as
sentencepiece's pad piece ``<blk>`` (a control piece: never produced by ``encode`` and dropped by
``decode``); id 1 is ``<unk>``; there is no BOS/EOS. The model's ids are therefore the CTC output
ids as they are, and ``vocab_size`` is the CTC output dimension.

Every text goes through :func:`speechbudget.asr.text.normalize_text` first, with the same settings
at training and at encoding time (they are saved in ``tokenizer.json``).

``phone`` models spell words by their sounds (:mod:`speechbudget.asr.phones`): each phone is written as
one private-use character and sentencepiece learns a ``char`` model over them; the pronunciations and
the phone inventory are kept in ``tokenizer.json``, so encoding the training words needs no espeak-ng
and decoding maps each spelled word back to its word.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from speechbudget import atomic
from speechbudget.asr.phones import DEFAULT_VOICE, pronounce
from speechbudget.asr.text import normalize_text
from speechbudget.config import TOKENIZER_TYPES
from speechbudget.errors import SpeechBudgetError

__all__ = ["BLANK_ID", "UNK_ID", "Tokenizer", "train_tokenizer"]

log = logging.getLogger(__name__)

BLANK_ID = 0
UNK_ID = 1
PHONE_BASE = 0xE000  # phone i is written chr(PHONE_BASE + i): private use, never in a transcript
MODEL_NAME = "tokenizer.model"
SETTINGS_NAME = "tokenizer.json"
_NUM_META_PIECES = 2  # <blk>, <unk>


def _distinct_chars(sentences: Sequence[str]) -> set[str]:
    return set("".join(sentences)) - {" "}


def _pronunciations(sentences: Sequence[str], voice: str) -> dict:
    """What a ``phone`` tokenizer keeps in tokenizer.json: the voice, the phone inventory (its order
    gives each phone's character) and every training word's phones."""
    words = sorted({w for t in sentences for w in t.split()})
    prons = {w: ph for w, ph in pronounce(words, voice).items() if ph}
    if not prons:
        raise SpeechBudgetError(
            f"espeak-ng ({voice}) pronounced none of the transcripts' words: no phones to learn"
        )
    inventory = sorted({p for ph in prons.values() for p in ph})
    return {
        "g2p_voice": voice,
        "phones": inventory,
        "pronunciations": {w: " ".join(ph) for w, ph in prons.items()},
    }


class _PhoneSpelling:
    """Words <-> strings of phone characters, from a ``phone`` tokenizer's settings. A word outside
    the training words is pronounced by espeak-ng when first met; a phone outside the inventory
    becomes a character sentencepiece encodes as ``<unk>``."""

    UNKNOWN = "\ufffd"

    def __init__(self, settings: dict):
        self.voice = settings["g2p_voice"]
        self.char = {p: chr(PHONE_BASE + i) for i, p in enumerate(settings["phones"])}
        self.phone = {c: p for p, c in self.char.items()}
        self.prons = {w: tuple(ph.split()) for w, ph in settings["pronunciations"].items()}
        self.word = {}
        for w in sorted(self.prons):  # homophones decode as the first in sorted order
            self.word.setdefault(self._chars(self.prons[w]), w)

    def _chars(self, phones: Sequence[str]) -> str:
        return "".join(self.char.get(p, self.UNKNOWN) for p in phones)

    def _phones_of(self, words: Sequence[str]) -> list[tuple[str, ...]]:
        new = [w for w in words if w not in self.prons]
        if new:
            self.prons.update(pronounce(new, self.voice))
        return [self.prons[w] or (self.UNKNOWN,) for w in words]

    def spell(self, normalized: str) -> str:
        return " ".join(self._chars(ph) for ph in self._phones_of(normalized.split()))

    def words(self, spelled: str) -> str:
        """A word spelled by phones the training words never had stays in IPA, so it shows as a miss."""
        return " ".join(
            self.word.get(w) or "".join(self.phone.get(c, "?") for c in w) for w in spelled.split()
        )

    def unknown(self, normalized: str) -> set[str]:
        ph = {p for phones in self._phones_of(normalized.split()) for p in phones}
        return {p for p in ph if p not in self.char}

    def piece(self, piece: str) -> str:
        return "".join(self.phone.get(c, c) for c in piece)


def _train_model_bytes(
    sentences: Sequence[str], model_type: str, vocab_size: int, character_coverage: float, num_threads: int
) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a tiny corpus gives fewer pieces instead of an error
            character_coverage=character_coverage,
            pad_id=BLANK_ID,
            pad_piece="<blk>",
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            normalization_rule_name="identity",  # normalize_text already did it
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise SpeechBudgetError(
            f"sentencepiece could not train a {model_type} tokenizer with vocab_size={vocab_size}: "
            f"{str(e).splitlines()[0]}; try another vocab_size or model_type"
        ) from e
    return model.getvalue()


def train_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    model_type: str = "bpe",
    vocab_size: int = 500,
    lowercase: bool = True,
    character_coverage: float = 1.0,
    num_threads: int = 1,
    g2p_voice: str = DEFAULT_VOICE,
) -> Path:
    """Train a sentencepiece model on normalized ``texts``; returns the path of tokenizer.model.

    ``vocab_size`` counts the blank and <unk>. It is adjusted instead of failing when the corpus
    cannot support it: raised to the number of distinct characters (+3) so every character stays
    spellable, capped by what a tiny corpus yields, and for ``char`` models it is always the
    character count. Any adjustment is logged and recorded as ``note`` in tokenizer.json.
    ``phone`` models are ``char`` models over the words' phones, pronounced by espeak-ng's ``g2p_voice``.
    """
    if model_type not in TOKENIZER_TYPES:
        raise SpeechBudgetError(f"unknown tokenizer model_type {model_type!r}; use one of {TOKENIZER_TYPES}")
    if vocab_size < 1:
        raise SpeechBudgetError(f"tokenizer vocab_size must be positive, got {vocab_size}")
    sentences = [t for t in (normalize_text(x, lowercase=lowercase) for x in texts) if t]
    if not sentences:
        raise SpeechBudgetError(
            "no text to train the tokenizer on (all transcripts are empty after normalization)"
        )

    phone_settings = {}
    if model_type == "phone":
        phone_settings = _pronunciations(sentences, g2p_voice)
        spelled = _PhoneSpelling(phone_settings)
        sentences = [spelled.spell(t) for t in sentences]
    atomic.check_writable(out_dir, "tokenizer output folder")
    num_chars = len(_distinct_chars(sentences))
    min_size = num_chars + 1 + _NUM_META_PIECES  # every char, the word-start '▁', <blk>, <unk>
    sp_type = "char" if model_type == "phone" else model_type
    train_size = min_size if sp_type == "char" else max(vocab_size, min_size)
    proto = _train_model_bytes(sentences, sp_type, train_size, character_coverage, num_threads)
    actual = spm.SentencePieceProcessor(model_proto=proto).vocab_size()
    note = ""
    if actual != vocab_size:
        note = (
            f"vocab_size {vocab_size} was adjusted to {actual}: the {len(sentences)}-sentence "
            f"corpus has {num_chars} distinct {'phones' if model_type == 'phone' else 'characters'}"
        )
        log.warning("tokenizer: %s", note)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_NAME
    atomic.write_bytes(model_path, proto)
    settings = {
        "model_type": model_type,
        "requested_vocab_size": vocab_size,
        "vocab_size": actual,
        "blank_id": BLANK_ID,
        "unk_id": UNK_ID,
        "lowercase": lowercase,
        "character_coverage": character_coverage,
        "num_sentences": len(sentences),
        "note": note,
        **phone_settings,
    }
    atomic.write_bytes(out_dir / SETTINGS_NAME, (json.dumps(settings, indent=2) + "\n").encode())
    return model_path


class Tokenizer:
    """Text <-> CTC target ids. ``path`` is tokenizer.model or the folder that holds it."""

    blank_id = BLANK_ID
    unk_id = UNK_ID

    def __init__(self, path: Path | str):
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_NAME
        if not path.is_file():
            raise SpeechBudgetError(f"tokenizer model not found at {path}; train it first (prepare stage)")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        if self.sp.id_to_piece(BLANK_ID) != "<blk>" or self.sp.unk_id() != UNK_ID:
            raise SpeechBudgetError(
                f"{path} was not trained by speechbudget (id 0 must be the CTC blank); retrain it"
            )
        settings_path = path.with_name(SETTINGS_NAME)
        self.settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        self.lowercase = bool(self.settings.get("lowercase", True))
        self.phones = _PhoneSpelling(self.settings) if self.settings.get("model_type") == "phone" else None

    def _units(self, text: str) -> str:
        """The normalized text as sentencepiece sees it: the words themselves, or their phones."""
        text = self.normalize(text)
        return self.phones.spell(text) if self.phones else text

    @property
    def vocab_size(self) -> int:
        """Number of ids including the blank: the CTC output dimension."""
        return self.sp.vocab_size()

    def normalize(self, text: str) -> str:
        return normalize_text(text, lowercase=self.lowercase)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(self._units(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode([self._units(t) for t in texts])

    def decode(self, ids: Iterable[int]) -> str:
        """Blanks are dropped, so raw CTC output with blanks removed decodes as expected."""
        text = self.sp.decode([int(i) for i in ids if int(i) != BLANK_ID])
        return self.phones.words(text) if self.phones else text

    def id_to_piece(self, i: int) -> str:
        piece = self.sp.id_to_piece(int(i))
        return self.phones.piece(piece) if self.phones else piece

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of normalized ``text`` that would be encoded as <unk> (phones, for a phone model)."""
        if self.phones:
            return self.phones.unknown(self.normalize(text))
        chars = set(self.normalize(text)) - {" "}
        return {c for c in chars if UNK_ID in self.sp.encode(c)}
