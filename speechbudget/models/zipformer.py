"""Zipformer encoder (Yao et al., "Zipformer: A faster and better encoder for automatic speech
recognition", arXiv 2310.11230), as used by k2SSL for HuBERT-style pretraining.

Shape of the model::

    features -> frontend (50 Hz, dims[0]) -> stack 0 .. stack 5 -> combine -> [downsample] -> hidden

Each stack runs its blocks at 50 Hz / ``downsampling[i]`` (default 1,2,4,8,4,2: a U-Net in time)
with its own width ``dims[i]``. Between stacks the channel count is cut or zero-padded. A stack
with downsampling > 1 averages groups of frames (learned weights), runs its blocks, repeats frames
back up and mixes the result with its input through a learned per-channel bypass. The output has
``max(dims)`` channels: the last stack's output, with the channels it lacks taken from the most
recent stack that has them (so the widest middle stack still reaches the output).

``output_downsampling=1`` keeps 50 Hz (SSL; labels at 50 Hz), 2 gives 25 Hz (icefall ASR).

``return_layers=True`` gives one entry per block, in order: that block's output turned into
what its stack would output if the stack ended there (repeated back to 50 Hz and mixed with the
stack input by the stack's bypass; for 50 Hz stacks just the block output), then output-
downsampled like ``hidden``. So every entry is ``(B, T', dims[stack])`` at the encoder's output
frame rate and frame-aligned with ``hidden`` — k-means labels from any block line up with the
frames the loss uses, and blocks inside slow stacks still carry 50 Hz detail through the bypass.
The last block of a stack gives exactly that stack's output. ``layer_dims`` lists the widths.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import SpeechBudgetError
from .base import Encoder, EncoderOutput, make_pad_mask
from .frontends import build_frontend
from .zipformer_layers import (
    Bypass,
    Downsample,
    ZipformerBlock,
    compact_rel_positions,
    fit_channels,
    upsample,
)

IntOrSeq = Union[int, Sequence[int]]


class ZipformerOutput(EncoderOutput, tuple):
    """An :class:`EncoderOutput` that is also the tuple ``(hidden, lengths[, layers])``.

    ``torch.jit.trace`` (and so fvcore's FLOP counter) only accepts tensors, tuples, lists and
    dicts as outputs; being a tuple as well lets it trace the model as is.
    """

    def __new__(
        cls, hidden: torch.Tensor, lengths: torch.Tensor, layers: Optional[List[torch.Tensor]] = None
    ):
        return tuple.__new__(cls, (hidden, lengths) if layers is None else (hidden, lengths, layers))


class ZipformerStack(nn.Module):
    """Blocks of one width run at 50 Hz / ``downsample``, returned at the stack-input rate."""

    def __init__(self, dim: int, num_layers: int, downsample: int, pos_dim: int, **block_kwargs):
        super().__init__()
        self.factor = downsample
        self.pos_dim = pos_dim
        self.blocks = nn.ModuleList(
            ZipformerBlock(dim, pos_dim=pos_dim, **block_kwargs) for _ in range(num_layers)
        )
        if downsample > 1:
            self.downsample = Downsample(downsample)
            self.out_bypass = Bypass(dim)

    def _back_to_input_rate(self, x_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return x
        return self.out_bypass(x_in, upsample(x, self.factor, x_in.size(1)))

    def forward(
        self, x_in: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x = x_in
        if self.factor > 1:
            x = self.downsample(x, lengths)
            lengths = self.downsample.output_lengths(lengths)
        pad = make_pad_mask(lengths, x.size(1))
        pos_emb = compact_rel_positions(x.size(1), self.pos_dim, x.device, x.dtype)
        per_layer = []
        for block in self.blocks:
            x = block(x, pos_emb, pad)
            if return_layers:
                per_layer.append(self._back_to_input_rate(x_in, x))
        out = per_layer[-1] if return_layers else self._back_to_input_rate(x_in, x)
        return out, per_layer


def _per_stack(value: IntOrSeq, n: int, name: str) -> Tuple[int, ...]:
    """An int (same for every stack) or one value per stack -> tuple of length n."""
    values = (value,) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise SpeechBudgetError(f"zipformer {name} needs {n} values (one per stack), got {len(values)}")
    return values


class Zipformer(Encoder):
    """Frontend + multi-rate Zipformer stacks. See the module docstring for the data flow."""

    def __init__(
        self,
        num_layers: IntOrSeq = (2, 2, 3, 4, 3, 2),
        dims: IntOrSeq = (192, 256, 448, 768, 448, 192),
        feedforward_dims: IntOrSeq = (512, 768, 1024, 1536, 1024, 768),
        downsampling: Sequence[int] = (1, 2, 4, 8, 4, 2),
        num_heads: IntOrSeq = (4, 4, 4, 8, 4, 4),
        kernel_sizes: IntOrSeq = (31, 31, 15, 15, 15, 31),
        query_head_dim: int = 32,
        value_head_dim: int = 12,
        pos_head_dim: int = 4,
        pos_dim: int = 48,
        output_downsampling: int = 1,
        frontend: str = "fbank",
        input_dim: Optional[int] = None,
        utterance_cmn: bool = False,  # fbank: subtract each utterance's mean log-mel (Conv2dSubsampling)
        dropout: float = 0.0,  # on every residual branch in training (no parameters: a fine-tuning knob)
    ):
        super().__init__()
        n = len(downsampling)
        self.downsampling = _per_stack(downsampling, n, "downsampling")
        self.dims = _per_stack(dims, n, "dims")
        self.num_layers = _per_stack(num_layers, n, "num_layers")
        feedforward_dims = _per_stack(feedforward_dims, n, "feedforward_dims")
        num_heads = _per_stack(num_heads, n, "num_heads")
        kernel_sizes = _per_stack(kernel_sizes, n, "kernel_sizes")
        self._check_config(kernel_sizes, output_downsampling, pos_dim, frontend)
        if not 0.0 <= dropout < 1.0:
            raise SpeechBudgetError(f"zipformer dropout must be in [0, 1), got {dropout}")

        self.frontend_kind = frontend
        self.input_dim = input_dim if input_dim is not None else (80 if frontend == "fbank" else 1)
        if frontend == "waveform" and self.input_dim != 1:
            raise SpeechBudgetError("the waveform frontend takes input_dim 1 (one sample per step)")
        self.input_rate_hz = 100.0 if frontend == "fbank" else 16000.0
        self.output_downsampling = output_downsampling
        self.frame_rate_hz = 50.0 / output_downsampling
        self.output_dim = max(self.dims)
        self.layer_dims = [d for d, n_l in zip(self.dims, self.num_layers) for _ in range(n_l)]

        if utterance_cmn and frontend != "fbank":
            raise SpeechBudgetError("zipformer utterance_cmn needs the fbank frontend")
        self.frontend = build_frontend(frontend, self.input_dim, self.dims[0], utterance_cmn)
        self.stacks = nn.ModuleList(
            ZipformerStack(
                dim=self.dims[i],
                num_layers=self.num_layers[i],
                downsample=self.downsampling[i],
                pos_dim=pos_dim,
                feedforward_dim=feedforward_dims[i],
                num_heads=num_heads[i],
                query_head_dim=query_head_dim,
                value_head_dim=value_head_dim,
                pos_head_dim=pos_head_dim,
                kernel_size=kernel_sizes[i],
                dropout=dropout,
            )
            for i in range(n)
        )
        if output_downsampling > 1:
            self.output_downsample = Downsample(output_downsampling)

    def _check_config(self, kernel_sizes, output_downsampling: int, pos_dim: int, frontend: str) -> None:
        if min(self.num_layers) < 1 or min(self.downsampling) < 1:
            raise SpeechBudgetError("zipformer num_layers and downsampling must be >= 1 for every stack")
        if frontend not in ("fbank", "waveform"):
            raise SpeechBudgetError(f"unknown zipformer frontend {frontend!r}; choose 'fbank' or 'waveform'")
        if any(k % 2 == 0 for k in kernel_sizes):
            raise SpeechBudgetError(f"zipformer kernel_sizes must be odd, got {list(kernel_sizes)}")
        if output_downsampling not in (1, 2):
            raise SpeechBudgetError("zipformer output_downsampling must be 1 (50 Hz) or 2 (25 Hz)")
        if pos_dim % 2:
            raise SpeechBudgetError(f"zipformer pos_dim must be even, got {pos_dim}")

    def encoder_params(self) -> int:
        """Parameters excluding the frontend: what icefall's Zipformer2 class counts."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("frontend."))

    def _combine_stacks(self, outputs: List[torch.Tensor]) -> torch.Tensor:
        """Last stack's output, extended with the channels it lacks from the latest wider stack."""
        pieces, have = [outputs[-1]], self.dims[-1]
        for out, dim in zip(reversed(outputs[:-1]), reversed(self.dims[:-1])):
            if dim > have:
                pieces.append(out[..., have:dim])
                have = dim
        return torch.cat(pieces, dim=-1)

    def _to_output_rate(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.output_downsampling == 1:
            return x
        return self.output_downsample(x, lengths)

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> EncoderOutput:
        if (
            not torch.jit.is_tracing()
            and self.frontend_kind == "fbank"
            and features.size(-1) != self.input_dim
        ):
            raise SpeechBudgetError(
                f"zipformer expects {self.input_dim}-dim features, got {features.size(-1)}; set input_dim"
            )
        x, lengths = self.frontend(features, lengths)
        x = x.masked_fill(make_pad_mask(lengths, x.size(1)).unsqueeze(-1), 0.0)

        stack_outputs, layers = [], []
        for prev_dim, dim, stack in zip(self.dims[:1] + self.dims, self.dims, self.stacks):
            x, per_layer = stack(fit_channels(x, prev_dim, dim), lengths, return_layers)
            stack_outputs.append(x)
            layers.extend(per_layer)

        hidden = self._to_output_rate(self._combine_stacks(stack_outputs), lengths)
        out_lengths = (
            lengths if self.output_downsampling == 1 else self.output_downsample.output_lengths(lengths)
        )
        out_pad = make_pad_mask(out_lengths, hidden.size(1)).unsqueeze(-1)
        hidden = hidden.masked_fill(out_pad, 0.0)
        if not return_layers:
            return ZipformerOutput(hidden, out_lengths)
        layers = [self._to_output_rate(layer, lengths).masked_fill(out_pad, 0.0) for layer in layers]
        return ZipformerOutput(hidden, out_lengths, layers)


_COMMON = dict(
    downsampling=(1, 2, 4, 8, 4, 2),
    num_heads=(4, 4, 4, 8, 4, 4),
    query_head_dim=32,
    value_head_dim=12,
    pos_head_dim=4,
    pos_dim=48,
    kernel_sizes=(31, 31, 15, 15, 15, 31),
)


def _preset(num_layers: tuple, dims: tuple, feedforward_dims: tuple) -> Dict:
    return dict(_COMMON, num_layers=num_layers, dims=dims, feedforward_dims=feedforward_dims)


#: name -> keyword arguments of :class:`Zipformer`. Sizes in comments are encoder-only
#: parameters (frontend excluded), the number icefall reports for the same config.
PRESETS: Dict[str, Dict] = {
    # name: _preset(num_layers, dims, feedforward_dims)
    # k2SSL Base (89.87M in icefall)
    "zipformer-base": _preset(
        (2, 2, 3, 4, 3, 2), (192, 256, 448, 768, 448, 192), (512, 768, 1024, 1536, 1024, 768)
    ),
    # k2SSL Large (301.09M)
    "zipformer-large": _preset(
        (2, 2, 4, 5, 4, 2), (256, 512, 768, 1024, 768, 512), (768, 1536, 2048, 3072, 2048, 1536)
    ),
    # icefall ASR "medium" (63.38M)
    "zipformer-medium": _preset(
        (2, 2, 3, 4, 3, 2), (192, 256, 384, 512, 384, 256), (512, 768, 1024, 1536, 1024, 768)
    ),
    # icefall ASR "small" (21.38M)
    "zipformer-small": _preset(
        (2, 2, 2, 2, 2, 2), (192, 256, 256, 256, 256, 256), (512, 768, 768, 768, 768, 768)
    ),
    # CPU-friendly planning sizes with about the same parameters, different depth/width:
    # tiny 12 blocks 4.62M, tiny-slim 21 blocks 4.70M, tiny-wide 6 blocks 4.62M
    # the smallest point of planning sweeps (~1.3M)
    "zipformer-nano": _preset((1, 1, 1, 1, 1, 1), (48, 64, 96, 96, 96, 64), (128, 192, 256, 256, 256, 192)),
    "zipformer-tiny": _preset(
        (2, 2, 2, 2, 2, 2), (64, 96, 128, 128, 128, 96), (192, 256, 384, 384, 384, 256)
    ),
    "zipformer-tiny-slim": _preset(
        (3, 3, 4, 4, 4, 3), (48, 64, 96, 96, 96, 64), (128, 192, 256, 256, 256, 192)
    ),
    "zipformer-tiny-wide": _preset(
        (1, 1, 1, 1, 1, 1), (96, 128, 192, 192, 192, 128), (256, 384, 512, 640, 512, 384)
    ),
    # between tiny and small (13.0M)
    "zipformer-xs": _preset(
        (2, 2, 2, 2, 2, 2), (128, 160, 192, 256, 192, 160), (384, 512, 640, 768, 640, 512)
    ),
}


def build(**config) -> Zipformer:
    """Keyword arguments of :class:`Zipformer` (e.g. a ``PRESETS`` entry) -> model."""
    return Zipformer(**config)
