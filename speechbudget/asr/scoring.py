"""Word error rate with kaldialign, and icefall-style result files.

Counts come from one Levenshtein alignment per utterance, so the totals, the per-utterance
alignments and the per-word statistics in ``errs-*.txt`` always agree. The 95% confidence interval
is kaldialign's bootstrap over utterances (Bisani & Ney 2004), which says how much a WER
difference between two runs on the same test set can be trusted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import kaldialign

from speechbudget import atomic
from speechbudget.errors import SpeechBudgetError

__all__ = ["WerResult", "align_words", "compute_wer", "write_icefall_style", "result_file_names"]

Words = Sequence[str] | str
Alignment = list[tuple[str | None, str | None]]  # (ref word, hyp word); None marks ins / del


@dataclass
class WerResult:
    """Corpus-level WER; ``wer`` and ``ci95`` are percentages.

    ``ci95`` is kaldialign's bootstrap interval, centred on the bootstrap mean, which can differ
    slightly from ``wer``.
    """

    errors: int
    insertions: int
    deletions: int
    substitutions: int
    num_ref_words: int
    num_sentences: int
    sentence_errors: int
    wer: float
    ci95: tuple[float, float] | None = None
    alignments: list[tuple[str, Alignment]] = field(default_factory=list, repr=False)

    @property
    def correct(self) -> int:
        return self.num_ref_words - self.deletions - self.substitutions


def _words(x: Words) -> list[str]:
    return x.split() if isinstance(x, str) else [str(w) for w in x]


def _eps_for(ref: list[str], hyp: list[str]) -> str:
    """kaldialign needs an epsilon symbol that is not a word of either side."""
    eps = "*"
    while eps in ref or eps in hyp:
        eps += "*"
    return eps


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    """Minimum-edit alignment; insertions are (None, word) and deletions (word, None)."""
    ref, hyp = list(ref), list(hyp)
    eps = _eps_for(ref, hyp)
    pairs = kaldialign.align(ref, hyp, eps)
    return [(None if r == eps else r, None if h == eps else h) for r, h in pairs]


def _count(alignment: Alignment) -> tuple[int, int, int]:
    ins = sum(r is None for r, _ in alignment)
    dels = sum(h is None for _, h in alignment)
    subs = sum(r is not None and h is not None and r != h for r, h in alignment)
    return ins, dels, subs


def compute_wer(
    results: Sequence[tuple[str, Words, Words]], bootstrap_replications: int = 1000, seed: int = 0
) -> WerResult:
    """WER over ``(utt_id, ref_words, hyp_words)`` triples; words are lists or space-separated strings.

    ``bootstrap_replications=0`` skips the confidence interval.
    """
    if not results:
        raise SpeechBudgetError("no utterances to score; check that decoding produced hypotheses")
    triples = [(utt, _words(ref), _words(hyp)) for utt, ref, hyp in results]
    duplicates = [utt for utt, n in Counter(utt for utt, _, _ in triples).items() if n > 1]
    if duplicates:
        raise SpeechBudgetError(f"utterance ids must be unique, repeated: {duplicates[:5]}")
    num_ref = sum(len(ref) for _, ref, _ in triples)
    if num_ref == 0:
        raise SpeechBudgetError("all reference transcripts are empty; check the test set's supervisions")

    alignments = [(utt, align_words(ref, hyp)) for utt, ref, hyp in triples]
    ins = dels = subs = sent_err = 0
    for _, ali in alignments:
        i, d, s = _count(ali)
        ins, dels, subs, sent_err = ins + i, dels + d, subs + s, sent_err + bool(i + d + s)
    errors = ins + dels + subs

    ci95 = None
    if bootstrap_replications > 0:
        boot = kaldialign.bootstrap_wer_ci(
            [r for _, r, _ in triples],
            [h for _, _, h in triples],
            replications=bootstrap_replications,
            seed=seed,
        )
        ci95 = (100.0 * boot["ci95min"], 100.0 * boot["ci95max"])
    return WerResult(
        errors=errors,
        insertions=ins,
        deletions=dels,
        substitutions=subs,
        num_ref_words=num_ref,
        num_sentences=len(triples),
        sentence_errors=sent_err,
        wer=100.0 * errors / num_ref,
        ci95=ci95,
        alignments=alignments,
    )


def result_file_names(test_set_name: str, suffix: str = "") -> dict[str, str]:
    """File names for one test set; ``suffix`` (e.g. "beam8") is appended as ``-<suffix>``."""
    tail = f"{test_set_name}-{suffix}" if suffix else test_set_name
    return {kind: f"{kind}-{tail}.txt" for kind in ("recogs", "errs", "wer-summary")}


def _recogs_text(results: Sequence[tuple[str, list[str], list[str]]]) -> str:
    lines = []
    for utt, ref, hyp in sorted(results, key=lambda x: x[0]):
        lines += [f"{utt}:\tref={ref}", f"{utt}:\thyp={hyp}"]
    return "\n".join(lines) + "\n"


def _alignment_text(alignment: Alignment) -> str:
    """Correct words as they are, errors as (ref->hyp) with * for a missing word."""
    parts = []
    for r, h in alignment:
        if r == h:
            parts.append(r)
        else:
            parts.append(f"({r or '*'}->{h or '*'})")
    return " ".join(parts)


def _error_tables(alignments: list[tuple[str, Alignment]]) -> tuple[Counter, Counter, Counter, Counter]:
    subs, dels, ins, correct = Counter(), Counter(), Counter(), Counter()
    for _, ali in alignments:
        for r, h in ali:
            if r is None:
                ins[h] += 1
            elif h is None:
                dels[r] += 1
            elif r != h:
                subs[(r, h)] += 1
            else:
                correct[r] += 1
    return subs, dels, ins, correct


def _most_frequent(counter: Counter) -> list:
    """Most frequent first; ties in alphabetical order so the files are reproducible."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def _errs_text(res: WerResult) -> str:
    subs, dels, ins, correct = _error_tables(res.alignments)
    lines = [
        f"%WER = {res.wer:.2f}",
        f"Errors: {res.insertions} insertions, {res.deletions} deletions, {res.substitutions} "
        f"substitutions, over {res.num_ref_words} reference words ({res.correct} correct)",
    ]
    if res.ci95 is not None:
        lines.append(f"95% confidence interval (bootstrap): [{res.ci95[0]:.2f}, {res.ci95[1]:.2f}]")
    lines += [
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
        "INSERTIONS:, PER-WORD STATS:",
        "",
        "PER-UTT DETAILS: corr or (ref->hyp)",
    ]
    for utt, ali in sorted(res.alignments, key=lambda x: x[0]):
        lines.append(f"{utt}:\t{_alignment_text(ali)}")
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{n}   {r} -> {h}" for (r, h), n in _most_frequent(subs)]
    lines += ["", "DELETIONS: count ref"] + [f"{n}   {w}" for w, n in _most_frequent(dels)]
    lines += ["", "INSERTIONS: count hyp"] + [f"{n}   {w}" for w, n in _most_frequent(ins)]
    lines += ["", "PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp"]
    for w, corr, errs, n_ref, n_hyp in _per_word(subs, dels, ins, correct):
        lines.append(f"{w}   {corr} {errs} {n_ref} {n_hyp}")
    return "\n".join(lines) + "\n"


def _per_word(subs: Counter, dels: Counter, ins: Counter, correct: Counter) -> list[tuple]:
    """(word, correct, total errors, count in refs, count in hyps), most errors first."""
    sub_as_ref, sub_as_hyp = Counter(), Counter()
    for (r, h), n in subs.items():
        sub_as_ref[r] += n
        sub_as_hyp[h] += n
    rows = []
    for w in set(correct) | set(dels) | set(ins) | set(sub_as_ref) | set(sub_as_hyp):
        errs = sub_as_ref[w] + sub_as_hyp[w] + dels[w] + ins[w]
        in_ref = correct[w] + sub_as_ref[w] + dels[w]
        in_hyp = correct[w] + sub_as_hyp[w] + ins[w]
        rows.append((w, correct[w], errs, in_ref, in_hyp))
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def _summary_text(res: WerResult, setting: str) -> str:
    lo, hi = res.ci95 if res.ci95 is not None else (float("nan"), float("nan"))
    header = "settings\tWER\tCI95_lo\tCI95_hi\tins\tdel\tsub\tref_words\tsentences\tsentence_errors"
    row = (
        f"{setting}\t{res.wer:.2f}\t{lo:.2f}\t{hi:.2f}\t{res.insertions}\t{res.deletions}\t"
        f"{res.substitutions}\t{res.num_ref_words}\t{res.num_sentences}\t{res.sentence_errors}"
    )
    return f"{header}\n{row}\n"


def write_icefall_style(
    out_dir: Path,
    test_set_name: str,
    results: Sequence[tuple[str, Words, Words]],
    suffix: str = "",
    bootstrap_replications: int = 1000,
) -> WerResult:
    """Score ``results`` and write recogs-, errs- and wer-summary-<set>[-<suffix>].txt to ``out_dir``.

    The layout follows icefall's decode outputs so existing habits and scripts carry over.
    """
    res = compute_wer(results, bootstrap_replications=bootstrap_replications)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = result_file_names(test_set_name, suffix)
    triples = [(utt, _words(ref), _words(hyp)) for utt, ref, hyp in results]
    atomic.write_text(out_dir / names["recogs"], _recogs_text(triples))
    atomic.write_text(out_dir / names["errs"], _errs_text(res))
    atomic.write_text(out_dir / names["wer-summary"], _summary_text(res, suffix or "default"))
    return res
