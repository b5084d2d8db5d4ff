import csv
import json
import logging
from pathlib import Path

import pytest

from speechbudget.asr.text import normalize_text, number_to_words, ordinal_to_words
from speechbudget.asr.tokenizer import BLANK_ID, UNK_ID, Tokenizer, train_tokenizer
from speechbudget.errors import SpeechBudgetError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CV_TSV = DATA / "commonvoice-mini" / "validated.tsv"


def cv_sentences() -> list[str]:
    assert CV_TSV.is_file(), f"real test data missing: {CV_TSV} (../shared/data beside the repo)"
    with open(CV_TSV, newline="", encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


# ----------------------------------------------------------------------------- normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello, World!", "hello world"),
        ("I don't know.", "i don't know"),
        ("\u201cDon\u2019t\u201d \u2014 she said", "don't she said"),
        ("'Tis the students' books", "tis the students books"),
        ('"""I\'m a woman of the desert,"" she said."', "i'm a woman of the desert she said"),
        ("He lives at the Al-Fayoum oasis", "he lives at the al fayoum oasis"),
        ("a pull-up", "a pull up"),
        ("  lots \t of\n space  ", "lots of space"),
        ("7", "seven"),
        ("21", "twenty one"),
        ("I have 7 apples", "i have seven apples"),
        ("1,000,000 people", "one million people"),
        ("in 1999", "in nineteen ninety nine"),
        ("in 1905", "in nineteen oh five"),
        ("in 1900", "in nineteen hundred"),
        ("in 2000", "in two thousand"),
        ("in 2024", "in twenty twenty four"),
        ("agent 007", "agent zero zero seven"),
        ("3.14", "three point one four"),
        ("the 21st century", "the twenty first century"),
        ("3rd and 12th and 40th", "third and twelfth and fortieth"),
        ("50% & more", "fifty percent and more"),
        ("$5.50", "five dollars fifty cents"),
        ("$1", "one dollar"),
        ("mp3", "mp three"),
        ("zero\u200bwidth", "zerowidth"),
        ("caf\u00e9", "caf\u00e9"),
        ("cafe\u0301", "caf\u00e9"),  # decomposed accent composes under NFKC
        ("...", ""),
        ("", ""),
    ],
)
def test_normalize_text_examples(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_text_can_keep_case():
    assert normalize_text("Hello, World 7!", lowercase=False) == "Hello World seven"


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (1000, "one thousand"),
        (1001, "one thousand one"),
        (
            123_456_789,
            "one hundred twenty three million four hundred fifty six thousand seven hundred eighty nine",
        ),
        (10**18, " ".join(["one"] + ["zero"] * 18)),  # beyond quadrillions: digit by digit
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


@pytest.mark.parametrize(
    "n, words",
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (5, "fifth"),
        (8, "eighth"),
        (9, "ninth"),
        (11, "eleventh"),
        (12, "twelfth"),
        (20, "twentieth"),
        (23, "twenty third"),
        (100, "one hundredth"),
    ],
)
def test_ordinal_to_words(n, words):
    assert ordinal_to_words(n) == words


def test_normalize_common_voice_is_clean_and_idempotent():
    for sentence in cv_sentences():
        norm = normalize_text(sentence)
        assert norm, sentence
        assert all(c.isalpha() or c in "' " for c in norm), (sentence, norm)
        assert norm == norm.lower() and "  " not in norm and norm == norm.strip()
        assert normalize_text(norm) == norm


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    train_tokenizer(cv_sentences(), out, model_type="bpe", vocab_size=100)
    return out


def test_bpe_tokenizer_round_trips_common_voice(bpe_dir):
    tok = Tokenizer(bpe_dir / "tokenizer.model")
    assert tok.vocab_size == 100
    assert tok.blank_id == BLANK_ID == 0 and tok.unk_id == UNK_ID == 1
    assert tok.id_to_piece(0) == "<blk>"
    for sentence in cv_sentences():
        ids = tok.encode(sentence)
        assert ids and all(0 < i < tok.vocab_size for i in ids)
        assert UNK_ID not in ids
        assert tok.decode(ids) == normalize_text(sentence)
    assert tok.encode_batch(["Hello there", "seven"]) == [tok.encode("hello there"), tok.encode("7")]


def test_tokenizer_files_and_settings(bpe_dir):
    assert sorted(p.name for p in bpe_dir.iterdir()) == ["tokenizer.json", "tokenizer.model"]
    settings = json.loads((bpe_dir / "tokenizer.json").read_text())
    assert settings["model_type"] == "bpe"
    assert settings["vocab_size"] == settings["requested_vocab_size"] == 100
    assert settings["blank_id"] == 0 and settings["note"] == ""
    assert Tokenizer(bpe_dir).vocab_size == 100  # a folder works as well as the model file


def test_decode_drops_blanks(bpe_dir):
    tok = Tokenizer(bpe_dir)
    ids = tok.encode("the boy")
    with_blanks = [0] + [x for i in ids for x in (i, 0)]
    assert tok.decode(with_blanks) == "the boy"
    assert tok.decode([]) == ""


def test_unknown_chars(bpe_dir):
    tok = Tokenizer(bpe_dir)
    assert tok.unknown_chars("The boy, 7 times!") == set()
    assert tok.unknown_chars("se\u00f1or \u00fcber") == {"\u00f1", "\u00fc"}
    assert UNK_ID in tok.encode("se\u00f1or")


def test_too_large_vocab_is_clamped_with_a_note(tmp_path, caplog):
    texts = ["hello world", "the cat sat on the mat", "don't stop"]
    with caplog.at_level(logging.WARNING, logger="speechbudget.asr.tokenizer"):
        path = train_tokenizer(texts, tmp_path, model_type="unigram", vocab_size=5000)
    settings = json.loads((tmp_path / "tokenizer.json").read_text())
    tok = Tokenizer(path)
    assert tok.vocab_size == settings["vocab_size"] < 5000
    assert "adjusted" in settings["note"] and "adjusted" in caplog.text
    assert tok.decode(tok.encode("The cat")) == "the cat"


def test_too_small_vocab_is_raised_to_spell_every_char(tmp_path):
    texts = ["abc abc", "cab"]  # 3 chars + '▁' + <blk> + <unk> = 6
    tok = Tokenizer(train_tokenizer(texts, tmp_path, model_type="bpe", vocab_size=2))
    assert tok.vocab_size == 6
    assert tok.unknown_chars("abc cba") == set()


def test_char_tokenizer_has_one_id_per_char(tmp_path):
    texts = ["hello world", "don't"]
    tok = Tokenizer(train_tokenizer(texts, tmp_path, model_type="char", vocab_size=500))
    chars = set("helloworlddon't") - {" "}
    assert tok.vocab_size == len(chars) + 3
    assert len(tok.encode("hello")) == len("hello") + 1  # word-start marker + one id per char
    assert tok.decode(tok.encode("Don't, world!")) == "don't world"


def test_tokenizer_keeps_case_setting(tmp_path):
    tok = Tokenizer(train_tokenizer(["Hello World", "hello world"], tmp_path, "char", 10, lowercase=False))
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_retraining_replaces_the_model(tmp_path):
    train_tokenizer(["aaa bbb"], tmp_path, "char", 10)
    tok = Tokenizer(train_tokenizer(["xyz"], tmp_path, "char", 10))
    assert tok.unknown_chars("a") == {"a"} and tok.unknown_chars("xyz") == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer.model"]


@pytest.mark.parametrize(
    "texts, kwargs, message",
    [
        ([], {}, "no text"),
        (["!!!", "  "], {}, "no text"),
        (["hello"], {"model_type": "word"}, "model_type"),
        (["hello"], {"vocab_size": 0}, "vocab_size"),
    ],
)
def test_train_tokenizer_rejects_bad_input(tmp_path, texts, kwargs, message):
    with pytest.raises(SpeechBudgetError, match=message):
        train_tokenizer(texts, tmp_path, **kwargs)


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(SpeechBudgetError, match="not found"):
        Tokenizer(tmp_path / "nope.model")


# ---------------------------------------------------------------- phones (ctc.tokenizer: phone)

DIGITS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def phone_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "phone"
    train_tokenizer([f"{a} {b}" for a in DIGITS for b in DIGITS], out, model_type="phone")
    return out


def test_phone_tokenizer_spells_words_by_their_espeak_phones(phone_dir):
    from speechbudget.asr.phones import pronounce

    tok = Tokenizer(phone_dir)
    prons = pronounce(DIGITS)
    assert prons["three"] == ("θ", "ɹ", "iː") and prons["eight"] == ("eɪ", "t")  # no stress marks
    for w in DIGITS:
        assert [tok.id_to_piece(i) for i in tok.encode(w)] == ["▁", *prons[w]]
    # one id per sound, whatever the letters: the /t/ of two and eight is one target, the 'h' letter
    # of three and eight is none
    assert tok.encode("two")[1] == tok.encode("eight")[-1]
    assert set(tok.encode("three")[1:]).isdisjoint(tok.encode("eight")[1:])
    inventory = {p for ph in prons.values() for p in ph}
    assert tok.vocab_size == len(inventory) + 3  # the phones, '▁', <blk>, <unk>
    settings = json.loads((phone_dir / "tokenizer.json").read_text())
    assert settings["model_type"] == "phone" and settings["g2p_voice"] == "en-us"
    assert settings["pronunciations"]["three"] == "θ ɹ iː" and sorted(settings["phones"]) == sorted(inventory)


def test_phone_tokenizer_round_trips_and_decodes_to_words(phone_dir, monkeypatch):
    tok = Tokenizer(phone_dir)
    ids = tok.encode("Nine, 3 two!")
    assert UNK_ID not in ids and tok.decode([0] + [x for i in ids for x in (i, 0)]) == "nine three two"
    assert tok.encode_batch(["seven", "8"]) == [tok.encode("seven"), tok.encode("eight")]
    assert tok.unknown_chars("one two") == set()

    # the training words need no espeak-ng once trained: their phones are in tokenizer.json
    def no_espeak(*args, **kwargs):
        raise AssertionError("espeak-ng called for a known word")

    monkeypatch.setattr("speechbudget.asr.phones.transcribe", no_espeak)
    assert Tokenizer(phone_dir).decode(Tokenizer(phone_dir).encode("zero four")) == "zero four"


def test_phone_tokenizer_meets_new_words(phone_dir):
    tok = Tokenizer(phone_dir)
    # "tone" is spelled by digit phones (t, oʊ, n): encodable, and shown in IPA since no word has it
    assert tok.unknown_chars("tone") == set() and UNK_ID not in tok.encode("tone")
    assert tok.decode(tok.encode("tone")) == "toʊn"
    # "hello" has /h/ and /l/, which no digit has: <unk>, and named as unknown
    assert tok.unknown_chars("hello") == {"h", "l"} and UNK_ID in tok.encode("hello")


def test_phone_tokenizer_with_a_voice_espeak_lacks_is_one_line(tmp_path):
    with pytest.raises(SpeechBudgetError, match="voice 'xx-none'.*espeak-ng --voices"):
        train_tokenizer(["one two"], tmp_path / "t", model_type="phone", g2p_voice="xx-none")
    assert not (tmp_path / "t").exists()
