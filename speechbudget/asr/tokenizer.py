"""SentencePiece tokenizer for CTC targets.

Id layout (chosen so no id shifting is ever needed): id 0 is the CTC blank, stored in the model as
sentencepiece's pad piece ``<blk>`` (a control piece: never produced by ``encode`` and dropped by
``decode``); id 1 is ``<unk>``; there is no BOS/EOS. The model's ids are therefore the CTC output
ids as they are, and ``vocab_size`` is the CTC output dimension.

Every text goes through :func:`speechbudget.asr.text.normalize_text` first, with the same settings
at training and at encoding time (they are saved in ``tokenizer.json``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from speechbudget import atomic
from speechbudget.asr.text import normalize_text
from speechbudget.errors import SpeechBudgetError

__all__ = ["BLANK_ID", "UNK_ID", "MODEL_TYPES", "Tokenizer", "train_tokenizer"]

log = logging.getLogger(__name__)

BLANK_ID = 0
UNK_ID = 1
MODEL_TYPES = ("bpe", "unigram", "char")
MODEL_NAME = "tokenizer.model"
SETTINGS_NAME = "tokenizer.json"
_NUM_META_PIECES = 2  # <blk>, <unk>


def _distinct_chars(sentences: Sequence[str]) -> set[str]:
    return set("".join(sentences)) - {" "}


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
) -> Path:
    """Train a sentencepiece model on normalized ``texts``; returns the path of tokenizer.model.

    ``vocab_size`` counts the blank and <unk>. It is adjusted instead of failing when the corpus
    cannot support it: raised to the number of distinct characters (+3) so every character stays
    spellable, capped by what a tiny corpus yields, and for ``char`` models it is always the
    character count. Any adjustment is logged and recorded as ``note`` in tokenizer.json.
    """
    if model_type not in MODEL_TYPES:
        raise SpeechBudgetError(f"unknown tokenizer model_type {model_type!r}; use one of {MODEL_TYPES}")
    if vocab_size < 1:
        raise SpeechBudgetError(f"tokenizer vocab_size must be positive, got {vocab_size}")
    sentences = [t for t in (normalize_text(x, lowercase=lowercase) for x in texts) if t]
    if not sentences:
        raise SpeechBudgetError(
            "no text to train the tokenizer on (all transcripts are empty after normalization)"
        )

    atomic.check_writable(out_dir, "tokenizer output folder")
    num_chars = len(_distinct_chars(sentences))
    min_size = num_chars + 1 + _NUM_META_PIECES  # every char, the word-start '▁', <blk>, <unk>
    train_size = min_size if model_type == "char" else max(vocab_size, min_size)
    proto = _train_model_bytes(sentences, model_type, train_size, character_coverage, num_threads)
    actual = spm.SentencePieceProcessor(model_proto=proto).vocab_size()
    note = ""
    if actual != vocab_size:
        note = (
            f"vocab_size {vocab_size} was adjusted to {actual}: the {len(sentences)}-sentence "
            f"corpus has {num_chars} distinct characters"
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

    @property
    def vocab_size(self) -> int:
        """Number of ids including the blank: the CTC output dimension."""
        return self.sp.vocab_size()

    def normalize(self, text: str) -> str:
        return normalize_text(text, lowercase=self.lowercase)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(self.normalize(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode([self.normalize(t) for t in texts])

    def decode(self, ids: Iterable[int]) -> str:
        """Blanks are dropped, so raw CTC output with blanks removed decodes as expected."""
        return self.sp.decode([int(i) for i in ids if int(i) != BLANK_ID])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of normalized ``text`` that would be encoded as <unk>."""
        chars = set(self.normalize(text)) - {" "}
        return {c for c in chars if UNK_ID in self.sp.encode(c)}
