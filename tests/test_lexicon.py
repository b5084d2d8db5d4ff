"""Lexicon-constrained CTC beam search: only word sequences of the lexicon, scored exactly."""

import pytest
import torch
from test_decoding import labelling_log_probs, random_log_probs

from speechbudget.asr.decoding import beam_search_batch, prefix_beam_search, prefix_beam_search_nbest
from speechbudget.asr.lexicon import LexiconTrie, lexicon_words, read_lexicon, write_lexicon
from speechbudget.asr.tokenizer import Tokenizer, train_tokenizer
from speechbudget.errors import SpeechBudgetError

torch.set_num_threads(1)


def spells_words(labelling, words) -> bool:
    """Brute force: can ``labelling`` be cut into a sequence of ``words`` (token tuples)?"""
    if not labelling:
        return True
    return any(labelling[: len(w)] == w and spells_words(labelling[len(w) :], words) for w in words)


# Word-start tokens 1, 2 and continuation 3, 4 (a BPE-like lexicon), and one where token 3 both ends
# a word and starts one (no word-start markers: the trie walk must keep several nodes).
LEXICONS = {
    "marked": [(1,), (1, 3), (2, 4, 3)],
    "ambiguous": [(1, 3), (3,), (3, 2), (2,)],
}


@pytest.mark.parametrize("name", sorted(LEXICONS))
@pytest.mark.parametrize("seed", range(4))
def test_exhaustive_lexicon_beam_matches_the_oracle_restricted_to_word_sequences(name, seed):
    words = LEXICONS[name]
    lp = random_log_probs(400 + seed, T=5, V=5)
    oracle = {lab: s for lab, s in labelling_log_probs(lp).items() if spells_words(lab, words)}
    trie = LexiconTrie(words)
    # every prefix of a word sequence of <= 5 tokens fits a beam of 1,000: nothing is pruned
    nbest = prefix_beam_search_nbest(lp, beam_size=1000, lexicon=trie)
    assert {tuple(lab) for lab, _ in nbest} == set(oracle)
    for lab, score in nbest:
        assert score == pytest.approx(oracle[tuple(lab)], abs=1e-9)
    best = prefix_beam_search(lp, beam_size=1000, lexicon=trie)
    assert oracle[tuple(best)] == pytest.approx(max(oracle.values()), abs=1e-12)


def test_lexicon_turns_a_non_word_into_the_nearest_word():
    # frames favour 2 then 3: the free search spells (2, 3), not a word; (2, 4, 3) is the word
    probs = [[0.1, 0.0, 0.8, 0.05, 0.05], [0.2, 0.0, 0.1, 0.3, 0.4], [0.1, 0.0, 0.0, 0.85, 0.05]]
    lp = torch.tensor(probs, dtype=torch.float64).clamp_min(1e-9).log()
    assert prefix_beam_search(lp) == [2, 3]
    assert prefix_beam_search(lp, lexicon=LexiconTrie(LEXICONS["marked"])) == [2, 4, 3]


def test_no_complete_word_in_the_beam_gives_an_empty_hypothesis():
    trie = LexiconTrie([(1, 2, 3, 4)])  # 4 tokens cannot fit in 2 frames
    lp = random_log_probs(3, T=2, V=5)
    # only the empty labelling is complete (all-blank alignment); the partial word is dropped
    assert [lab for lab, _ in prefix_beam_search_nbest(lp, lexicon=trie)] == [[]]
    assert prefix_beam_search(lp, lexicon=trie) == []
    assert beam_search_batch(lp[None], lexicon=trie) == [[]]


def test_the_trie_says_what_may_follow():
    trie = LexiconTrie(LEXICONS["ambiguous"])
    assert set(trie.allowed(())) == {1, 3, 2}
    assert trie.state((1,)) and not trie.complete((1,))
    assert set(trie.allowed((1,))) == {3}
    # (1, 3): the word (1, 3) ends; 3 alone would not follow 1 -> a new word may start
    assert trie.complete((1, 3)) and set(trie.allowed((1, 3))) == {1, 2, 3}
    # (3,) is a word and the start of (3, 2): both continuations are allowed
    assert trie.complete((3,)) and set(trie.allowed((3,))) == {1, 2, 3}
    assert not trie.state((1, 1)) and not trie.complete((1, 1))
    with pytest.raises(SpeechBudgetError):
        LexiconTrie([])


@pytest.fixture(scope="module")
def digit_tokenizer(tmp_path_factory):
    texts = ["zero one two", "three four five", "six seven eight nine", "oh two"] * 20
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, out, model_type="bpe", vocab_size=24)
    return Tokenizer(out / "tokenizer.model"), texts


def test_lexicon_from_transcripts_round_trips_and_spells_with_the_tokenizer(tmp_path, digit_tokenizer):
    tokenizer, texts = digit_tokenizer
    words = lexicon_words(texts + ["Zero, ONE!", "qx"], tokenizer)  # normalised; unknown letters out
    assert words == sorted("zero one two three four five six seven eight nine oh".split())
    assert read_lexicon(write_lexicon(tmp_path, words)) == words
    trie = LexiconTrie.from_words(words, tokenizer)
    for w in words:
        assert trie.complete(tuple(tokenizer.encode(w)))
        assert trie.complete(tuple(tokenizer.encode(f"{w} {w} six")))


def test_bad_lexicon_files_get_one_line_errors(tmp_path):
    for text, msg in (("", "no words"), ("zero one\n", "one word per line")):
        (tmp_path / "lex.txt").write_text(text)
        with pytest.raises(SpeechBudgetError, match=msg):
            read_lexicon(tmp_path / "lex.txt")
    with pytest.raises(SpeechBudgetError, match="does not exist"):
        read_lexicon(tmp_path / "missing.txt")


def test_every_word_sequence_scores_at_most_the_free_labelling_total():
    # the constrained best is never more probable than the free best labelling (same frames)
    for seed in range(5):
        lp = random_log_probs(500 + seed, T=6, V=5, sharpness=2.0)
        oracle = labelling_log_probs(lp)
        free = max(oracle.values())
        lab = prefix_beam_search(lp, beam_size=64, lexicon=LexiconTrie(LEXICONS["marked"]))
        assert oracle[tuple(lab)] <= free + 1e-12
        assert spells_words(tuple(lab), LEXICONS["marked"])
