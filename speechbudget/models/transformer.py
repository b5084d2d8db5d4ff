"""HuBERT-style Transformer encoder: front end, convolutional position embedding, attention blocks.

* Position: a wide grouped 1-D convolution over time (wav2vec2/HuBERT; kernel 128, 16 groups,
  optional weight norm) added to the input, instead of absolute or relative position tables, so any
  length works. Padded frames are zeroed before it, so a real frame sees the same zeros whether the
  utterance is followed by padding or by the end of the tensor.
* Blocks: post-LN as in HuBERT Base (``norm_first=False``) or pre-LN (``norm_first=True``, more
  stable for deep/slim stacks). Attention is ``F.scaled_dot_product_attention`` with a key padding
  mask; the FFN uses GELU.

Presets follow HuBERT Base and the "slim vs small" comparison of arXiv 2409.16295: at equal
parameters a deeper, narrower model beats the usual few-layer small one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpeechBudgetError
from .base import Encoder, EncoderOutput, make_pad_mask
from .frontends import build_frontend
from .tome import merged_output, parse_tome, run_merged

FRONTENDS = {"fbank": (100.0, 80), "waveform": (16000.0, 1)}  # kind -> (input rate Hz, input dim)


def check_frontend(frontend: str, input_dim: Optional[int]) -> tuple:
    """(input_rate_hz, input_dim) of a front-end kind; shared with the BiMamba encoder."""
    if frontend not in FRONTENDS:
        raise SpeechBudgetError(f"unknown frontend {frontend!r}; set frontend to 'fbank' or 'waveform'")
    rate, default_dim = FRONTENDS[frontend]
    if frontend == "waveform" and input_dim not in (None, 1):
        raise SpeechBudgetError("the waveform frontend takes mono samples: leave input_dim unset or 1")
    return rate, int(input_dim or default_dim)


def check_features(features: torch.Tensor, input_dim: int, frontend: str) -> None:
    """Fail early, with a fix, when features do not match the configured front end."""
    ok = features.dim() == 3 and features.size(-1) == input_dim
    if frontend == "waveform":
        ok = ok or features.dim() == 2
    if not ok:
        raise SpeechBudgetError(
            f"the {frontend} frontend expects features (B, T, {input_dim}); got {tuple(features.shape)} "
            "- check the encoder's frontend/input_dim against the prepared features"
        )


class ConvPositionEmbedding(nn.Module):
    """Grouped conv over time whose GELU output is added to the input (wav2vec2-style)."""

    def __init__(self, dim: int, kernel: int = 128, groups: int = 16, weight_norm: bool = True):
        super().__init__()
        self.kernel = kernel
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=(4.0 / (kernel * dim)) ** 0.5)
        nn.init.zeros_(conv.bias)
        if weight_norm:  # one norm per kernel tap, as in wav2vec2 (dim=2)
            conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.conv = conv

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        y = self.conv(x.transpose(1, 2))
        if self.kernel % 2 == 0:  # padding k/2 on both sides gives one frame too many
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention; ``attn_mask`` (B, 1, 1, T) is True where keys may be attended."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, return_keys: bool = False):
        """``attn_mask`` may also be additive floats (token merging's log-size bias). With
        ``return_keys`` the keys (B, heads, T, head_dim) come back too: token merging matches on them."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = self.out(y.transpose(1, 2).reshape(b, t, d))
        return (y, k) if return_keys else y


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, activation_dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.gelu(self.up(x))))


class TransformerBlock(nn.Module):
    """Attention + FFN with residuals; LayerNorm before (pre-LN) or after (post-LN) each."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        norm_first: bool,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(dim, heads, attention_dropout)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, merge: Optional[Callable] = None
    ) -> torch.Tensor:
        """``merge(x, keys) -> fewer tokens`` runs between attention and FFN (token merging)."""
        if self.norm_first:
            y, keys = self.attn(self.norm1(x), attn_mask, return_keys=True)
            x = x + self.dropout(y)
            if merge is not None:
                x = merge(x, keys)
            return x + self.dropout(self.ffn(self.norm2(x)))
        y, keys = self.attn(x, attn_mask, return_keys=True)
        x = self.norm1(x + self.dropout(y))
        if merge is not None:
            x = merge(x, keys)
        return self.norm2(x + self.dropout(self.ffn(x)))


class TransformerEncoder(Encoder):
    """Front end (50 Hz) -> conv position embedding -> ``layers`` Transformer blocks."""

    frame_rate_hz = 50.0

    def __init__(
        self,
        dim: int = 768,
        layers: int = 12,
        heads: int = 12,
        ffn_dim: int = 3072,
        norm_first: bool = False,
        frontend: str = "fbank",
        input_dim: Optional[int] = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_drop: float = 0.0,
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        pos_conv_weight_norm: bool = True,
        tome: Optional[Dict[str, Any]] = None,
    ):
        """``tome``: token merging, e.g. ``{"r": 8}`` (see :mod:`.tome`); with ``"unmerge": True``
        the output keeps one frame per input frame, for CTC and HuBERT."""
        super().__init__()
        self.tome = parse_tome(tome)
        self.input_rate_hz, self.input_dim = check_frontend(frontend, input_dim)
        if layers < 1 or dim < 1 or ffn_dim < 1:
            raise SpeechBudgetError("transformer dim, layers and ffn_dim must be positive")
        if dim % heads:
            raise SpeechBudgetError(f"transformer dim {dim} must be divisible by heads {heads}")
        if dim % pos_conv_groups:
            raise SpeechBudgetError(
                f"transformer dim {dim} must be divisible by pos_conv_groups {pos_conv_groups}"
            )
        self.frontend_kind = frontend
        self.output_dim = dim
        self.norm_first = norm_first
        self.layer_drop = layer_drop
        self.frontend = build_frontend(frontend, self.input_dim, dim)
        self.input_dropout = nn.Dropout(dropout)
        self.pos_conv = ConvPositionEmbedding(dim, pos_conv_kernel, pos_conv_groups, pos_conv_weight_norm)
        # post-LN normalises after the position conv (before block 1); pre-LN after the last block
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, ffn_dim, norm_first, dropout, attention_dropout, activation_dropout)
            for _ in range(layers)
        )

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> EncoderOutput:
        check_features(features, self.input_dim, self.frontend_kind)
        x, lengths = self.frontend(features, lengths)
        pad_mask = make_pad_mask(lengths, x.size(1))
        x = self.input_dropout(x)
        x = x + self.pos_conv(x, pad_mask)
        if not self.norm_first:
            x = self.norm(x)
        x = self.input_dropout(x)
        if self.tome is not None:
            return self._merged_blocks(x, lengths, return_layers)
        attn_mask = key_mask(pad_mask)
        layers: List[torch.Tensor] = []
        for block in self.blocks:
            if not (self.training and self.layer_drop > 0 and torch.rand(()) < self.layer_drop):
                x = block(x, attn_mask)
            x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
            layers.append(x)
        if self.norm_first:
            x = self.norm(x).masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return EncoderOutput(hidden=x, lengths=lengths, layers=layers if return_layers else None)

    def _merged_blocks(self, x: torch.Tensor, lengths: torch.Tensor, return_layers: bool) -> EncoderOutput:
        """The block stack with token merging; a dropped layer (layer drop) merges nothing."""
        x, layers = run_merged(self.blocks, self.tome, x, lengths, 0, self.layer_drop if self.training else 0)
        return merged_output(self.tome, self.norm if self.norm_first else None, x, layers, return_layers)


def key_mask(pad_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, T) True where a key is real. Frame 0 always counts, so an empty utterance gives
    finite (ignored) outputs instead of NaNs that would poison the gradients of the batch."""
    valid = ~pad_mask
    valid[:, :1] = True
    return valid[:, None, None, :]


def _preset(dim: int, layers: int, heads: int, **extra: Any) -> Dict[str, Any]:
    return {"dim": dim, "layers": layers, "heads": heads, "ffn_dim": 4 * dim, **extra}


#: Small vs slim: same block parameters (12 x 416^2 x 12 ~ 3 x 768^2 x 12), 4x the depth.
#: The tiny trio share (layers x dim^2) and position-conv size (dim^2 / groups) for CPU studies.
PRESETS: Dict[str, Dict[str, Any]] = {
    "transformer-base": _preset(768, 12, 12),
    "transformer-small": _preset(768, 3, 12, norm_first=True),
    "transformer-slim": _preset(416, 12, 8, norm_first=True),
    "transformer-tiny": _preset(192, 4, 4, norm_first=True),
    "transformer-tiny-slim": _preset(96, 16, 4, norm_first=True, pos_conv_groups=4),
    "transformer-tiny-wide": _preset(384, 1, 6, norm_first=True, pos_conv_groups=64),
}


def build(**config: Any) -> TransformerEncoder:
    return TransformerEncoder(**config)
