"""The Zipformer computes what it computed before the speed-up: same state-dict keys, same
outputs and gradients for fixed weights and input (reference made by the old code with
``tests/data/make_zipformer_reference.py``).

The float64 tolerances allow for the CPU: the reference was made on one machine, and another's BLAS
(MKL's AVX-512 kernels against its AVX2 ones) rounds float64 sums differently, by up to ~5e-8 of a
tensor's largest value here; a change of the math moves these numbers by far more."""

import pytest
import torch
from encoder_checks import REFERENCE_DATA, close_to, reference_maker

make_ref = reference_maker("zipformer")


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_DATA / "zipformer_reference.pt")


_close = close_to


def test_same_keys_outputs_and_gradients_float64(reference):
    torch.manual_seed(0)
    model = make_ref.build_reference_model()
    assert [n for n, _ in model.named_parameters()] == reference["names"]
    got = make_ref.compute(model)
    assert torch.equal(got["lengths"], reference["lengths"])
    assert _close(got["hidden"], reference["hidden"], 1e-5, 1e-6)
    assert _close(got["layer_sums"], reference["layer_sums"], 1e-6, 1e-7)
    assert abs(got["loss"].item() - reference["loss"].item()) < 1e-7 * abs(reference["loss"].item())
    assert _close(got["grad_norms"], reference["grad_norms"], 1e-6, 1e-7)
    assert _close(got["grad_probes"], reference["grad_probes"], 1e-6, 1e-6)


def test_float32_training_path_matches_reference(reference):
    """The float32 path (where fast kernels may kick in) agrees with the float64 reference to
    float32 accuracy."""
    model = make_ref.build_reference_model().float()
    x, lengths = make_ref.inputs()
    out = model(x.float(), lengths, return_layers=True)
    assert _close(out.hidden, reference["hidden"], 1e-3, 1e-4)
    layer_sums = torch.stack([layer.double().sum() for layer in out.layers])
    assert _close(layer_sums, reference["layer_sums"], 1e-3, 1e-4)
    loss = out.hidden.double().square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
