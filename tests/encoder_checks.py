"""Checks every encoder family must pass, shared by the encoder test files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REFERENCE_DATA = Path(__file__).parent / "data"


def reference_maker(name: str):
    """``tests/data/make_<name>_reference.py`` as a module: the script that made a reference file
    with the code before a speed-up, whose builders the reference tests reuse."""
    spec = importlib.util.spec_from_file_location(
        f"make_{name}_ref", REFERENCE_DATA / f"make_{name}_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def close_to(a: torch.Tensor, b: torch.Tensor, rtol: float, atol_scale: float) -> bool:
    """``allclose`` in float64 with the absolute tolerance relative to the reference's largest value."""
    a, b = a.double(), b.double()
    return torch.allclose(a, b, rtol=rtol, atol=atol_scale * b.abs().max().item())


def make_batch(frontend: str, seed: int = 0):
    """Two utterances of different lengths (about 1.2 s and 0.9 s of audio)."""
    g = torch.Generator().manual_seed(seed)
    if frontend == "fbank":
        lengths = torch.tensor([121, 87])
        return torch.randn(2, 121, 80, generator=g), lengths
    lengths = torch.tensor([8000, 5777])
    return torch.randn(2, 8000, 1, generator=g), lengths


def with_junk_padding(x: torch.Tensor, lengths: torch.Tensor, extra: int) -> torch.Tensor:
    """Append ``extra`` frames and overwrite every padded frame with loud random junk."""
    x = torch.cat([x, torch.zeros(x.size(0), extra, x.size(2))], dim=1)
    for b, n in enumerate(lengths.tolist()):
        x[b, n:] = 10 * torch.randn_like(x[b, n:])
    return x


def assert_padding_invariant(model, frontend: str) -> None:
    x, lengths = make_batch(frontend)
    with torch.no_grad():
        ref = model(x, lengths, return_layers=True)
        junk = model(
            with_junk_padding(x, lengths, 3000 if frontend == "waveform" else 40), lengths, return_layers=True
        )
        alone = model(x[1:, : lengths[1]], lengths[1:])  # the short one with no padding at all
    assert torch.equal(ref.lengths, junk.lengths)
    for b, n in enumerate(ref.lengths.tolist()):
        assert n > 0
        assert (ref.hidden[b, :n] - junk.hidden[b, :n]).abs().max() < 1e-5
        for la, lb in zip(ref.layers, junk.layers):
            assert (la[b, :n] - lb[b, :n]).abs().max() < 1e-5
    n = int(ref.lengths[1])
    assert alone.lengths.tolist() == [n]
    assert (alone.hidden[0, :n] - ref.hidden[1, :n]).abs().max() < 1e-5
