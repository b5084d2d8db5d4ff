"""English spoken with a foreign accent, for text-to-speech augmentation.

Real speakers who learnt English later carry their first language's sounds into it: a Greek speaker
has five vowels and no /h/ or /ʃ/, a French one says /s/ for /θ/, /z/ for /ð/, drops /h/ and stresses
a word's last syllable. espeak-ng's English voices are all native varieties, and its other voices do
not speak English words with an accent (Greek switches to English, German reads the spelling). So an
accented clip is made the way a learner makes it: the words' English phonemes (espeak-ng's en-us
transcription) are replaced one by one with the nearest sounds of the other language, and that
language's voice speaks them from phoneme input (``[[...]]``).

A speaker of the synthetic plan whose voice is an ACCENTS key speaks English with that accent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, FrozenSet, List, Tuple

from ..errors import SpeechBudgetError
from .espeak import transcribe

#: markers espeak-ng writes before a stressed vowel (primary, secondary)
_STRESS = ("'", ",")
#: English phonemes with a length, rhotic or variant mark that map like their plain form
#: (espeak-ng's en and en-us phoneme tables, all of which are covered)
_ALIASES = {
    **dict.fromkeys(("I#", "I2", "I2#"), "I"),
    **dict.fromkeys(("a#", "a#2", "a2", "aa"), "a"),
    **dict.fromkeys(("@#", "@2", "@-", "@5"), "@"),
    **dict.fromkeys(("0#", "02"), "0"),
    **dict.fromkeys(("O", "O2", "O~"), "O:"),
    **dict.fromkeys(("A#", "A~"), "A:"),
    **dict.fromkeys(("E#", "E2", "e#", "e:"), "E"),
    **dict.fromkeys(("t#", "t2", "?"), "t"),
    **dict.fromkeys(("z#", "z/2"), "z"),
    **dict.fromkeys(("r-", "VR"), "3"),
    **dict.fromkeys(("i@3", "IR"), "i@r"),
    "aI3": "aI@",
    "aU@": "aU",
    "o:": "oU",
    "oU#": "oU",
    "d#": "d",
    "w#": "w",
    "r/": "r",
    "l/": "l",
    "l-": "@L",
    "m-": "@m",
}


@dataclass(frozen=True)
class Accent:
    """How one language's speakers say English: each en-us phoneme as that language's phonemes."""

    name: str
    table: Dict[str, Tuple[str, ...]]
    #: stress every word on its last vowel (one of ``vowels``) instead of where English puts it
    final_stress: bool = False
    vowels: FrozenSet[str] = frozenset()
    #: a vowel added after a word that ends in an obstruent ("eight" -> "eighta"), as speakers of
    #: languages whose words end in a vowel do
    epenthesis: str = ""
    #: syllables end in a vowel (Japanese): every sound not in ``vowels`` or ``codas`` that no vowel
    #: follows takes one, ``epenthesis`` or the consonant's own from ``epenthesis_after`` ("eight" -> "eito")
    open_syllables: bool = False
    codas: FrozenSet[str] = frozenset()
    epenthesis_after: Dict[str, str] = field(default_factory=dict)


#: English phonemes after which an epenthetic vowel is heard: stops, affricates and the fricatives
#: other than /s z/ (whose hiss ends a word in those languages too)
_OBSTRUENTS = frozenset("p b t d k g f v T D S Z tS dZ".split())


def _table(consonants: str, vowels: Dict[str, str]) -> Dict[str, Tuple[str, ...]]:
    """A table from 'en=target ...' pairs for consonants (target '' drops the sound, 'n+g' is two
    sounds) and a dict for vowels (targets separated by spaces)."""
    pairs = dict(p.split("=") for p in consonants.split()) | vowels
    return {en: tuple(target.replace("+", " ").split()) for en, target in pairs.items()}


_SAME = "p=p b=b t=t d=d k=k g=g f=f v=v s=s z=z m=m n=n l=l r=r j=j"

#: English vowels in a language of five (a e i o u): Greek and Spanish speakers' English
_FIVE_VOWELS = {
    "i:": "i",
    "i": "i",
    "I": "i",
    "i@": "i",
    "i@r": "i e r",
    "E": "e",
    "e@": "e r",
    "eI": "e i",
    "a": "a",
    "A:": "a",
    "A@": "a r",
    "V": "a",
    "0": "o",
    "O:": "o",
    "O@": "o r",
    "o@": "o r",
    "oU": "o",
    "OI": "o i",
    "U": "u",
    "u:": "u",
    "U@": "u r",
    "aI": "a i",
    "aI@": "a i e r",
    "aU": "a u",
    "@": "e",
    "3": "e r",
    "3:": "e r",
    "@L": "e l",
    "n-": "e n",
    "@m": "e m",
}

#: English vowels in a language of seven (open and closed e and o): Italian and Portuguese speakers'
_SEVEN_VOWELS = _FIVE_VOWELS | {
    "E": "E",
    "e@": "E r",
    "a": "E",
    "0": "O",
    "O:": "O",
    "O@": "O r",
    "o@": "O r",
    "OI": "O i",
    "3": "E r",
    "3:": "E r",
}

#: English vowels as a German speaker says them: long pure vowels for "day" and "go", /æ/ -> E
_LONG_VOWELS = {
    "i:": "i:",
    "i": "i",
    "I": "I",
    "i@": "i: @",
    "i@r": "i: r",
    "E": "E",
    "e@": "E: r",
    "eI": "e:",
    "a": "E",
    "A:": "a:",
    "A@": "a: r",
    "V": "a",
    "0": "O",
    "O:": "o:",
    "O@": "o: r",
    "o@": "o: r",
    "oU": "o:",
    "OI": "OY",
    "U": "U",
    "u:": "u:",
    "U@": "u: r",
    "aI": "aI",
    "aI@": "aI @ r",
    "aU": "aU",
    "@": "@",
    "3": "Y: r",
    "3:": "Y: r",
    "@L": "@ l",
    "n-": "@ n",
    "@m": "@ m",
}

#: by the espeak-ng voice (language) that speaks the accent's phonemes
ACCENTS: Dict[str, Accent] = {
    "el": Accent(
        "Greek",
        _table(
            _SAME + " T=T D=D h=x x=x N=n+g w=u S=s Z=z tS=ts dZ=d+z",
            _FIVE_VOWELS,
        ),
    ),
    "fr": Accent(
        "French",
        _table(
            _SAME + " T=s D=z h= x=k N=n+g w=w S=S Z=Z tS=t+S dZ=d+Z",
            {
                "i:": "i",
                "i": "i",
                "I": "i",
                "i@": "i",
                "i@r": "i r",
                "E": "E",
                "e@": "E r",
                "eI": "e",
                "a": "a",
                "A:": "a",
                "A@": "a r",
                "V": "W",
                "0": "O",
                "O:": "O",
                "O@": "O r",
                "o@": "O r",
                "oU": "o",
                "OI": "O j",
                "U": "u",
                "u:": "u",
                "U@": "u r",
                "aI": "a j",
                "aI@": "a j W r",
                "aU": "a u",
                "@": "@",
                "3": "W r",
                "3:": "W r",
                "@L": "@ l",
                "n-": "@ n",
                "@m": "@ m",
            },
        ),
        final_stress=True,
        vowels=frozenset({"a", "e", "E", "i", "o", "O", "u", "y", "Y", "W", "@"}),
    ),
    # Spanish: five vowels, /v/ = /b/, no /z/ (s), /h/ = the jota, "she" -> "chi", "judge" -> "yuy"
    "es": Accent(
        "Spanish",
        _table(
            "p=p b=b t=t d=d k=k g=g f=f v=b s=s z=s m=m n=n l=l r=r j=j"
            " T=T D=d h=x x=x N=n+g w=w S=tS Z=j tS=tS dZ=j",
            _FIVE_VOWELS,
        ),
    ),
    # German: /w/ -> v, /θ/ -> s, /ð/ -> z, the uvular R, /æ/ -> E, long pure vowels for the English
    # diphthongs of "day" and "go"; the voice itself devoices word-final b, d, g, v, z
    "de": Accent(
        "German",
        _table(
            "p=p b=b t=t d=d k=k g=g f=f v=v s=s z=z m=m n=n l=l r=R j=j"
            " T=s D=z h=h x=x N=N w=v S=S Z=Z tS=tS dZ=dZ",
            _LONG_VOWELS,
        ),
    ),
    # Italian: no /h/, /θ/ -> t, /ð/ -> d, the trilled r, /æ/ -> E, full vowels for the schwa, and a
    # schwa after a word-final obstruent ("eight" -> "eighta")
    "it": Accent(
        "Italian",
        _table(
            _SAME + " T=t D=d h= x=k N=n+g w=w S=S Z=S tS=tS dZ=dZ",
            _SEVEN_VOWELS,
        ),
        epenthesis="@",
    ),
    # Brazilian Portuguese: /h/ -> x (a Brazilian 'r'), /θ/ -> t, /ð/ -> d, /æ/ -> E, the schwa as the
    # reduced a, dark l -> w, and an i after a word-final obstruent ("five" -> "fivi")
    "pt-br": Accent(
        "Brazilian Portuguese",
        _table(
            _SAME + " T=t D=d h=x x=x N=N w=w S=S Z=Z tS=tS dZ=dZ",
            _SEVEN_VOWELS | {"oU": "o U", "aU": "a U", "OI": "O j", "@": "&", "@L": "e w"},
        ),
        epenthesis="i",
    ),
    # Russian: /w/ -> v, /θ/ -> s, /ð/ -> z, /h/ -> x, the trilled r, /æ/ -> e, the soft ch, the vowel
    # of "bird" as the rounded one of "ё"; the voice itself devoices word-final b, d, g, v, z
    "ru": Accent(
        "Russian",
        _table(
            _SAME + " T=s D=z h=x x=x N=n+g w=v S=S Z=Z tS=tS; dZ=d+Z",
            _FIVE_VOWELS
            | {
                "a": "e",
                "@": "@",
                "3": "8 r",
                "3:": "8 r",
                "eI": "e j",
                "aI": "a j",
                "OI": "o j",
                "@L": "@ l",
                "n-": "@ n",
                "@m": "@ m",
            },
        ),
    ),
    # Japanese: l and r both the flap, /f/ -> ɸ, /v/ -> b, /θ/ -> s, /ð/ -> z, five vowels and long ones,
    # and every syllable open: a u after a consonant no vowel follows, an o after t and d ("three" ->
    # "surii", "six" -> "sikusu", "eight" -> "eito"); only n ends a syllable
    "ja": Accent(
        "Japanese",
        _table(
            "p=p b=b t=t d=d k=k g=g f=p\\ v=b s=s z=z m=m n=n l=r` r=r` j=j"
            " T=s D=z h=h x=h N=N\\+g w=w S=s\\ Z=d_z\\ tS=t_s\\ dZ=d_z\\",
            _FIVE_VOWELS
            | {
                "i:": "i:",
                "i@r": "i a:",
                "e@": "e a:",
                "A:": "a:",
                "A@": "a:",
                "O:": "o:",
                "O@": "o:",
                "o@": "o:",
                "oU": "o:",
                "u:": "u:",
                "U@": "u a:",
                "aI@": "a i a:",
                "@": "a",
                "3": "a:",
                "3:": "a:",
                "@L": "o r`",
                "n-": "a n",
                "@m": "a m",
            },
        ),
        vowels=frozenset("a i u e o a: i: u: e: o:".split()),
        open_syllables=True,
        codas=frozenset({"n", "N\\"}),
        epenthesis="u",
        epenthesis_after={"t": "o", "d": "o", "t_s\\": "i", "d_z\\": "i"},
    ),
    # Arabic: /p/ -> b, /v/ -> f, "ch" -> sh, the trilled r, /ɛ/ -> i ("pen" -> "pin"), long pure vowels
    # for the diphthongs of "day" and "go"
    "ar": Accent(
        "Arabic",
        _table(
            "p=b b=b t=t d=d k=k g=g f=f v=f s=s z=z m=m n=n l=l r=r j=j"
            " T=T D=D h=h x=x N=n+g w=w S=S Z=Z tS=S dZ=dZ",
            _FIVE_VOWELS
            | {
                "i:": "i:",
                "E": "i",
                "e@": "i r",
                "eI": "e:",
                "A:": "a:",
                "O:": "o:",
                "O@": "o: r",
                "o@": "o: r",
                "oU": "o:",
                "u:": "u:",
                "@": "a",
                "3": "i r",
                "3:": "i r",
            },
        ),
    ),
    # Indian English (the Hindi voice): retroflex t and d, dental aspirated t for /θ/, /w/ = /v/,
    # /æ/ -> E, long pure vowels for "day" and "go", the tapped r kept after vowels
    "hi": Accent(
        "Hindi",
        _table(
            "p=p b=b t=t. d=d. k=k g=g f=f v=v s=s z=z m=m n=n l=l r=r j=j"
            " T=t# D=d h=H x=x N=N+g w=v S=S Z=Z tS=c dZ=J",
            _LONG_VOWELS
            | {
                "i": "i:",
                "V": "V",
                "0": "O:",
                "O:": "O:",
                "O@": "O: r",
                "OI": "O: j",
                "3": "V r",
                "3:": "V r",
            },
        ),
    ),
}


#: the accents for a command's help, e.g. "el (Greek), fr (French), ..."
ACCENT_CHOICES = ", ".join(f"{key} ({accent.name})" for key, accent in ACCENTS.items())


def check_accents(accents: List[str]) -> None:
    unknown = [a for a in accents if a not in ACCENTS]
    if unknown:
        raise SpeechBudgetError(
            f"unknown accent {', '.join(map(repr, unknown))}; choose from {', '.join(sorted(ACCENTS))}"
        )


def check_accent_options(accents: List[str], accent_share: float) -> None:
    """A source's ``accents`` and ``accent_share``, checked when its options are read."""
    check_accents(accents)
    if not 0 < accent_share <= 1:
        raise SpeechBudgetError(f"accent_share must be in (0, 1], got {accent_share}")


@lru_cache(maxsize=4096)
def english_phonemes(text: str) -> Tuple[Tuple[str, ...], ...]:
    """Each word of `text` as en-us phoneme mnemonics, a stress mark kept on its vowel."""
    words = []
    for line in transcribe(text, "en-us", ipa=False, sep="|", otherwise="or leave tts.accents empty"):
        for word in line.split():
            # pauses and espeak-ng's own markers go: the voice pauses by itself
            phones = tuple(p for p in (p.lstrip("_:!;") for p in word.split("|")) if p)
            if phones:
                words.append(phones)
    return tuple(words)


def _map_word(phones: Tuple[str, ...], accent: Accent) -> List[str]:
    out: List[str] = []
    bare = ""
    for phone in phones:
        stress = phone[0] if phone[0] in _STRESS else ""
        bare = phone[len(stress) :]
        bare = _ALIASES.get(bare, bare)
        if bare not in accent.table:
            raise SpeechBudgetError(f"no {accent.name} sound for the English phoneme {bare!r}")
        mapped = list(accent.table[bare])
        if mapped and stress and not accent.final_stress:
            mapped[0] = stress + mapped[0]
        out.extend(mapped)
    if accent.open_syllables:
        out = _open_syllables(out, accent)
    elif accent.epenthesis and bare in _OBSTRUENTS:  # `bare`: the word's last English phoneme
        out.append(accent.epenthesis)
    if accent.final_stress:
        vowels = [i for i, p in enumerate(out) if p in accent.vowels]
        if vowels:
            out[vowels[-1]] = "'" + out[vowels[-1]]
    return out


def _open_syllables(sounds: List[str], accent: Accent) -> List[str]:
    """``sounds`` with a vowel after each consonant that is not followed by one ("six" -> "sikusu")."""
    bare = [s.lstrip("".join(_STRESS)) for s in sounds] + [""]
    out: List[str] = []
    for i, sound in enumerate(sounds):
        out.append(sound)
        if bare[i] not in accent.vowels and bare[i] not in accent.codas and bare[i + 1] not in accent.vowels:
            out.append(accent.epenthesis_after.get(bare[i], accent.epenthesis))
    return out


def accented(text: str, accent: str) -> str:
    """`text` as phoneme input for espeak-ng's `accent` voice: English words, that language's sounds."""
    check_accents([accent])
    words = [_map_word(w, ACCENTS[accent]) for w in english_phonemes(text)]
    return "[[" + " ".join("".join(w) for w in words if w) + "]]"
