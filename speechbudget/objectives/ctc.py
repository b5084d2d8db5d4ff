"""CTC fine-tuning head (torch.nn.functional.ctc_loss) with SpecAugment.

Utterances whose token sequence cannot fit the encoder output (CTC needs one frame per token
plus one blank between repeated tokens) are dropped from the loss and counted, so they never
turn into an infinite or NaN loss.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import Encoder, make_pad_mask
from .param_groups import encoder_head_groups


def ctc_min_frames(tokens: torch.Tensor, length: int) -> int:
    """Frames CTC needs for this label sequence: its length plus one per adjacent repeat."""
    t = tokens[:length]
    return int(length + (t[1:] == t[:-1]).sum()) if length > 1 else int(length)


def spec_augment(
    x: torch.Tensor, lengths: torch.Tensor, time_masks: int, time_width: int, freq_masks: int, freq_width: int
) -> torch.Tensor:
    """Zero random time spans and frequency bands (Park et al. 2019), per utterance."""
    x = x.clone()
    b, t, f = x.shape
    for i in range(b):
        n = int(lengths[i])
        for _ in range(freq_masks):
            w = int(torch.randint(0, freq_width + 1, ()))
            s = int(torch.randint(0, max(1, f - w), ()))
            x[i, :, s : s + w] = 0.0
        for _ in range(time_masks):
            w = min(int(torch.randint(0, time_width + 1, ())), n // 5)
            s = int(torch.randint(0, max(1, n - w), ()))
            x[i, s : s + w, :] = 0.0
    return x


def random_gain(x: torch.Tensor, lengths: torch.Tensor, max_db: float) -> torch.Tensor:
    """Each utterance louder or quieter by up to ``max_db`` (uniform in dB).

    On log-mel fbank a gain is an offset: amplitude x a adds 2 ln(a) = dB x ln(10) / 10 to every
    bin. A few training speakers recorded at one level otherwise leave a quieter test speaker
    outside everything the model has seen (FSDD's held-out speaker is ~15 dB quieter).
    """
    db = (torch.rand(x.size(0), 1, 1, device=x.device) * 2 - 1) * max_db
    valid = ~make_pad_mask(lengths.to(x.device), x.size(1)).unsqueeze(-1)
    return x + valid * db * (math.log(10.0) / 10.0)


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
    ):
        super().__init__()
        self.gain_db = gain_db
        self.encoder_lr_scale = encoder_lr_scale
        self.encoder = encoder
        self.output = nn.Linear(encoder.output_dim, vocab_size)
        self.blank_id = blank_id
        self.augment = spec_augment and encoder.input_dim > 1  # SpecAugment is for spectrograms
        self.aug = dict(
            time_masks=time_masks,
            time_width=time_mask_width,
            freq_masks=freq_masks,
            freq_width=freq_mask_width,
        )
        self.freeze_encoder = False

    def optimizer_groups(self, lr: float):
        """The head at ``lr``, the encoder at ``lr * encoder_lr_scale`` (one plain group when equal)."""
        return encoder_head_groups(self, self.encoder, lr, self.encoder_lr_scale)

    def head_macs_per_frame(self) -> int:
        return self.output.in_features * self.output.out_features

    def log_probs(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(features, lengths)
        return F.log_softmax(self.output(out.hidden).float(), dim=-1), out.lengths

    def forward(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
        x, lengths = batch["features"], batch["lengths"]
        if self.training and self.augment:
            if self.gain_db > 0:
                x = random_gain(x, lengths, self.gain_db)
            x = spec_augment(x, lengths, **self.aug)
        if self.freeze_encoder:
            with torch.no_grad():
                out = self.encoder(x, lengths)
            hidden, out_lengths = out.hidden.detach(), out.lengths
        else:
            out = self.encoder(x, lengths)
            hidden, out_lengths = out.hidden, out.lengths
        log_probs = F.log_softmax(self.output(hidden).float(), dim=-1)
        tokens, tok_len = batch["tokens"], batch["token_lengths"]
        need = torch.tensor(
            [ctc_min_frames(tokens[i], int(tok_len[i])) for i in range(tokens.size(0))],
            device=out_lengths.device,
        )
        ok = (need <= out_lengths) & (tok_len > 0)
        n_ok = int(ok.sum())
        if n_ok == 0:  # keep the graph so DDP and backward stay well-defined
            loss = log_probs.sum() * 0.0
        else:
            loss = F.ctc_loss(
                log_probs[ok].transpose(0, 1),
                tokens[ok],
                out_lengths[ok],
                tok_len[ok],
                blank=self.blank_id,
                reduction="sum",
                zero_infinity=True,
            ) / max(int(tok_len[ok].sum()), 1)
        return loss, {
            "loss": float(loss.detach()),
            "ctc_infeasible": float((~ok).sum()),
            "utterances": float(n_ok),
        }
