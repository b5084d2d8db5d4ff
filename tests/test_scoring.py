import pytest

from speechbudget.asr.scoring import align_words, compute_wer, result_file_names, write_icefall_style
from speechbudget.errors import SpeechBudgetError

# Counted by hand:
#   u1: hello (*->big) world            1 insertion
#   u2: the cat sat on (the->a) mat     1 substitution
#   u3: (a->*) (b->*) (c->*)            3 deletions
#   u4: x y                             correct
# 13 reference words, 5 errors, 9 correct, 3 of 4 sentences wrong -> WER 38.46%.
RESULTS = [
    ("u2", "the cat sat on the mat", "the cat sat on a mat"),
    ("u1", ["hello", "world"], ["hello", "big", "world"]),
    ("u3", "a b c", ""),
    ("u4", ["x", "y"], ["x", "y"]),
]


def test_counts_match_hand_computation():
    res = compute_wer(RESULTS)
    assert (res.insertions, res.deletions, res.substitutions) == (1, 3, 1)
    assert res.errors == 5 and res.num_ref_words == 13 and res.correct == 9
    assert res.num_sentences == 4 and res.sentence_errors == 3
    assert res.wer == pytest.approx(100 * 5 / 13)


def test_wer_can_exceed_100_percent():
    res = compute_wer([("u", "a", "b c d")])  # 1 substitution + 2 insertions over 1 word
    assert (res.substitutions, res.insertions, res.deletions) == (1, 2, 0)
    assert res.wer == pytest.approx(300.0)


def test_perfect_and_empty_hypotheses():
    perfect = compute_wer([("a", "one two", "one two"), ("b", "three", "three")])
    assert perfect.wer == 0.0 and perfect.errors == 0 and perfect.ci95 == (0.0, 0.0)
    empty = compute_wer([("a", "one two", ""), ("b", "three", [])])
    assert empty.wer == 100.0 and empty.deletions == 3


def test_strings_and_lists_score_the_same():
    as_lists = [
        (u, r.split() if isinstance(r, str) else r, h.split() if isinstance(h, str) else h)
        for u, r, h in RESULTS
    ]
    a, b = compute_wer(RESULTS), compute_wer(as_lists)
    assert (a.errors, a.wer, a.ci95) == (b.errors, b.wer, b.ci95)


def test_align_words_marks_insertions_and_deletions_with_none():
    assert align_words(["a", "b", "c"], ["a", "x", "c", "d"]) == [
        ("a", "a"),
        ("b", "x"),
        ("c", "c"),
        (None, "d"),
    ]
    assert align_words(["a", "b"], ["b"]) == [("a", None), ("b", "b")]
    # "*" as a real word must not be mistaken for the epsilon symbol.
    assert align_words(["*", "a"], ["*"]) == [("*", "*"), ("a", None)]


def test_bootstrap_confidence_interval():
    results = [(f"u{i}", "a b c d e", "a b c d e" if i % 3 else "a x c d") for i in range(60)]
    res = compute_wer(results)  # 20 utterances with 2 errors each over 300 words
    assert res.wer == pytest.approx(100 * 40 / 300)
    lo, hi = res.ci95
    assert 0 < lo < res.wer < hi < 100 and hi - lo < 15
    assert compute_wer(results).ci95 == res.ci95  # seeded, so reproducible
    assert compute_wer(results, bootstrap_replications=0).ci95 is None


@pytest.mark.parametrize(
    "results, message",
    [
        ([], "no utterances"),
        ([("a", "", "x"), ("b", [], [])], "reference transcripts are empty"),
        ([("a", "x", "x"), ("a", "y", "y")], "unique"),
    ],
)
def test_bad_input_is_a_user_error(results, message):
    with pytest.raises(SpeechBudgetError, match=message):
        compute_wer(results)


def test_result_file_names():
    assert result_file_names("test-clean") == {
        "recogs": "recogs-test-clean.txt",
        "errs": "errs-test-clean.txt",
        "wer-summary": "wer-summary-test-clean.txt",
    }
    assert result_file_names("dev", "beam8")["errs"] == "errs-dev-beam8.txt"


def test_write_icefall_style_files(tmp_path):
    res = write_icefall_style(tmp_path / "out", "test-clean", RESULTS, suffix="greedy")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "errs-test-clean-greedy.txt",
        "recogs-test-clean-greedy.txt",
        "wer-summary-test-clean-greedy.txt",
    ]

    recogs = (out / "recogs-test-clean-greedy.txt").read_text().splitlines()
    assert recogs[:4] == [
        "u1:\tref=['hello', 'world']",
        "u1:\thyp=['hello', 'big', 'world']",
        "u2:\tref=['the', 'cat', 'sat', 'on', 'the', 'mat']",
        "u2:\thyp=['the', 'cat', 'sat', 'on', 'a', 'mat']",
    ]
    assert recogs[4:] == [
        "u3:\tref=['a', 'b', 'c']",
        "u3:\thyp=[]",
        "u4:\tref=['x', 'y']",
        "u4:\thyp=['x', 'y']",
    ]

    errs = (out / "errs-test-clean-greedy.txt").read_text().splitlines()
    assert errs[0] == "%WER = 38.46"
    assert (
        errs[1] == "Errors: 1 insertions, 3 deletions, 1 substitutions, over 13 reference words (9 correct)"
    )
    details = errs[errs.index("PER-UTT DETAILS: corr or (ref->hyp)") + 1 :][:4]
    assert details == [
        "u1:\thello (*->big) world",
        "u2:\tthe cat sat on (the->a) mat",
        "u3:\t(a->*) (b->*) (c->*)",
        "u4:\tx y",
    ]

    def section(title):
        start = errs.index(title) + 1
        return errs[start : errs.index("", start)] if "" in errs[start:] else errs[start:]

    assert section("SUBSTITUTIONS: count ref -> hyp") == ["1   the -> a"]
    assert section("DELETIONS: count ref") == ["1   a", "1   b", "1   c"]
    assert section("INSERTIONS: count hyp") == ["1   big"]
    per_word = section("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp")
    # "a" is deleted once (ref) and substituted-in once (hyp): 2 errors, most frequent first.
    assert per_word[0] == "a   0 2 1 1"
    assert "the   1 1 2 1" in per_word and "big   0 1 0 1" in per_word and "x   1 0 1 1" in per_word

    header, row = (out / "wer-summary-test-clean-greedy.txt").read_text().splitlines()
    assert header.split("\t")[:2] == ["settings", "WER"]
    fields = dict(zip(header.split("\t"), row.split("\t")))
    assert fields["settings"] == "greedy" and fields["WER"] == "38.46"
    assert (fields["ins"], fields["del"], fields["sub"], fields["ref_words"]) == ("1", "3", "1", "13")
    assert float(fields["CI95_lo"]) == pytest.approx(res.ci95[0], abs=0.01)


def test_substitutions_sorted_by_frequency(tmp_path):
    results = [("a", "cat cat dog", "hat hat log"), ("b", "cat", "hat")]
    write_icefall_style(tmp_path, "s", results)
    errs = (tmp_path / "errs-s.txt").read_text().splitlines()
    start = errs.index("SUBSTITUTIONS: count ref -> hyp") + 1
    assert errs[start : start + 2] == ["3   cat -> hat", "1   dog -> log"]


def test_rewriting_replaces_files_without_leftovers(tmp_path):
    write_icefall_style(tmp_path, "s", RESULTS)
    write_icefall_style(tmp_path, "s", [("u", "a b", "a b")])
    assert (tmp_path / "errs-s.txt").read_text().startswith("%WER = 0.00\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errs-s.txt", "recogs-s.txt", "wer-summary-s.txt"]
