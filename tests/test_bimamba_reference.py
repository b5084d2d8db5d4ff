"""BiMamba and AuM (Fo-Bi) compute what they computed before the block's speed-up (issue 15): same
parameter names, same outputs and gradients for fixed weights and a padded batch (reference made
by the old code with ``tests/data/make_bimamba_reference.py``).

The float64 tolerances allow for the CPU: another machine's BLAS and code generation (AVX-512 against
AVX2) round float64 differently, which the scan's recurrence carries into the gradients at up to ~2e-7
of a gradient's largest value; a change of the math moves them by far more."""

import pytest
import torch
from encoder_checks import REFERENCE_DATA, close_to, reference_maker

make_ref = reference_maker("bimamba")


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_DATA / "bimamba_reference.pt")


_close = close_to


@pytest.mark.parametrize("name", sorted(make_ref.SPECS))
def test_same_names_outputs_and_gradients_float64(reference, name):
    ref = reference[name]
    got = make_ref.compute(make_ref.build_model(name))
    assert got["names"] == ref["names"]
    assert torch.equal(got["lengths"], ref["lengths"])
    assert _close(got["hidden"], ref["hidden"], 1e-6, 1e-8)
    assert _close(got["layers"], ref["layers"], 1e-6, 1e-8)
    assert abs(got["loss"].item() - ref["loss"].item()) < 1e-9 * abs(ref["loss"].item())
    for n in ref["names"]:
        assert _close(got["grads"][n], ref["grads"][n], 1e-5, 2e-6), n


@pytest.mark.parametrize("name", sorted(make_ref.SPECS))
def test_float32_path_matches_reference(reference, name):
    """The float32 path (compiled scan where it builds) agrees with the float64 reference."""
    ref = reference[name]
    model = make_ref.build_model(name).float()
    x, lengths = make_ref.inputs(model)
    out = model(x.float(), lengths)
    hidden = make_ref.valid(out.hidden, out.lengths)
    assert _close(hidden, ref["hidden"], 1e-4, 1e-5)
    weights = torch.linspace(-1, 1, hidden.numel()).view_as(hidden)
    (hidden.double().square() + weights * hidden).sum().backward()
    for n, p in model.named_parameters():
        assert _close(p.grad, ref["grads"][n], 1e-3, 1e-4), n
