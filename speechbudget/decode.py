"""``speechbudget decode``: a fine-tuned CTC checkpoint on any cut set -> hypotheses and WER files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import kaldialign
import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler

from . import atomic, progress
from .asr.decoding import beam_search_batch, greedy_decode
from .asr.lexicon import LEXICON_NAME, LexiconTrie, lexicon_words, read_lexicon
from .asr.scoring import write_icefall_style
from .asr.text import normalize_text
from .asr.tokenizer import Tokenizer
from .config import split_csv
from .data import speaker_cmn
from .data.audio import memory_cuts, none_read
from .data.dataset import make_loader
from .data.manifests import cut_text, load_cuts
from .errors import SpeechBudgetError
from .models.presets import build_encoder
from .objectives.ctc import INTER_CTC_PREFIX, CtcModel
from .objectives.speaker_adversary import ADVERSARY_PREFIX
from .train import checkpoint as ckpt
from .train.distributed import device_option
from .train.setup import dataset_for

METHODS = ("greedy", "beam", "lexicon")


def resolve_checkpoint(path: Path) -> Tuple[Path, Path]:
    """A fine-tuning exp dir (its newest checkpoint, or averaged.pt) or a checkpoint file -> (ckpt, exp_dir)."""
    path = Path(path)
    found = ckpt.resolve(path)
    exp = (
        path if path.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    )
    return found, exp


def load_ctc_model(path: Path, device: torch.device) -> Tuple[CtcModel, Tokenizer, Dict[str, Any]]:
    ck, exp = resolve_checkpoint(path)
    state = ckpt.load(ck)
    if state.get("stage") not in (None, "finetune"):
        raise SpeechBudgetError(f"{ck} is a {state.get('stage')} checkpoint; decode a fine-tuned (CTC) one")
    if (state.get("config") or {}).get("task") == "classify":
        raise SpeechBudgetError(
            f"{ck} is a classifier: score cut sets with `speechbudget evaluate`, audio files with `speechbudget predict`"
        )
    tok_path = exp / "tokenizer" / "tokenizer.model"
    if not tok_path.is_file():
        raise SpeechBudgetError(f"no tokenizer at {tok_path}; decode the fine-tuning experiment folder")
    tokenizer = Tokenizer(tok_path)
    encoder = build_encoder(state["config"]["encoder"])
    model = CtcModel(encoder, tokenizer.vocab_size, tokenizer.blank_id, spec_augment=False)
    # training-only heads (``ctc.speaker_adversary``, ``ctc.inter_ctc_weight``) are not the model's
    training_only = (ADVERSARY_PREFIX, INTER_CTC_PREFIX)
    model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith(training_only)})
    return (
        model.to(device).eval(),
        tokenizer,
        {"checkpoint": str(ck), "exp_dir": str(exp), "counters": state.get("counters", {})},
    )


def lexicon_for(exp: Path, tokenizer: Tokenizer, path: Optional[Path] = None) -> Tuple[LexiconTrie, str]:
    """The words a lexicon decode may output, and where they came from: ``path``; else the
    fine-tuning run's ``tokenizer/lexicon.txt``; else (runs fine-tuned before lexicons were kept)
    the words of the training transcripts its run card names."""
    if path is not None:
        words, source = read_lexicon(path), str(path)
    elif (exp / "tokenizer" / LEXICON_NAME).is_file():
        words, source = read_lexicon(exp / "tokenizer" / LEXICON_NAME), str(exp / "tokenizer" / LEXICON_NAME)
    else:
        card = exp / "run_card.json"
        config = json.loads(card.read_text()).get("config", {}) if card.is_file() else {}
        train = split_csv(config.get("train_cuts")) + split_csv(config.get("extra_train_cuts"))
        if not train or not all(Path(p).is_file() for p in train):
            raise SpeechBudgetError(
                f"{exp} keeps no lexicon and its training cuts are gone: pass --lexicon FILE (one word per line)"
            )
        words = lexicon_words((cut_text(c) for p in train for c in load_cuts(p)), tokenizer)
        source = f"words of {', '.join(train)}"
    return LexiconTrie.from_words(words, tokenizer), source


def default_out_dir(exp: Path, checkpoint: Path, method: str) -> Path:
    """``EXP/decode-<method>`` for the model the run stands for (:func:`final_model`); any other
    checkpoint of the run gets ``EXP/decode-<method>-<checkpoint>``, so decoding it never overwrites
    the final model's results (the file names inside are per set and method only)."""
    final = ckpt.final_model(exp)
    if final is None or final.resolve() == checkpoint.resolve():
        return exp / f"decode-{method}"
    return exp / f"decode-{method}-{checkpoint.stem}"


def _check_method(method: str, beam_size: int, lexicon: Optional[Path]) -> None:
    if method not in METHODS:
        raise SpeechBudgetError(f"unknown decoding method {method!r}; choose {', '.join(METHODS)}")
    if method != "greedy" and beam_size < 1:
        raise SpeechBudgetError(f"--beam-size must be at least 1, got {beam_size}")
    if lexicon is not None and method != "lexicon":
        raise SpeechBudgetError("--lexicon is for --method lexicon; add it, or leave --lexicon out")


def decode(
    model_path: Path,
    cuts_path: Path,
    out_dir: Optional[Path] = None,
    method: str = "greedy",
    beam_size: int = 8,
    set_name: Optional[str] = None,
    max_duration: float = 120.0,
    device: str = "cpu",
    lexicon: Optional[Path] = None,
) -> Dict[str, Any]:
    """Decode a cut manifest; with transcripts, score it (WER, CER, icefall-style files)."""
    _check_method(method, beam_size, lexicon)
    loaded = load_ctc_model(model_path, device_option(device))
    cuts = load_cuts(cuts_path).to_eager()
    if len(cuts) == 0:
        raise SpeechBudgetError(f"{cuts_path} holds no cuts to decode")
    set_name = set_name or Path(cuts_path).name.replace("cuts_", "").split(".")[0]
    return _decode_cuts(loaded, cuts, set_name, out_dir, method, beam_size, max_duration, lexicon)


def decode_audio(
    model_path: Path,
    audio: Sequence[Path],
    out_dir: Optional[Path] = None,
    method: str = "greedy",
    beam_size: int = 8,
    max_duration: float = 120.0,
    device: str = "cpu",
    lexicon: Optional[Path] = None,
) -> Dict[str, Any]:
    """Transcribe audio files (or folders of them) that were never prepared: read and resampled as
    ``prepare`` does, fbank computed on the fly; ``hypotheses`` in the result, set ``audio``. An
    unreadable file is skipped and listed in ``skipped``; none readable is an error."""
    _check_method(method, beam_size, lexicon)
    loaded = load_ctc_model(model_path, device_option(device))
    cuts, skipped = memory_cuts(audio)
    if len(cuts) == 0:
        raise none_read([why for _, why in skipped])
    summary = _decode_cuts(loaded, cuts, "audio", out_dir, method, beam_size, max_duration, lexicon)
    summary["skipped"] = [{"audio": str(p), "error": why} for p, why in skipped]
    return summary


def _decode_cuts(
    loaded: Tuple[CtcModel, Tokenizer, Dict[str, Any]],
    cuts: CutSet,
    set_name: str,
    out_dir: Optional[Path],
    method: str,
    beam_size: int,
    max_duration: float,
    lexicon: Optional[Path],
) -> Dict[str, Any]:
    model, tokenizer, info = loaded
    dev = next(model.parameters()).device
    trie, lexicon_source = (
        lexicon_for(Path(info["exp_dir"]), tokenizer, lexicon) if method == "lexicon" else (None, None)
    )
    if out_dir is None:
        out_dir = default_out_dir(Path(info["exp_dir"]), Path(info["checkpoint"]), method)
    out_dir = Path(out_dir)
    atomic.check_writable(out_dir, "decode output folder")
    cmn_target = speaker_cmn.read_target(Path(info["exp_dir"]))
    cmn = speaker_cmn.for_cuts(cmn_target, cuts) if cmn_target is not None else None
    on_the_fly = not all(c.has_features for c in cuts)  # a user's recordings: fbank computed here
    dataset = dataset_for(model.encoder, with_text=True, transform=cmn, on_the_fly=on_the_fly)
    loader = make_loader(dataset, SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False))
    results: List[Tuple[str, str, str]] = []
    with torch.no_grad():
        for batch in progress.track(loader, total=None, description=f"decoding {set_name}"):
            log_probs, lengths = model.log_probs(batch["features"].to(dev), batch["lengths"].to(dev))
            if method == "greedy":
                hyps = greedy_decode(log_probs.cpu(), lengths.cpu(), blank=tokenizer.blank_id)
            else:
                hyps = beam_search_batch(
                    log_probs.cpu(),
                    lengths.cpu(),
                    beam_size=beam_size,
                    blank=tokenizer.blank_id,
                    lexicon=trie,
                )
            for cid, ref, hyp in zip(batch["ids"], batch["texts"], hyps):
                results.append((cid, normalize_text(ref), tokenizer.decode(hyp)))
    order = {c.id: i for i, c in enumerate(cuts)}
    results.sort(key=lambda r: order[r[0]])  # the order the user gave, not the batches' longest-first
    suffix = method if method == "greedy" else f"{method}-beam{beam_size}"
    summary: Dict[str, Any] = {
        "set": set_name,
        "method": method,
        "utterances": len(results),
        "checkpoint": info["checkpoint"],
        "out_dir": str(out_dir),
    }
    if lexicon_source is not None:
        summary.update(lexicon=lexicon_source, beam_size=beam_size)
    if cmn is not None:  # the run was fine-tuned with ctc.speaker_cmn: each speaker's own mean moved
        summary.update(speaker_cmn_speakers=len(cmn.shift), speaker_cvn=cmn.target.std is not None)
    if not any(ref for _, ref, _ in results):
        hyps_file = out_dir / f"hyps-{set_name}-{suffix}.txt"
        _write_hyps(hyps_file, results)
        summary.update(
            wer=None,
            note=f"the cuts have no transcripts: hypotheses written to {hyps_file}, no WER can be computed",
            hypotheses=[{"id": cid, "text": hyp} for cid, _, hyp in results],
        )
    else:
        scored = [(cid, ref, hyp) for cid, ref, hyp in results if ref]
        res = write_icefall_style(out_dir, set_name, scored, suffix=suffix)
        summary.update(
            wer=res.wer,
            cer=char_error_rate(scored),
            ci95=list(res.ci95) if res.ci95 else None,
            errors=res.errors,
            insertions=res.insertions,
            deletions=res.deletions,
            substitutions=res.substitutions,
            ref_words=res.num_ref_words,
            unscored=len(results) - len(scored),
        )
    atomic.write_json(out_dir / f"decode-summary-{set_name}-{suffix}.json", summary)
    return summary


def char_error_rate(results: List[Tuple[str, str, str]]) -> float:
    """CER in % over letters (spaces removed): progress shows here long before words come out right."""
    errors = total = 0
    for _, ref, hyp in results:
        r, h = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
        errors += kaldialign.edit_distance(r, h)["total"]
        total += len(r)
    return round(100.0 * errors / max(total, 1), 2)


def _write_hyps(path: Path, results: List[Tuple[str, str, str]]) -> None:
    atomic.write_text(path, "".join(f"{cid}\t{hyp}\n" for cid, _, hyp in results))
