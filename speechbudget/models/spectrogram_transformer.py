"""Audio Spectrogram Transformer (AST, Gong et al. 2021; the encoder FastAST speeds up).

16 x 16 patches of a 128-bin fbank with an overlapping stride 10 (learned positions) -> a CLS
token (and, for DeiT-initialised models, a distillation token) in front -> pre-LN Transformer
blocks (DeiT/ViT: GELU MLP x4) -> LayerNorm. Blocks are the project's
:class:`~.transformer.TransformerBlock`, so attention masking of padded patches is shared with the
speech Transformer.

The CLS state is at :meth:`cls_index` (0) and the distillation state at :meth:`dist_index` (1);
AST's head averages the two, which classification pooling does when both exist.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..errors import SpeechBudgetError
from .base import Encoder, EncoderOutput, make_pad_mask
from .patches import PatchEmbed
from .tome import merged_output, parse_tome, run_merged
from .transformer import TransformerBlock, key_mask


class AudioSpectrogramTransformer(Encoder):
    """(B, T, 128) fbank -> (B, prefix tokens + patches, dim); prefix = CLS [, distillation]."""

    def __init__(
        self,
        dim: int = 768,
        layers: int = 12,
        heads: int = 12,
        ffn_dim: Optional[int] = None,
        num_mel_bins: int = 128,
        patch: int = 16,
        stride: int = 10,
        freq_stride: Optional[int] = None,
        position: str = "learned",
        max_frames: int = 1024,
        feature_mean: Optional[float] = None,
        feature_std: Optional[float] = None,
        dist_token: bool = False,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        tome: Optional[Dict[str, Any]] = None,
    ):
        """``tome``: token merging as in FastAST, e.g. ``{"r": 8}`` (:mod:`.tome`); CLS and the
        distillation token are never merged and stay at :meth:`cls_index` / :meth:`dist_index`."""
        super().__init__()
        self.tome = parse_tome(tome)
        if min(dim, layers, heads) < 1 or dim % heads:
            raise SpeechBudgetError(
                f"ast needs positive dim/layers/heads with dim divisible by heads ({dim}, {heads})"
            )
        self.input_dim, self.input_rate_hz, self.output_dim = num_mel_bins, 100.0, dim
        self.patches = PatchEmbed(
            dim, num_mel_bins, patch, stride, freq_stride, position, max_frames, feature_mean, feature_std
        )
        self.frame_rate_hz = self.input_rate_hz / stride * self.patches.freq_patches  # patches per second
        self.num_prefix = 2 if dist_token else 1
        self.prefix = nn.Parameter(torch.randn(self.num_prefix, dim) * 0.02)  # CLS [, distillation]
        self.prefix_pos = nn.Parameter(torch.randn(self.num_prefix, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, ffn_dim or 4 * dim, True, dropout, attention_dropout)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def cls_index(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(lengths)

    def dist_index(self, lengths: torch.Tensor) -> Optional[torch.Tensor]:
        return torch.ones_like(lengths) if self.num_prefix == 2 else None

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, return_layers: bool = False
    ) -> EncoderOutput:
        x, lengths = self.patches(features, lengths)
        prefix = (self.prefix + self.prefix_pos).to(x.dtype).expand(x.size(0), -1, -1)
        x = self.dropout(torch.cat([prefix, x], dim=1))
        lengths = lengths + self.num_prefix
        pad_mask = make_pad_mask(lengths, x.size(1))
        if self.tome is not None:
            x, state = run_merged(self.blocks, self.tome, x, lengths, self.num_prefix)
            return merged_output(self.tome, self.norm, x, state, return_layers)
        attn_mask = key_mask(pad_mask)
        layers: List[torch.Tensor] = []
        for block in self.blocks:
            x = block(x, attn_mask).masked_fill(pad_mask.unsqueeze(-1), 0.0)
            layers.append(x)
        x = self.norm(x).masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return EncoderOutput(hidden=x, lengths=lengths, layers=layers if return_layers else None)


#: DeiT sizes, 12 layers each: tiny 192 (3 heads), small 384 (6), base 768 (12; AST's ~87M).
PRESETS: Dict[str, Dict[str, Any]] = {
    "ast-tiny": {"dim": 192, "layers": 12, "heads": 3},
    "ast-small": {"dim": 384, "layers": 12, "heads": 6},
    "ast-base": {"dim": 768, "layers": 12, "heads": 12},
}


def build(**config: Any) -> AudioSpectrogramTransformer:
    return AudioSpectrogramTransformer(**config)
