"""How a task model splits its parameters between the optimizer's groups."""

from __future__ import annotations

from torch import nn


def encoder_head_groups(model: nn.Module, encoder: nn.Module, lr: float, encoder_lr_scale: float):
    """Optimizer parameter groups: the task head at ``lr``, a (pretrained) encoder at ``lr x scale``.

    One plain list when the scale is 1. A pretrained encoder wants a gentler rate than a fresh head
    (k2SSL fine-tunes at ~1/20 of its pretraining rate); CTC and classification both use this.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if encoder_lr_scale == 1.0:
        return params
    in_encoder = {id(p) for p in encoder.parameters()}
    return [
        {"params": [p for p in params if id(p) not in in_encoder], "lr": lr},
        {"params": [p for p in params if id(p) in in_encoder], "lr": lr * encoder_lr_scale},
    ]
