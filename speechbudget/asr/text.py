"""Transcript normalization.

One normalizer is used everywhere text meets the model: when the tokenizer is trained, when
targets are encoded, and when references and hypotheses are scored. If these disagreed, WER would
count formatting differences ("Don't" vs "don't", "7" vs "seven") as recognition errors.

What it does, in order: Unicode NFKC, quote/dash/apostrophe variants mapped to ASCII, lowercase
(optional), numbers spelled out as words, "%" and "&" spelled out, punctuation and symbols removed
(apostrophes inside words are kept: "don't"), whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text", "number_to_words", "ordinal_to_words"]

# Typographic variants that should mean the same as their ASCII form.
_CHAR_MAP = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "\u02bc": "'",
        "\u2032": "'",
        "`": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
    }
)

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion"]
_MAX_SPELLED = 10 ** (3 * len(_SCALES)) - 1  # longer digit strings are read digit by digit

_IRREGULAR_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}

_NUMBER_RE = re.compile(
    r"(?P<cur>[$£€])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
    r"(?:\.(?P<frac>\d+))?"
    r"(?:(?P<ord>st|nd|rd|th)(?![^\W\d_]))?",
    re.IGNORECASE,
)
# An apostrophe is kept only with a word character on both sides ("don't", "o'clock").
_LOOSE_APOSTROPHE_RE = re.compile(r"(?<!\w)'|'(?!\w)")
_SPACE_RE = re.compile(r"\s+")


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return words
    if n < 20:
        return words + [_ONES[n]]
    words.append(_TENS[n // 10])
    if n % 10:
        words.append(_ONES[n % 10])
    return words


def number_to_words(n: int) -> str:
    """Cardinal reading of a non-negative integer: 21 -> "twenty one" (no hyphens, no "and")."""
    if n < 0:
        raise ValueError(f"number_to_words expects n >= 0, got {n}")
    if n > _MAX_SPELLED:
        return " ".join(_ONES[int(d)] for d in str(n))
    if n == 0:
        return "zero"
    words: list[str] = []
    for scale in reversed(range(len(_SCALES))):
        group = (n // 1000**scale) % 1000
        if group:
            words += _below_thousand(group) + ([_SCALES[scale]] if scale else [])
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """Ordinal reading: 1 -> "first", 21 -> "twenty first", 40 -> "fortieth"."""
    *head, last = number_to_words(n).split()
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(head + [last])


def _year_to_words(n: int) -> str | None:
    """Years are read in pairs ("nineteen ninety nine"); None when n is not read as a year."""
    if not (1100 <= n <= 1999 or 2010 <= n <= 2099):
        return None
    hi, lo = divmod(n, 100)
    if lo == 0:
        return f"{number_to_words(hi)} hundred"
    if lo < 10:
        return f"{number_to_words(hi)} oh {_ONES[lo]}"
    return f"{number_to_words(hi)} {number_to_words(lo)}"


def _digits_to_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _integer_to_words(digits: str) -> str:
    """Leading zeros ("007") are read digit by digit, as people say them."""
    if len(digits) > 1 and digits[0] == "0":
        return _digits_to_words(digits)
    n = int(digits)
    if len(digits) == 4:
        year = _year_to_words(n)
        if year is not None:
            return year
    return number_to_words(n)


def _currency_to_words(symbol: str, digits: str, frac: str | None) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    n = int(digits)
    words = f"{number_to_words(n)} {one if n == 1 else many}"
    if frac is not None:
        cents = int(frac[:2].ljust(2, "0"))
        if cents:
            words += f" {number_to_words(cents)} {sub_one if cents == 1 else sub_many}"
    return words


def _number_match_to_words(m: re.Match) -> str:
    cur, digits, frac, ordinal = m["cur"], m["int"].replace(",", ""), m["frac"], m["ord"]
    if cur:
        spoken = _currency_to_words(cur, digits, frac)
        if ordinal:  # "$5th" is not a thing; keep the letters as a word
            spoken += f" {ordinal}"
    elif ordinal and frac is None:
        spoken = ordinal_to_words(int(digits))
    else:
        spoken = number_to_words(int(digits)) if frac is not None else _integer_to_words(digits)
        if frac is not None:
            spoken += " point " + _digits_to_words(frac)
        if ordinal:
            spoken += f" {ordinal}"
    return f" {spoken} "


def _strip_punctuation(s: str) -> str:
    """Punctuation and symbols become spaces, invisible format characters disappear."""
    s = _LOOSE_APOSTROPHE_RE.sub(" ", s)
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch == "'" or cat[0] in "LMN":
            out.append(ch)
        elif ch.isspace() or cat[0] in "PSZ":
            out.append(" ")
        # categories C* (controls, zero-width format characters) are dropped
    return "".join(out)


def normalize_text(s: str, lowercase: bool = True) -> str:
    """Normalize a transcript for tokenizer training, targets and scoring.

    >>> normalize_text("\u201cDon\u2019t\u201d \u2014 she said, it's 7 o'clock in 1999!")
    "don't she said it's seven o'clock in nineteen ninety nine"
    """
    s = unicodedata.normalize("NFKC", s).translate(_CHAR_MAP)
    if lowercase:
        s = s.lower()
    s = _NUMBER_RE.sub(_number_match_to_words, s)
    s = s.replace("%", " percent ").replace("&", " and ")
    s = _strip_punctuation(s)
    return _SPACE_RE.sub(" ", s).strip()
