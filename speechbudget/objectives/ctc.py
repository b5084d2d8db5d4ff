"""CTC fine-tuning head (torch.nn.functional.ctc_loss) with lhotse's SpecAugment in training.

With ``consistency`` > 0 a training batch holds each utterance twice (``data/views.py``); the loss adds
the KL divergence between the two views' frame posteriors, each view learning towards the other's
(detached), as in CR-CTC (Yao et al., ICLR 2025). With ``entropy_weight`` > 0 it subtracts that weight x
the mean entropy of the frame posteriors (a confidence penalty: Pereyra et al., 2017; MaxEnt CTC, Liu et
al., NeurIPS 2018), so a model fitting two training voices to certainty pays for it. With
``inter_ctc_weight`` > 0 a second CTC head on a middle block's output trains beside the last one
(intermediate CTC: Lee and Watanabe, ICASSP 2021): the loss is (1 - w) x CTC + w x the middle block's CTC.
The extra head only trains; decoding drops it (``INTER_CTC_PREFIX``).

Utterances whose token sequence cannot fit the encoder output (CTC needs one frame per token
plus one blank between repeated tokens) are dropped from the loss and counted, so they never
turn into an infinite or NaN loss.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from lhotse.dataset import SpecAugment
from torch import nn

from ..data.views import VIEWS
from ..data.vtlp import vtlp
from ..errors import SpeechBudgetError
from ..models.base import Encoder, layer_widths, make_pad_mask
from .param_groups import encoder_head_groups
from .speaker_adversary import SpeakerAdversary

#: state-dict prefix of the intermediate CTC head, which only trains
INTER_CTC_PREFIX = "inter_ctc."


def ctc_min_frames(tokens: torch.Tensor, length: int) -> int:
    """Frames CTC needs for this label sequence: its length plus one per adjacent repeat."""
    t = tokens[:length]
    return int(length + (t[1:] == t[:-1]).sum()) if length > 1 else int(length)


def random_gain(x: torch.Tensor, lengths: torch.Tensor, max_db: float) -> torch.Tensor:
    """Each utterance louder or quieter by up to ``max_db`` (uniform in dB).

    On log-mel fbank a gain is an offset: amplitude x a adds 2 ln(a) = dB x ln(10) / 10 to every
    bin. A few training speakers recorded at one level otherwise leave a quieter test speaker
    outside everything the model has seen (FSDD's held-out speaker is ~15 dB quieter).
    """
    db = (torch.rand(x.size(0), 1, 1, device=x.device) * 2 - 1) * max_db
    valid = ~make_pad_mask(lengths.to(x.device), x.size(1)).unsqueeze(-1)
    return x + valid * db * (math.log(10.0) / 10.0)


def lhotse_spec_augment(
    time_masks: int, time_width: int, max_fraction: float, freq_masks: int, freq_width: int, time_warp: int
) -> SpecAugment:
    """lhotse's SpecAugment, applied to every training utterance (p=1). lhotse divides by the number
    of time masks, so no time masks is one mask of width 0 (lhotse draws widths in [0, width))."""
    return SpecAugment(
        time_warp_factor=time_warp or None,
        num_feature_masks=freq_masks,
        features_mask_size=freq_width,
        num_frame_masks=time_masks or 1,
        frames_mask_size=time_width if time_masks else 1,
        max_frames_mask_fraction=max_fraction,
        p=1.0,
    )


@contextlib.contextmanager
def torch_seeded_python_numpy():
    """lhotse's SpecAugment draws from ``random`` and ``numpy`` as well as torch: seed both from torch's
    RNG (which the trainer seeds per batch and checkpoints) so a run is reproducible, and leave their
    global states as they were."""
    py, np_state = random.getstate(), np.random.get_state()
    seed = int(torch.randint(0, 2**31 - 1, ()))
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def mean_frame_entropy(log_probs: torch.Tensor, out_lengths: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """The mean entropy (nats) of the frame posteriors over the real frames of the utterances ``ok``."""
    real = ~make_pad_mask(out_lengths, log_probs.size(1)) & ok.unsqueeze(1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return (entropy * real).sum() / real.sum().clamp(min=1)


def views_disagreement(log_probs: torch.Tensor, out_lengths: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """CR-CTC's consistency term for a batch whose second half repeats its first (``data/views.py``):
    over the real frames of the utterances CTC trains on, KL(sg(p_b) || p_a) + KL(sg(p_a) || p_b), summed.
    Each view is pulled towards the other, never the other way through the same term."""
    b = log_probs.size(0) // 2
    a, c = log_probs[:b], log_probs[b:]
    kl = F.kl_div(a, c.detach(), log_target=True, reduction="none")
    kl = kl + F.kl_div(c, a.detach(), log_target=True, reduction="none")
    real = ~make_pad_mask(out_lengths[:b], log_probs.size(1)) & ok[:b].unsqueeze(1)  # ok[b:] is the same
    return (kl.sum(-1) * real).sum()


class CtcModel(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        vocab_size: int,
        blank_id: int = 0,
        spec_augment: bool = True,
        time_masks: int = 2,
        time_mask_width: int = 40,
        freq_masks: int = 2,
        freq_mask_width: int = 15,
        encoder_lr_scale: float = 1.0,
        gain_db: float = 0.0,
        time_warp: int = 0,
        time_mask_max_fraction: float = 0.15,
        vtlp_warp: float = 0.0,
        consistency: float = 0.0,
        entropy_weight: float = 0.0,
        inter_ctc_weight: float = 0.0,
        inter_ctc_layer: int = 0,
        adversary: SpeakerAdversary | None = None,
    ):
        super().__init__()
        self.adversary = adversary  # ``ctc.speaker_adversary``, training only (decode drops "adversary.")
        self.consistency = consistency
        self.entropy_weight = entropy_weight
        self.gain_db = gain_db
        self.vtlp_warp = vtlp_warp
        self.encoder_lr_scale = encoder_lr_scale
        self.encoder = encoder
        self.output = nn.Linear(encoder.output_dim, vocab_size)
        self.blank_id = blank_id
        self.inter_weight = inter_ctc_weight
        if inter_ctc_weight > 0:
            dims = layer_widths(encoder)
            if not 0 <= inter_ctc_layer <= len(dims):
                raise SpeechBudgetError(
                    f"ctc.inter_ctc_layer {inter_ctc_layer}: the encoder has {len(dims)} blocks (0 = the middle one)"
                )
            self.inter_layer = (inter_ctc_layer or len(dims) // 2) - 1
            self.inter_ctc = nn.Linear(dims[self.inter_layer], vocab_size)
        self.augment = spec_augment and encoder.input_dim > 1  # SpecAugment is for spectrograms
        self.spec_augment = lhotse_spec_augment(
            time_masks, time_mask_width, time_mask_max_fraction, freq_masks, freq_mask_width, time_warp
        )
        #: lhotse asks for at least one maskable frame: shorter utterances are left as they are
        self.min_frames = math.ceil(1.0 / time_mask_max_fraction)
        self.freeze_encoder = False

    def optimizer_groups(self, lr: float):
        """The head at ``lr``, the encoder at ``lr * encoder_lr_scale`` (one plain group when equal)."""
        return encoder_head_groups(self, self.encoder, lr, self.encoder_lr_scale)

    def head_macs_per_frame(self) -> int:
        adversary = self.adversary.macs_per_frame() if self.adversary is not None else 0
        inter = self.inter_ctc.in_features * self.inter_ctc.out_features if self.inter_weight > 0 else 0
        return self.output.in_features * self.output.out_features + adversary + inter

    def log_probs(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(features, lengths)
        return F.log_softmax(self.output(out.hidden).float(), dim=-1), out.lengths

    def augment_features(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """In training only: random gain, vocal tract length perturbation, then SpecAugment on each
        utterance's own frames (so time warp and the mask fraction never see the padding).
        ``model.eval()`` returns ``x`` as is."""
        if not (self.training and self.augment):
            return x
        if self.gain_db > 0:
            x = random_gain(x, lengths, self.gain_db)
        x = vtlp(x, self.vtlp_warp)
        x = x.clone()
        with torch_seeded_python_numpy():
            for i, n in enumerate(lengths.tolist()):
                if n >= self.min_frames:
                    x[i, :n] = self.spec_augment(x[i : i + 1, :n])[0]
        return x

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        x, lengths = batch["features"], batch["lengths"]
        x = self.augment_features(x, lengths)
        inter = self.training and self.inter_weight > 0 and not self.freeze_encoder
        if self.freeze_encoder:
            with torch.no_grad():
                out = self.encoder(x, lengths)
            hidden, out_lengths = out.hidden.detach(), out.lengths
        else:
            out = self.encoder(x, lengths, return_layers=inter)
            hidden, out_lengths = out.hidden, out.lengths
        log_probs = F.log_softmax(self.output(hidden).float(), dim=-1)
        tokens, tok_len = batch["tokens"], batch["token_lengths"]
        need = torch.tensor(
            [ctc_min_frames(tokens[i], int(tok_len[i])) for i in range(tokens.size(0))],
            device=out_lengths.device,
        )
        ok = (need <= out_lengths) & (tok_len > 0)
        mixed = self.training and "mix_partner" in batch and bool((batch["mix_weight"] < 1).any())
        if mixed:  # ``ctc.mixup``: the partner's transcript must fit too
            partner = batch["mix_partner"].to(tokens.device)
            ok = ok & (need[partner] <= out_lengths) & (tok_len[partner] > 0)
        n_ok, n_tokens = int(ok.sum()), max(int(tok_len[ok].sum()), 1)
        if n_ok == 0:  # keep the graph so DDP and backward stay well-defined
            loss = log_probs.sum() * 0.0
        elif mixed:
            loss = self._mixed_loss(log_probs, out_lengths, batch, partner, ok)
        else:
            loss = self._ctc(log_probs, out_lengths, tokens, tok_len, ok, "sum") / n_tokens
        stats = {"ctc_infeasible": float((~ok).sum()), "utterances": float(n_ok)}
        if inter and n_ok and not mixed:
            middle = F.log_softmax(self.inter_ctc(out.layers[self.inter_layer]).float(), dim=-1)
            middle_loss = self._ctc(middle, out_lengths, tokens, tok_len, ok, "sum") / n_tokens
            stats["ctc"], stats["inter_ctc"] = float(loss.detach()), float(middle_loss.detach())
            loss = (1 - self.inter_weight) * loss + self.inter_weight * middle_loss
        if self.training and batch.get(VIEWS) == 2 and self.consistency > 0 and n_ok:
            agree = views_disagreement(log_probs, out_lengths, ok) / n_tokens
            stats.setdefault("ctc", float(loss.detach()))
            stats["consistency"] = float(agree.detach())
            loss = loss + self.consistency * agree
        if self.training and self.entropy_weight > 0 and n_ok:
            entropy = mean_frame_entropy(log_probs, out_lengths, ok)
            stats.setdefault("ctc", float(loss.detach()))
            stats["frame_entropy"] = float(entropy.detach())
            loss = loss - self.entropy_weight * entropy
        if self.training and self.adversary is not None:
            ce, confusion, stats["speaker_accuracy"] = self.adversary(hidden, out_lengths, batch["speakers"])
            stats["ctc"] = stats.get("ctc", float(loss.detach()))
            stats["speaker_ce"], stats["speaker_confusion"] = float(ce.detach()), float(confusion.detach())
            loss = loss + ce + self.adversary.weight * confusion
        return loss, {"loss": float(loss.detach()), **stats}

    def _ctc(
        self,
        log_probs: torch.Tensor,
        out_lengths: torch.Tensor,
        tokens: torch.Tensor,
        tok_len: torch.Tensor,
        ok: torch.Tensor,
        reduction: str,
    ) -> torch.Tensor:
        """The CTC loss of the utterances ``ok`` against ``tokens``."""
        return F.ctc_loss(
            log_probs[ok].transpose(0, 1),
            tokens[ok],
            out_lengths[ok],
            tok_len[ok],
            blank=self.blank_id,
            reduction=reduction,
            zero_infinity=True,
        )

    def _mixed_loss(
        self,
        log_probs: torch.Tensor,
        out_lengths: torch.Tensor,
        batch: Dict[str, torch.Tensor],
        partner: torch.Tensor,
        ok: torch.Tensor,
    ) -> torch.Tensor:
        """``ctc.mixup``'s loss: each utterance's CTC loss against its own transcript and its partner's,
        weighted as its frames were mixed (``data/mixup.py``), per token of the weighted transcripts."""
        tokens, tok_len = batch["tokens"], batch["token_lengths"]
        w = batch["mix_weight"].to(log_probs.device, log_probs.dtype)[ok]
        own = self._ctc(log_probs, out_lengths, tokens, tok_len, ok, "none")
        theirs = self._ctc(log_probs, out_lengths, tokens[partner], tok_len[partner], ok, "none")
        tokens_seen = (w * tok_len[ok] + (1 - w) * tok_len[partner][ok]).sum().clamp(min=1)
        return (w * own + (1 - w) * theirs).sum() / tokens_seen
