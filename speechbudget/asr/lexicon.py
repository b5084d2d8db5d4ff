"""A word list that constrains CTC beam search to known words.

Greedy and plain beam search may spell words nobody says ("zeo", "eig"): nothing ties tokens to
words. On FSDD's unseen speakers about half the errors were such non-words. With a lexicon the beam
only grows token prefixes that spell a sequence of its words, and a hypothesis must end on a whole
word. The default lexicon is the words of the fine-tuning transcripts, kept beside the tokenizer
(``EXP/tokenizer/lexicon.txt``, one word per line); a user may pass their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import atomic
from ..errors import SpeechBudgetError
from .tokenizer import Tokenizer

__all__ = ["LEXICON_NAME", "LexiconTrie", "lexicon_words", "read_lexicon", "write_lexicon"]

LEXICON_NAME = "lexicon.txt"


def lexicon_words(texts: Iterable[str], tokenizer: Tokenizer) -> list[str]:
    """The distinct words of ``texts`` after the tokenizer's normalisation, sorted; words with
    characters the tokenizer cannot spell are left out (the model can never output them)."""
    words = {w for t in texts for w in tokenizer.normalize(t).split()}
    return sorted(w for w in words if not tokenizer.unknown_chars(w))


def write_lexicon(folder: Path, words: Sequence[str]) -> Path:
    path = Path(folder) / LEXICON_NAME
    atomic.write_text(path, "".join(f"{w}\n" for w in words))
    return path


def read_lexicon(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise SpeechBudgetError(f"lexicon {path} does not exist: pass a text file with one word per line")
    words = [w for w in (line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if w]
    if not words:
        raise SpeechBudgetError(f"lexicon {path} has no words: write one word per line")
    if any(len(w.split()) > 1 for w in words):
        raise SpeechBudgetError(f"lexicon {path}: one word per line, without spaces inside a word")
    return words


class LexiconTrie:
    """The token spellings of the lexicon's words as a trie, walked as a set of nodes.

    A token prefix's state is the set of trie nodes it can be in: more than one when a token can both
    continue a word and start the next (a tokenizer without word-start markers). After a whole word
    the walk may restart at the root. ``allowed`` says which tokens may come next; ``complete`` says
    whether the prefix ends on a word boundary.
    """

    def __init__(self, spellings: Iterable[Sequence[int]]):
        self.children: list[dict[int, int]] = [{}]
        self.word_end: list[bool] = [False]
        for spelling in spellings:
            node = 0
            for tok in spelling:
                nxt = self.children[node].get(int(tok))
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][int(tok)] = nxt
                    self.children.append({})
                    self.word_end.append(False)
                node = nxt
            if node:
                self.word_end[node] = True
        if not self.children[0]:
            raise SpeechBudgetError("the lexicon spells no word with this tokenizer")
        self._states: dict[tuple[int, ...], frozenset[int]] = {(): frozenset({0})}
        self._allowed: dict[frozenset[int], list[int]] = {}

    @classmethod
    def from_words(cls, words: Iterable[str], tokenizer: Tokenizer) -> LexiconTrie:
        spellings = [tokenizer.encode(w) for w in words]
        return cls(s for s in spellings if s and tokenizer.unk_id not in s)

    def _next_from(self, nodes: frozenset[int]) -> frozenset[int]:
        """The nodes the next token may leave from: ``nodes``, and the root after a whole word."""
        return nodes | {0} if any(self.word_end[n] for n in nodes) else nodes

    def _step(self, nodes: frozenset[int], tok: int) -> frozenset[int]:
        return frozenset(c for n in self._next_from(nodes) if (c := self.children[n].get(tok)) is not None)

    def state(self, prefix: tuple[int, ...]) -> frozenset[int]:
        """The nodes ``prefix`` can be in (empty: it spells no sequence of words). Memoised: a beam
        asks for each prefix's parent, which it has seen one frame before."""
        if len(self._states) > 100_000:  # a long decode: start the memo afresh
            self._states = {(): frozenset({0})}
        known = len(prefix)
        while prefix[:known] not in self._states:
            known -= 1
        nodes = self._states[prefix[:known]]
        for i in range(known, len(prefix)):
            nodes = self._step(nodes, prefix[i])
            self._states[prefix[: i + 1]] = nodes
        return nodes

    def allowed(self, prefix: tuple[int, ...]) -> list[int]:
        """The tokens that may follow ``prefix`` (computed once per set of nodes: the beam asks for
        every prefix at every frame)."""
        nodes = self.state(prefix)
        found = self._allowed.get(nodes)
        if found is None:
            found = self._allowed[nodes] = sorted(
                {t for n in self._next_from(nodes) for t in self.children[n]}
            )
        return found

    def complete(self, prefix: tuple[int, ...]) -> bool:
        return not prefix or any(self.word_end[n] for n in self.state(prefix))
