"""The one encoder interface every model in speechbudget implements.

Input is features ``(B, T, F)`` with per-utterance ``lengths`` (frames); output is hidden
states ``(B, T', D)`` with output lengths, and optionally every layer's output (k-means
iteration 2 and layer probing read those). Padding must never change what real frames see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T', D)
    lengths: torch.Tensor  # (B,) int64, valid frames of ``hidden``
    layers: Optional[List[torch.Tensor]] = None  # each (B, T'', D_l), only when asked


class Encoder(nn.Module):
    """Base class: subclasses set ``output_dim`` and ``frame_rate_hz`` and implement forward."""

    output_dim: int
    #: output frames per second of audio (e.g. 50.0 for k2SSL's label rate)
    frame_rate_hz: float
    #: input feature frames per second (100 for 10 ms fbank, 16000 for raw waveform)
    input_rate_hz: float = 100.0
    #: feature dimension expected on input (80 for fbank, 1 for waveform)
    input_dim: int = 80

    # Subclasses define forward(features (B, T, F), lengths (B,), return_layers=False) -> EncoderOutput.

    @property
    def max_input_frames(self) -> Optional[int]:
        """The longest input this encoder accepts (a patch encoder's learned positions end there);
        None: any length."""
        return getattr(getattr(self, "patches", None), "max_input_frames", None)


def make_pad_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """``True`` at padded positions: ``(B, T)``. A ``max_len`` taken from ``x.size(1)`` is used as is
    (no ``int()``), so ``torch.jit.trace`` records it without warnings."""
    if max_len is None:
        max_len = int(lengths.max().item())
    idx = torch.arange(max_len, device=lengths.device)
    return idx.unsqueeze(0) >= lengths.unsqueeze(1)


@torch.no_grad()
def layer_widths(encoder: Encoder) -> List[int]:
    """The width of each entry ``return_layers=True`` gives (Zipformer stacks differ), from a forward pass
    over one second of zeros in eval mode; the encoder's training mode is left as it was."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        x = torch.zeros(1, int(encoder.input_rate_hz), encoder.input_dim, device=device)
        layers = encoder(x, torch.tensor([x.size(1)], device=device), return_layers=True).layers
    finally:
        encoder.train(was_training)
    return [int(layer.size(-1)) for layer in layers or []]
