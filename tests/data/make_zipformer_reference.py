"""Writes ``zipformer_reference.pt``: outputs and gradients of zipformer-tiny for fixed weights
and input, computed in float64 by the Zipformer code as it stood before the speed-up (commit
98c520d). ``tests/test_zipformer_reference.py`` checks that the current code still computes them.

The weights are a function of each parameter's name and shape only (not of the init code or of
module construction order), so the check survives any change that keeps the state-dict keys.

Run: ``PYTHONPATH=. python tests/data/make_zipformer_reference.py`` (a few seconds).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from speechbudget.models.zipformer import PRESETS, build

OUT = Path(__file__).with_name("zipformer_reference.pt")
LENGTHS = (157, 118)  # fbank frames: 77 and 57 frames at 50 Hz, a partial group at every rate


def set_weights(model: torch.nn.Module) -> None:
    """Deterministic weights from (name, shape): matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.1^2),
    bypass scales around 0.5."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.dim() >= 2:
                value = noise * (p[0].numel() ** -0.5)
            elif "bypass" in name:
                value = 0.5 + 0.1 * noise
            else:
                value = 0.1 * noise
            p.copy_(value)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 80, generator=g, dtype=torch.float64)
    return x, torch.tensor(LENGTHS)


def grad_probe(name: str, shape: torch.Size) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(("probe/" + name).encode()))
    return torch.randn(shape, generator=g, dtype=torch.float64)


def compute(model: torch.nn.Module) -> dict:
    """hidden, per-layer sums, loss and per-parameter gradient norms and random projections."""
    x, lengths = inputs()
    out = model(x, lengths, return_layers=True)
    g = torch.Generator().manual_seed(99)
    target = torch.randn(out.hidden.shape, generator=g, dtype=torch.float64)
    loss = (out.hidden * target).sum() + sum(layer.square().mean() for layer in out.layers)
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    grads = [p.grad for _, p in model.named_parameters()]
    return {
        "names": names,
        "hidden": out.hidden.detach(),
        "lengths": out.lengths,
        "layer_sums": torch.stack([layer.detach().sum() for layer in out.layers]),
        "loss": loss.detach(),
        "grad_norms": torch.stack([gr.norm() for gr in grads]),
        "grad_probes": torch.stack([(gr * grad_probe(n, gr.shape)).sum() for n, gr in zip(names, grads)]),
    }


def build_reference_model() -> torch.nn.Module:
    model = build(**PRESETS["zipformer-tiny"]).double().train()
    set_weights(model)
    return model


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = compute(build_reference_model())
    result["hidden"] = result["hidden"].float()  # float64 math, stored in float32 to stay small
    torch.save(result, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB), loss {result['loss'].item():.10f}")
