"""Make ``bimamba_reference.pt``: outputs and gradients of small BiMamba / AuM (Fo-Bi) encoders in
float64, for fixed weights and a padded batch. Run once with the code *before* a speed-up
(``python tests/data/make_bimamba_reference.py``); ``tests/test_bimamba_reference.py`` checks the
current code against it. Only real frames are compared: padded frames are masked by the encoder."""

from pathlib import Path

import torch

from speechbudget.models.presets import build_encoder

SPECS = {
    "bimamba": {"preset": "bimamba-xs", "dim": 32, "layers": 2, "cls_token": True},
    "aum": {"preset": "aum-tiny", "dim": 32, "layers": 2, "aum_type": "Fo-Bi", "max_frames": 96},
}


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_encoder(SPECS[name]).double()
    with torch.no_grad():  # spread the decays and step sizes so every part of the block matters
        for n, p in model.named_parameters():
            if n.endswith("A_log") or n.endswith("A_b_log"):
                p.add_(torch.randn_like(p) * 0.5)
            if n.endswith("D") or n.endswith("conv.bias") or n.endswith("dt_proj.bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def inputs(model):
    gen = torch.Generator().manual_seed(1)
    frames = 96
    x = torch.randn(3, frames, int(model.input_dim), generator=gen, dtype=torch.float64)
    return x, torch.tensor([frames, 61, 37])


def valid(hidden, lengths):
    idx = torch.arange(hidden.size(1)).unsqueeze(0)
    return hidden * (idx < lengths.unsqueeze(1)).unsqueeze(-1).to(hidden.dtype)


def compute(model) -> dict:
    x, lengths = inputs(model)
    out = model(x, lengths, return_layers=True)
    hidden = valid(out.hidden, out.lengths)
    weights = torch.linspace(-1, 1, hidden.numel(), dtype=hidden.dtype).view_as(hidden)
    loss = (hidden.square() + weights * hidden).sum()
    loss.backward()
    return {
        "names": [n for n, _ in model.named_parameters()],
        "lengths": out.lengths,
        "hidden": hidden.detach(),
        "layers": torch.stack([valid(layer, out.lengths) for layer in out.layers]).detach(),
        "loss": loss.detach(),
        "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()},
    }


def main() -> None:
    ref = {name: compute(build_model(name)) for name in SPECS}
    torch.save(ref, Path(__file__).parent / "bimamba_reference.pt")


if __name__ == "__main__":
    main()
