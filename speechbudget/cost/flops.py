"""Exact multiply-accumulate (MAC) counts for encoders, the currency of every compute budget.

We trace a model with fvcore and count only tensor contractions: linear / matmul / mm / bmm /
baddbmm / addmm / einsum / cdist, convolutions (any dimension, grouped, depthwise, transposed)
and ``scaled_dot_product_attention``. One multiply-add is one MAC; FLOPs are ``2 x MACs``
(the convention of ``torch.utils.flop_counter`` and of the 6ND training rule).

Why handles of our own: in torch 2.13 fvcore reports SDPA and ``aten::baddbmm`` as unsupported,
crashes on ``einsum`` (formats a float with ``:d``) and on 1-D ``matmul``, and undercounts a
matmul whose *second* operand carries the broadcast batch. Our contraction handles all compute
``prod(output shape) x contracted size``, which is right for every broadcasting case.

Ignored on purpose (negligible next to contractions, and not counted by ``FlopCounterMode``
either): elementwise math and activations, norms (layer/group/batch/instance/RMS), softmax,
reductions, pooling/upsampling, and pure data movement (views, indexing, cat, pad, flip...).
Attention masks are not honoured: SDPA is counted dense, ``B*H*Lq*Lk*(Dk+Dv)``. Shapes are the
traced ones, so an encoder that drops tokens on the way (token merging, ``models/tome.py``) is counted
at each block's actual token count for the traced input length.
Anything else fvcore sees but cannot count (e.g. ``aten::lstm``, custom autograd functions as
``prim::PythonOp.*``) is returned in ``unsupported`` so callers can warn.

A module whose forward fvcore cannot see into (e.g. a pure-PyTorch selective scan made of
elementwise ops) can state its own cost: define ``flop_macs(self, inputs: tuple, output) -> int``.
Its whole subtree's traced count is then replaced by the sum of ``flop_macs`` over its calls.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Sequence

import torch
from torch import nn

from ..errors import SpeechBudgetError

# ---------------------------------------------------------------------------------------------
# op handles (fvcore hands us lists of torch._C.Value; shapes are complete in a trace)


def _shape(value) -> List[int]:
    shape = value.type().sizes() if value.isCompleteTensor() else None
    if shape is None:
        raise ValueError(f"flop counter needs concrete shapes, got an incomplete tensor {value}")
    return list(shape)


def _contraction(lhs_index: int):
    """Handle for matmul-like ops: MACs = prod(output) x the left operand's last dim."""

    def handle(inputs, outputs) -> int:
        return math.prod(_shape(outputs[0])) * _shape(inputs[lhs_index])[-1]

    return handle


def _sdpa_handle(inputs, outputs) -> int:
    """Dense attention: Q.K^T (Lq*Lk*Dk) plus P.V (Lq*Lk*Dv) per batch x head."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _conv_handle(inputs, outputs) -> int:
    """Per output (non-transposed) or input (transposed) position: Cout x Cin/groups x kernel."""
    x, w, out = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
    transposed = bool(inputs[6].toIValue())
    positions = math.prod((x if transposed else out)[2:])
    return x[0] * positions * math.prod(w)


def _einsum_handle(inputs, outputs) -> int:
    equation = inputs[0].toIValue()
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    return einsum_macs(equation, shapes)


def _label_term(term: str, ndim: int) -> List[str]:
    """Letters of one einsum operand; ``...`` becomes right-aligned labels '.0', '.1', ..."""
    if "..." not in term:
        return list(term)
    head, tail = term.split("...")
    n_ellipsis = ndim - len(head) - len(tail)
    return list(head) + [f".{n_ellipsis - 1 - i}" for i in range(n_ellipsis)] + list(tail)


def einsum_macs(equation: str, shapes: List[List[int]]) -> int:
    """MACs of ``torch.einsum`` contracting operands pairwise left to right.

    Each pairwise step costs the product of all labels of both operands (broadcast sizes);
    the intermediate keeps the labels still needed later. Single-operand einsums (sums,
    transposes) cost 0, like other reductions.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = [_label_term(t, len(s)) for t, s in zip(lhs.split(","), shapes)]
    sizes: Dict[str, int] = {}
    for labels, shape in zip(terms, shapes):
        for label, size in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), size)
    if arrow:
        out_ndim = sum(1 for label in sizes if label.startswith("."))
        final = set(_label_term(rhs, len(rhs.replace("...", "")) + out_ndim))
    else:  # implicit output: labels seen once, plus broadcast dims
        seen = Counter(label for labels in terms for label in labels)
        final = {label for label, n in seen.items() if n == 1 or label.startswith(".")}
    macs, current = 0, terms[0]
    for i, nxt in enumerate(terms[1:], start=1):
        union = list(dict.fromkeys(current + nxt))
        macs += math.prod(sizes[label] for label in union)
        later = set(final).union(*[set(t) for t in terms[i + 1 :]])
        current = [label for label in union if label in later]
    return macs


def _native_mha_handle(inputs, outputs) -> int:
    """nn.MultiheadAttention's inference fast path: in-projections, dense attention, out-projection."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    batch, lq, dim = q
    lk = k[1]
    return batch * (lq * dim * dim + 2 * lk * dim * dim + lq * lk * 2 * dim + lq * dim * dim)


_REGISTERED: Dict[str, Any] = {}


def register_op_handle(op_name: str, handle) -> None:
    """Count an op this module cannot know, e.g. a model's own autograd Function, which fvcore
    traces as ``prim::PythonOp.<Name>``. The model module registers it, so cost stays below models."""
    _REGISTERED[op_name] = handle


_HANDLES = {
    "aten::linear": _contraction(0),
    "aten::matmul": _contraction(0),
    "aten::mm": _contraction(0),
    "aten::bmm": _contraction(0),
    "aten::mv": _contraction(0),
    "aten::dot": _contraction(0),
    "aten::addmm": _contraction(1),
    "aten::baddbmm": _contraction(1),
    "aten::addmv": _contraction(1),
    "aten::cdist": _contraction(0),
    "aten::einsum": _einsum_handle,
    "aten::_convolution": _conv_handle,
    "aten::scaled_dot_product_attention": _sdpa_handle,
    "aten::_native_multi_head_attention": _native_mha_handle,
}

# Elementwise math, activations, norms, softmax, reductions, pooling and data movement:
# O(elements) work next to O(elements x width) contractions. Each name is ignored in place too.
_NEGLIGIBLE = """
add sub rsub mul div true_divide floor_divide pow sqrt rsqrt exp exp2 expm1 log log2 log10 log1p
abs neg sign sgn reciprocal square sin cos tan sinh cosh asinh atan atan2 hypot erf erfc erfinv
logaddexp addcmul addcdiv lerp fmod remainder round ceil floor trunc frac xlogy nan_to_num
clamp clamp_min clamp_max maximum minimum where masked_fill masked_scatter masked_select
lt le gt ge eq ne isnan isinf isfinite logical_and logical_or logical_not logical_xor
bitwise_and bitwise_or bitwise_xor bitwise_not __and__ __or__ __xor__ __iand__ __ior__ all any
sigmoid tanh silu gelu relu relu6 leaky_relu elu selu celu softplus softsign hardtanh hardswish
hardsigmoid mish glu log_sigmoid prelu threshold dropout feature_dropout alpha_dropout
softmax log_softmax _softmax sum mean var std var_mean std_mean prod amax amin max min
argmax argmin cumsum cumprod logcumsumexp logsumexp norm linalg_vector_norm frobenius_norm
layer_norm group_norm batch_norm instance_norm rms_norm native_layer_norm _weight_norm
_weight_norm_interface norm_except_dim
avg_pool1d avg_pool2d max_pool1d max_pool2d adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_max_pool1d upsample_nearest1d upsample_nearest2d upsample_linear1d
upsample_bilinear2d grid_sampler pixel_shuffle cosine_similarity
view reshape flatten unflatten squeeze unsqueeze permute transpose t numpy_T mT expand
expand_as view_as reshape_as contiguous select slice narrow index index_put index_select
index_add index_copy gather scatter scatter_add scatter_reduce take_along_dim embedding one_hot
cat concat concatenate stack split split_with_sizes chunk unbind tensor_split roll flip
repeat repeat_interleave tile pad constant_pad_nd reflection_pad1d replication_pad1d unfold
tril triu diag diagonal diag_embed movedim swapaxes sort argsort topk unique bincount nonzero
searchsorted bucketize zeros ones full empty arange linspace eye rand randn randint randperm
rand_like randn_like bernoulli normal uniform multinomial zeros_like ones_like empty_like
full_like new_zeros new_ones new_full new_empty new_tensor scalar_tensor tensor clone fill
zero copy to type_as detach alias lift_fresh size numel dim len item _shape_as_tensor
_unsafe_view as_strided resolve_conj resolve_neg Int Float Bool ScalarImplicit IntImplicit
FloatImplicit
""".split()
_IGNORED = [f"aten::{name}{suffix}" for name in _NEGLIGIBLE for suffix in ("", "_")]


def _zero(inputs, outputs) -> int:
    return 0


# ---------------------------------------------------------------------------------------------
# tracing wrapper and per-module overrides


def _flatten_tensors(obj: Any) -> List[torch.Tensor]:
    """Tensors inside dataclasses / dicts / sequences, in order: jit tracing accepts only these."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _flatten_tensors(item)]
    return []


class _Traceable(nn.Module):
    """Runs ``inner(*inputs)`` with the non-tensor inputs fixed and the output flattened."""

    def __init__(self, inner: nn.Module, inputs: tuple):
        super().__init__()
        self.inner = inner
        self.template = inputs

    def tensor_inputs(self) -> tuple:
        return tuple(x for x in self.template if isinstance(x, torch.Tensor))

    def forward(self, *tensors):
        it = iter(tensors)
        args = [next(it) if isinstance(x, torch.Tensor) else x for x in self.template]
        return tuple(_flatten_tensors(self.inner(*args)))


_ROOT = "inner"  # fvcore's name for the model inside the wrapper


def _relative(fvcore_name: str) -> str:
    """fvcore module name (``inner.encoder.0``) -> name within the model (``encoder.0``)."""
    return fvcore_name[len(_ROOT) + 1 :] if fvcore_name != _ROOT else ""


def _is_under(name: str, ancestor: str) -> bool:
    """``name`` lies strictly inside module ``ancestor`` ("" is the root)."""
    return name != ancestor and (ancestor == "" or name.startswith(ancestor + "."))


def _override_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """Outermost submodules (names relative to ``model``) that define ``flop_macs``."""
    found: Dict[str, nn.Module] = {}
    for name, mod in model.named_modules():  # parents come before their children
        if callable(getattr(mod, "flop_macs", None)) and not any(_is_under(name, o) for o in found):
            found[name] = mod
    return found


def _bound_inputs(mod: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """Forward's arguments in signature order, keywords and defaults bound into place."""
    try:
        bound = inspect.signature(mod.forward).bind(*args, **kwargs)
    except TypeError:
        return tuple(args) + tuple(kwargs.values())
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _record_calls(mods: Dict[str, nn.Module]):
    calls: Dict[str, List[tuple]] = {name: [] for name in mods}
    handles = []
    for name, mod in mods.items():

        def hook(m, args, kwargs, output, name=name):
            calls[name].append((_bound_inputs(m, args, kwargs), output))

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    return calls, handles


def _override_value(mod: nn.Module, calls: List[tuple]) -> int:
    total = 0
    for inputs, output in calls:
        macs = mod.flop_macs(inputs, output)
        if isinstance(macs, bool) or not isinstance(macs, numbers.Real) or macs < 0:
            raise TypeError(f"{type(mod).__name__}.flop_macs must return a non-negative int, got {macs!r}")
        total += int(macs)
    return total


# ---------------------------------------------------------------------------------------------
# public API


@dataclass
class FlopReport:
    macs: int
    by_module: Dict[str, int] = field(default_factory=dict)  # depth-1 and depth-2 module names
    unsupported: Dict[str, int] = field(default_factory=dict)  # op -> number of calls not counted

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _analysis(wrapper: _Traceable):
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(wrapper, wrapper.tensor_inputs())
    fa.set_op_handle(**_HANDLES, **_REGISTERED)
    # a zero handle rather than None: fvcore's own norm handles would otherwise take precedence
    fa.set_op_handle(**{name: _zero for name in _IGNORED})
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return fa


def count_macs(model: nn.Module, inputs: tuple) -> FlopReport:
    """Trace ``model(*inputs)`` once and count its multiply-accumulates.

    ``inputs`` may mix tensors and plain values (flags); outputs may be dataclasses or dicts.
    ``by_module`` maps module names of depth 1 and 2 (e.g. ``encoder``, ``encoder.0``) to MACs;
    modules inside a ``flop_macs`` override are folded into it, and zero entries are dropped.
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    wrapper = _Traceable(model, inputs)
    overrides = _override_modules(model)
    calls, handles = _record_calls(overrides)
    fvcore_log = logging.getLogger("fvcore")
    level = fvcore_log.level
    fvcore_log.setLevel(logging.ERROR)
    try:
        # grad on keeps nn.MultiheadAttention / TransformerEncoderLayer off their fused
        # inference kernels, so the trace shows the plain linear + SDPA ops we can count
        with torch.enable_grad():
            fa = _analysis(wrapper)
            fa.total()  # trace now, while the hooks record
    finally:
        for h in handles:
            h.remove()
        fvcore_log.setLevel(level)

    traced = {_relative(k): v for k, v in fa.by_module().items() if k}
    replaced = {name: _override_value(mod, calls[name]) for name, mod in overrides.items()}

    def adjusted(name: str) -> int:
        inside = [o for o in replaced if o == name or _is_under(o, name)]
        return traced.get(name, 0) - sum(traced.get(o, 0) for o in inside) + sum(replaced[o] for o in inside)

    by_module = {}
    for name in traced:
        if name and name.count(".") < 2 and not any(_is_under(name, o) for o in replaced):
            macs = adjusted(name)
            if macs:
                by_module[name] = macs

    unsupported = Counter(fa.unsupported_ops(""))
    for o in replaced:
        unsupported -= Counter(fa.unsupported_ops(_ROOT + ("." + o if o else "")))
    return FlopReport(macs=int(adjusted("")), by_module=by_module, unsupported=dict(unsupported))


def _dummy_input(encoder: nn.Module, seconds: float, batch: int) -> tuple:
    """Random input at the encoder's own rate and width, all frames valid.

    A private generator leaves the caller's RNG stream (and so their run's seed) untouched.
    """
    rate = float(getattr(encoder, "input_rate_hz", 100.0))
    dim = int(getattr(encoder, "input_dim", 80))
    frames = max(1, round(seconds * rate))
    dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), torch.float32)
    features = torch.randn(batch, frames, dim, generator=torch.Generator().manual_seed(0)).to(dtype)
    lengths = torch.full((batch,), frames, dtype=torch.int64)
    return features, lengths


def longest_input_seconds(encoder: nn.Module) -> float:
    """The longest input ``encoder`` accepts, in seconds (inf: any length)."""
    frames = getattr(encoder, "max_input_frames", None)
    return math.inf if frames is None else frames / float(getattr(encoder, "input_rate_hz", 100.0))


def module_cost(encoder: nn.Module, seconds: float = 10.0, batch: int = 1) -> dict:
    """Parameters and inference cost per second of audio of a built encoder.

    Cost is measured on ``seconds`` of input because attention makes it grow faster than
    linearly with length; an encoder that accepts no input that long (learned positions of a patch
    encoder: AuM with ``max_frames: 128`` takes 1.28 s) is counted on the longest it accepts, and
    ``seconds`` in the result says which. Building from a preset or config is the model catalogue's
    job (:func:`speechbudget.models.catalog.encoder_cost`), which keeps this layer below models.
    """
    if not 0 < seconds <= 600:  # longer: the dummy input alone would fill the memory
        raise SpeechBudgetError(f"seconds must be in (0, 600] (the audio length counted), got {seconds}")
    if int(batch) < 1:
        raise SpeechBudgetError(f"batch must be at least 1, got {batch}")
    seconds, batch = min(float(seconds), longest_input_seconds(encoder)), int(batch)
    was_training = encoder.training
    encoder.eval()  # inference graph: no dropout, no training-only branches
    try:
        report = count_macs(encoder, _dummy_input(encoder, seconds, batch))
    except RuntimeError as e:  # e.g. a kernel longer than the input: too short for the front end
        raise SpeechBudgetError(
            f"{seconds} s of audio is too short for this encoder ({str(e).splitlines()[0][:120]}); count more"
        ) from None
    finally:
        encoder.train(was_training)
    audio = seconds * batch
    gflops = lambda macs: 2.0 * macs / audio / 1e9  # noqa: E731
    out = {
        "params": sum(p.numel() for p in encoder.parameters()),
        "macs_per_audio_second": report.macs / audio,
        "gflops_per_audio_second": gflops(report.macs),
        "frame_rate_hz": float(encoder.frame_rate_hz),
        "seconds": seconds,
        "by_module": {name: gflops(m) for name, m in report.by_module.items()},
        "unsupported": dict(report.unsupported),
    }
    if callable(getattr(encoder, "encoder_params", None)):
        out["encoder_params"] = int(encoder.encoder_params())
    return out


#: clip lengths (s) an encoder whose cost per second depends strongly on length (token merging: a
#: short clip loses a larger share of its tokens) is counted at; batches are charged by interpolation
LENGTH_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 10.0)


def length_curve(
    encoder: nn.Module, grid: Sequence[float] = LENGTH_GRID, count: Callable[..., dict] = module_cost
) -> List[List[float]]:
    """``[[seconds, MACs per second at that length], ...]``: the encoder counted at each length it
    accepts (the grid ends at its longest input, when that is shorter than the grid); ``count`` is
    :func:`module_cost` or a caching wrapper of it (the model catalogue's)."""
    longest = longest_input_seconds(encoder)
    lengths = sorted({min(float(sec), longest) for sec in grid})
    return [[sec, float(count(encoder, seconds=sec)["macs_per_audio_second"])] for sec in lengths]


def macs_rate(cost: Dict[str, Any], seconds: float) -> float:
    """MACs per input second charged for a (padded) clip of ``seconds``: the experiment's single
    10-second rate, or, when it has a ``macs_by_length`` curve, its total MACs interpolated linearly
    between the counted lengths (the first length's rate below it, the last one's above)."""
    curve = cost.get("macs_by_length")
    if not curve or seconds <= 0:
        return float(cost["macs_per_input_second"])
    if seconds <= curve[0][0]:
        return float(curve[0][1])
    for (s0, r0), (s1, r1) in zip(curve, curve[1:]):
        if seconds <= s1:
            w = (seconds - s0) / (s1 - s0)
            return ((1 - w) * s0 * r0 + w * s1 * r1) / seconds
    return float(curve[-1][1])


#: training = forward + backward; the backward pass costs about twice the forward (gradients
#: w.r.t. activations and w.r.t. weights, each one contraction of the same size)
TRAIN_FACTOR = 3


def training_flops(
    seconds: float, macs_per_second: float, head_macs_per_frame: float = 0.0, frame_rate_hz: float = 0.0
) -> float:
    """Training FLOPs of ``seconds`` of (padded) input: the one formula the trainer charges budgets
    with and the planner and calibration predict with.

    ``2 x TRAIN_FACTOR x (encoder MACs + head MACs per output frame x frames)``. Optimizer
    updates, data loading and elementwise work outside the traced modules are not counted.
    """
    macs = seconds * (macs_per_second + head_macs_per_frame * frame_rate_hz)
    return 2.0 * TRAIN_FACTOR * macs
