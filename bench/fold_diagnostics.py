"""Are the folds' word swaps a per-speaker mismatch a test-time correction could remove? (issue 20)

Three diagnostics on the fine-tuned models of a `speechbudget run RECIPE --folds speakers` experiment,
each fold's dev speaker decoded with the lexicon (beam 8) as `speechbudget decode` does:

* ``--vtln``: the dev speaker's log-mel warped by one factor (vocal tract length; ``data/vtlp.py``'s warp,
  the speaker means re-targeted), with the model's confidence (mean best-path frame log-prob) per factor:
  could a per-speaker warp be chosen without labels, and would it help?
* ``--tempo``: the dev speaker's frames stretched in time by one factor (speaking rate).
* ``--probe``: logistic regression on each layer's mean+std pooled frames of the *pretrained* encoder,
  trained on two speakers and scored on the third: how speaker-invariant are the words it gives
  fine-tuning to start from?

    python bench/fold_diagnostics.py --exp EXP --folds george nicolas --vtln 0.9,1.0,1.1 --tempo 1.0,1.3 --probe

Results: bench/results/fold_diagnostics.json (and the table on stdout). One thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

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
from speechbudget.data.dataset import SpeechDataset, make_loader
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

    def wer(self, transform) -> Dict[str, float]:
        """Lexicon WER % and mean best-path frame log-prob with ``transform(features, lengths)`` applied."""
        errors = words = 0
        confidence: List[float] = []
        with torch.no_grad():
            for b in self.batches:
                x, lengths = transform(b["features"], b["lengths"])
                lp, ln = self.model.log_probs(x, lengths)
                hyps = beam_search_batch(lp, ln, beam_size=8, blank=self.tok.blank_id, lexicon=self.trie)
                confidence += [lp[i, : ln[i]].max(-1).values.mean().item() for i in range(lp.size(0))]
                for ref, hyp in zip(b["texts"], hyps):
                    r = normalize_text(ref).split()
                    errors += kaldialign.edit_distance(r, self.tok.decode(hyp).split())["total"]
                    words += len(r)
        return {"wer": round(100 * errors / words, 1), "confidence": round(float(np.mean(confidence)), 4)}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", type=Path, required=True, help="a run with folds (EXP/folds/<speaker>/finetune)")
    ap.add_argument("--folds", nargs="+", default=["george", "jackson", "nicolas"])
    ap.add_argument("--vtln", default="", help="comma-separated warp factors, e.g. 0.9,1.0,1.1")
    ap.add_argument("--tempo", default="", help="comma-separated time-stretch factors, e.g. 1.0,1.3")
    ap.add_argument("--probe", action="store_true", help="the linear probe of the pretrained layers")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "fold_diagnostics.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: Dict[str, object] = {"exp": str(args.exp), "folds": {}}
    for fold in args.folds:
        fm, rows = FoldModel(args.exp / "folds" / fold), {}
        for kind, make in (("vtln", vtln), ("tempo", None)):
            for f in [float(v) for v in getattr(args, kind).split(",") if v]:
                rows[f"{kind} {f}"] = fm.wer(make(fm, f) if kind == "vtln" else tempo(f))
                print(f"{fold} {kind} {f}: {rows[f'{kind} {f}']}", flush=True)
        result["folds"][fold] = rows
    if args.probe:
        result["probe"] = probe(args.exp, [f for f in args.folds if "-seed+" not in f])
    atomic.write_json(args.out, result)


if __name__ == "__main__":
    main()
