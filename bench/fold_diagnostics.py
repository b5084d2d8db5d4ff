"""Are the folds' word swaps a per-speaker mismatch a test-time correction could remove? (issue 20)

Three diagnostics on the fine-tuned models of a `speechbudget run RECIPE --folds speakers` experiment,
each fold's dev speaker decoded with the lexicon (beam 8) as `speechbudget decode` does:

* ``--vtln``: the dev speaker's log-mel warped by one factor (vocal tract length; ``data/vtlp.py``'s warp,
  the speaker means re-targeted), with the model's confidence (mean best-path frame log-prob) per factor:
  could a per-speaker warp be chosen without labels, and would it help?
* ``--tempo``: the dev speaker's frames stretched in time by one factor (speaking rate).
* ``--pad``: each dev clip given N more frames of its own quietest frame at both ends (N < 0: N cropped):
  does the model read the margins a speaker's clips were cut with as part of the words?
* ``--silence-pad``: the same with frames of the fold's training speakers' recorded silence (frames 25 dB
  under their clip's loudest, ``data/edges.py``), at the fold's speaker normalisation.
* ``--vote``: test-time augmentation, each clip decoded as recorded and with each ``--tempo`` and ``--vtln``
  factor, the most common hypothesis kept (ties: as recorded): are the swaps fragile or stable?
* ``--probe``: logistic regression on each layer's mean+std pooled frames of the *pretrained* encoder,
  trained on two speakers and scored on the third: how speaker-invariant are the words it gives
  fine-tuning to start from?

    python bench/fold_diagnostics.py --exp EXP --folds george nicolas --vtln 0.9,1.0,1.1 --tempo 1.0,1.3 --probe
    python bench/fold_diagnostics.py --exp EXP --pad=-2,3,6,10
    python bench/fold_diagnostics.py --exp EXP --tempo 0.87,1.15 --vtln 0.95,1.05 --vote

Results: bench/results/fold_diagnostics.json (and the table on stdout). One thread.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import kaldialign
import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS_DIR
from lhotse.dataset import SimpleCutSampler

from speechbudget import atomic
from speechbudget.asr.decoding import beam_search_batch
from speechbudget.asr.text import normalize_text
from speechbudget.data import speaker_cmn
from speechbudget.data.dataset import SpeechDataset, make_loader, repad
from speechbudget.data.edges import move_edges, silence_frames
from speechbudget.data.manifests import cut_text, load_cuts
from speechbudget.data.vtlp import warp
from speechbudget.decode import lexicon_for, load_ctc_model
from speechbudget.evaluation.abx import layer_features
from speechbudget.models.presets import build_encoder
from speechbudget.train import checkpoint as ckpt


class FoldModel:
    """A fold's averaged fine-tuned model, its lexicon and its dev speaker's normalised batches."""

    def __init__(self, fold: Path):
        self.model, self.tok, info = load_ctc_model(fold / "finetune", torch.device("cpu"))
        self.trie, _ = lexicon_for(Path(info["exp_dir"]), self.tok, None)
        cuts = load_cuts(fold / "cuts_dev.jsonl.gz").to_eager()
        self.target = speaker_cmn.read_target(Path(info["exp_dir"]))
        cmn = speaker_cmn.for_cuts(self.target, cuts)
        dataset = SpeechDataset("fbank", with_text=True, transform=cmn)
        self.batches = list(make_loader(dataset, SimpleCutSampler(cuts, max_duration=120, shuffle=False)))

    def hypotheses(self, transform) -> Tuple[List[str], List[str], float]:
        """References, lexicon hypotheses and the mean best-path frame log-prob with ``transform(features,
        lengths)`` applied."""
        refs: List[str] = []
        hyps: List[str] = []
        confidence: List[float] = []
        with torch.no_grad():
            for b in self.batches:
                x, lengths = transform(b["features"], b["lengths"])
                lp, ln = self.model.log_probs(x, lengths)
                found = beam_search_batch(lp, ln, beam_size=8, blank=self.tok.blank_id, lexicon=self.trie)
                confidence += [lp[i, : ln[i]].max(-1).values.mean().item() for i in range(lp.size(0))]
                refs += [normalize_text(r) for r in b["texts"]]
                hyps += [self.tok.decode(h) for h in found]
        return refs, hyps, float(np.mean(confidence))


def word_error_rate(refs: List[str], hyps: List[str]) -> float:
    errors = sum(kaldialign.edit_distance(r.split(), h.split())["total"] for r, h in zip(refs, hyps))
    return round(100 * errors / sum(len(r.split()) for r in refs), 1)


def as_recorded(x, lengths):
    return x, lengths


def vtln(fm: FoldModel, factor: float):
    f = torch.tensor([factor])
    mean = torch.from_numpy(fm.target.mean).float().view(1, 1, -1)
    shift = mean - warp(mean, f)  # the warped speaker mean lands on the target again

    def transform(x, lengths):
        return (x, lengths) if factor == 1.0 else (warp(x, f.expand(x.size(0))) + shift, lengths)

    return transform


def tempo(factor: float):
    def transform(x, lengths):
        frames, new = [], []
        for i in range(x.size(0)):
            u = x[i, : int(lengths[i])].t().unsqueeze(0)
            n = max(8, round(u.size(2) * factor))
            frames.append(F.interpolate(u, size=n, mode="linear", align_corners=True)[0].t())
            new.append(n)
        return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), torch.tensor(new)

    return transform


def per_clip(edit):
    """A batch transform applying ``edit(utterance)`` to each clip's real frames, re-padded."""

    def transform(x, lengths):
        return repad([edit(x[i, : int(lengths[i])]) for i in range(x.size(0))], x)

    return transform


def pad(frames: int):
    """``frames`` copies of each clip's quietest frame (summed log-mel) added at both ends; < 0: cropped."""
    return per_clip(lambda u: move_edges(u, frames, frames, u[u.sum(1).argmin()].unsqueeze(0)))


def silence_pad(fm: FoldModel, fold: Path, frames: int):
    """``frames`` frames drawn from the fold's real training clips' silence added at both ends."""
    real = (
        load_cuts(fold / "cuts_train.jsonl.gz")
        .to_eager()
        .filter(lambda c: "tts" not in c.id)
        .subset(first=300)
    )
    batch = SpeechDataset("fbank", transform=speaker_cmn.for_cuts(fm.target, real))[real]
    silence = silence_frames(batch["features"], batch["lengths"])
    return per_clip(lambda u: move_edges(u, frames, frames, silence))


def vote(refs: List[str], plain: List[str], others: List[List[str]]) -> Dict[str, float]:
    """WER of the most common hypothesis over the clip as recorded (``plain``) and its transformed copies
    (``others``; ties: as recorded)."""
    voted = []
    for i, h in enumerate(plain):
        counts = Counter([h] + [hs[i] for hs in others])
        voted.append(h if counts[h] == max(counts.values()) else counts.most_common(1)[0][0])
    return {"wer": word_error_rate(refs, voted), "as recorded": word_error_rate(refs, plain)}


def probe(exp: Path, speakers: List[str]) -> Dict[str, Dict[str, float]]:
    """Cross-speaker word error % of a linear probe on each pretrained layer (speaker means removed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    state = ckpt.load(ckpt.resolve(exp / "pretrain"))
    encoder = build_encoder(state["config"]["encoder"])
    encoder.load_state_dict(
        {k[len("encoder.") :]: v for k, v in state["model"].items() if k.startswith("encoder.")}, strict=False
    )
    encoder.eval()
    feats, labels = {}, {}
    for s in speakers:
        cuts = load_cuts(exp / "folds" / s / "cuts_dev.jsonl.gz").to_eager()
        means = speaker_cmn.speaker_moments(cuts)
        x = [
            (
                torch.from_numpy(c.load_features()).float()
                - torch.from_numpy(means[speaker_cmn.cut_speaker(c)].mean).float()
            ).unsqueeze(0)
            for c in cuts
        ]
        feats[s], labels[s] = layer_features(encoder, x), [cut_text(c) for c in cuts]
    pool = lambda a: np.concatenate([a.mean(0), a.std(0)])  # noqa: E731
    out: Dict[str, Dict[str, float]] = {}
    for layer in feats[speakers[0]]:
        row = {}
        for test in speakers:
            train = [s for s in speakers if s != test]
            x = np.stack([pool(a) for s in train for a in feats[s][layer]])
            y = [w for s in train for w in labels[s]]
            scale = StandardScaler().fit(x)
            clf = LogisticRegression(max_iter=2000, C=0.1).fit(scale.transform(x), y)
            guess = clf.predict(scale.transform(np.stack([pool(a) for a in feats[test][layer]])))
            row[test] = round(100 * float((guess != np.array(labels[test])).mean()), 1)
        row["mean"] = round(float(np.mean([row[s] for s in speakers])), 1)
        out[layer] = row
        print(f"probe {layer}: {row}", flush=True)
    return out


def floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", type=Path, required=True, help="a run with folds (EXP/folds/<speaker>/finetune)")
    ap.add_argument("--folds", nargs="+", default=["george", "jackson", "nicolas"])
    ap.add_argument("--vtln", default="", help="comma-separated warp factors, e.g. 0.9,1.0,1.1")
    ap.add_argument("--tempo", default="", help="comma-separated time-stretch factors, e.g. 1.0,1.3")
    ap.add_argument(
        "--pad", default="", help="comma-separated frame counts, e.g. --pad=-2,3,6 (< 0: cropped)"
    )
    ap.add_argument("--silence-pad", default="", help="comma-separated frame counts of recorded silence")
    ap.add_argument("--vote", action="store_true", help="test-time vote over --tempo and --vtln copies")
    ap.add_argument("--probe", action="store_true", help="the linear probe of the pretrained layers")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "fold_diagnostics.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    result: Dict[str, object] = {"exp": str(args.exp), "folds": {}}
    for fold in args.folds:
        fm, rows = FoldModel(args.exp / "folds" / fold), {}
        transforms = {f"vtln {f}": vtln(fm, f) for f in floats(args.vtln)}
        transforms.update({f"tempo {f}": tempo(f) for f in floats(args.tempo)})
        transforms.update({f"pad {int(n)}": pad(int(n)) for n in floats(args.pad)})
        for n in floats(args.silence_pad):
            transforms[f"silence pad {int(n)}"] = silence_pad(fm, args.exp / "folds" / fold, int(n))
        hyps = {}
        for name, t in transforms.items():  # each transform decoded once: its WER, and its vote
            refs, hyps[name], confidence = fm.hypotheses(t)
            rows[name] = {"wer": word_error_rate(refs, hyps[name]), "confidence": round(confidence, 4)}
            print(f"{fold} {name}: {rows[name]}", flush=True)
        if args.vote:
            refs, plain, _ = fm.hypotheses(as_recorded)
            rows["vote"] = vote(refs, plain, [h for k, h in hyps.items() if "pad" not in k])
            print(f"{fold} vote: {rows['vote']}", flush=True)
        result["folds"][fold] = rows
    if args.probe:
        result["probe"] = probe(args.exp, [f for f in args.folds if "-seed+" not in f])
    atomic.write_json(args.out, result)


if __name__ == "__main__":
    main()
