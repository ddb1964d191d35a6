"""Checks for chapter 4, Convolutional networks.

Each function takes the learner's implementation, compares it with the references in
``companion.cnn`` (which are tested against ``F.conv2d``, ``F.max_pool2d`` and
torchvision's published parameter counts), and prints a verdict or raises
:class:`CheckFailed`. ``hidden=True`` runs the extra cases that nbgrader's hidden tests
use. The convolution and pooling checks refuse PyTorch's own ``conv2d`` / ``max_pool2d``
inside the learner's function: the exercise is to write them.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import cnn as C
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def _forbidden(name: str, *targets: tuple[object, str]):
    """Within the block, calling any of ``targets`` (module, attribute) raises CheckFailed."""
    saved = [(module, attr, getattr(module, attr)) for module, attr in targets if hasattr(module, attr)]

    def refuse(*args, **kwargs):
        raise CheckFailed(f"`{name}` calls PyTorch's own implementation; the exercise is to write it"
                          " yourself from tensor operations (padding, unfold, a matrix product or a max).")

    try:
        for module, attr, _ in saved:
            setattr(module, attr, refuse)
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


def _guarded(fn: Callable, name: str, *targets) -> Callable:
    if not callable(fn):
        return fn

    def call(*args, **kwargs):
        with _forbidden(name, *targets):
            return fn(*args, **kwargs)

    call.__name__ = getattr(fn, "__name__", name)
    return call


# ---------------------------------------------------------------- output size

@learner_facing
def conv_output_size(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``conv_output_size(n, kernel, stride=1, padding=0, dilation=1)`` -> an int."""
    cases = [
        Case("28 pixels, 3x3, padding 1 ('same')", (28, 3), {"padding": 1}),
        Case("28 pixels, 5x5, no padding", (28, 5)),
        Case("28 pixels, 3x3, stride 2 (the division is not exact)", (28, 3), {"stride": 2}),
        Case("AlexNet's first layer: 224, 11x11, stride 4, padding 2", (224, 11), {"stride": 4, "padding": 2}),
        Case("a 2x2 pool with stride 2 on 7 pixels", (7, 2), {"stride": 2}),
        Case("dilation 2 on 10 pixels", (10, 3), {"dilation": 2}),
    ]
    if hidden:
        cases += [
            Case("ResNet stem: 224, 7x7, stride 2, padding 3", (224, 7, 2, 3)),
            Case("kernel as large as the input", (5, 5)),
            Case("1 pixel, 1x1", (1, 1)),
            Case("stride 3 with padding", (15, 4), {"stride": 3, "padding": 1}),
            Case("dilation, stride and padding together", (1000, 7), {"stride": 3, "padding": 3, "dilation": 2}),
            Case("padding larger than the kernel needs", (6, 3), {"padding": 3}),
            Case("3x3 pool, stride 2, padding 1 on 112", (112, 3, 2, 1)),
            Case("an even kernel with dilation 3", (50, 4), {"stride": 2, "padding": 1, "dilation": 3}),
        ]

    def ceil(n, kernel, stride=1, padding=0, dilation=1):
        return math.ceil((n + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1

    check_function(fn, C.conv_output_size, cases, name="conv_output_size", rtol=0, atol=0, hidden=hidden,
                   quiet=True,
                   mistakes={"round *down* (floor, `//`): a window that would stick out past the padded"
                             " border is not computed (yours rounds up)": ceil,
                             "use integer division `//`: the result is a whole number of positions":
                             lambda n, kernel, stride=1, padding=0, dilation=1:
                             (n + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1,
                             "the padding is added on *both* sides: n + 2 * padding":
                             lambda n, kernel, stride=1, padding=0, dilation=1:
                             C.conv_output_size(n + padding, kernel, stride, 0, dilation) if padding else None,
                             "the padding is ignored": lambda n, kernel, stride=1, padding=0, dilation=1:
                             C.conv_output_size(n, kernel, stride, 0, dilation) if padding else None,
                             "count the first position too: ... // stride + 1":
                             lambda n, kernel, stride=1, padding=0, dilation=1:
                             C.conv_output_size(n, kernel, stride, padding, dilation) - 1,
                             "a dilated kernel spans dilation * (kernel - 1) + 1 pixels: the dilation is ignored":
                             lambda n, kernel, stride=1, padding=0, dilation=1:
                             C.conv_output_size(n, kernel, stride, padding, 1) if dilation != 1 else None})
    got = run_learner(fn, "conv_output_size", cases[2], context="case '28 pixels, 3x3, stride 2'")
    if not isinstance(got, int) or isinstance(got, bool):
        raise CheckFailed(f"`conv_output_size` should return a Python int, but it returned {type(got).__name__}"
                          f" {got!r}. Use integer division `//` (and int(...) if you used math.floor).")
    passed("conv_output_size", len(cases), None, hidden)


# ---------------------------------------------------------------- conv2d

def _conv_cases(hidden: bool) -> list[Case]:
    g = _gen(402 if hidden else 401)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=dtype)

    cases = [
        Case("3 channels in, 4 out, 3x3, no padding", (r(2, 3, 8, 8), r(4, 3, 3, 3), r(4))),
        Case("padding 1, stride 2", (r(2, 3, 9, 9), r(4, 3, 3, 3), r(4)), {"stride": 2, "padding": 1}),
        Case("one channel, a lopsided 2x3 kernel, no bias", (r(1, 1, 5, 6), r(1, 1, 2, 3), None)),
        Case("padding 2, 5x5 kernel", (r(3, 2, 7, 7), r(5, 2, 5, 5), r(5)), {"padding": 2}),
    ]
    if hidden:
        f64 = torch.float64
        cases += [
            Case("float64, stride (2, 1), padding (1, 2), 3x5 kernel",
                 (r(3, 5, 9, 11, dtype=f64), r(6, 5, 3, 5, dtype=f64), r(6, dtype=f64)),
                 {"stride": (2, 1), "padding": (1, 2)}),
            Case("1x1 kernel", (r(2, 8, 4, 5), r(3, 8, 1, 1), r(3))),
            Case("kernel as large as the input", (r(2, 3, 4, 4), r(7, 3, 4, 4), r(7))),
            Case("16 channels, stride 3, padding 1", (r(1, 16, 10, 10), r(8, 16, 3, 3), r(8)),
                 {"stride": 3, "padding": 1}),
            Case("no bias, stride (1, 3), padding (0, 1)", (r(4, 2, 6, 9), r(3, 2, 3, 3), None),
                 {"stride": (1, 3), "padding": (0, 1)}),
            Case("one pixel wide", (r(2, 1, 7, 1), r(2, 1, 3, 1), r(2)), {"padding": (1, 0)}),
        ]
    return cases


def _swap(v):
    return tuple(reversed(v)) if isinstance(v, (tuple, list)) else v


@learner_facing
def conv2d(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``conv2d(x, weight, bias=None, stride=1, padding=0)`` against ``F.conv2d`` (via the reference)."""
    device = get_device() if device is None else device
    guarded = _guarded(fn, "conv2d", (F, "conv2d"), (torch, "conv2d"), (torch, "convolution"), (F, "conv_transpose2d"))
    check_function(guarded, C.conv2d, _conv_cases(hidden), name="conv2d", device=device, rtol=1e-4, atol=1e-4,
                   hidden=hidden,
                   mistakes={"the kernel is flipped: that is the mathematical convolution. Deep-learning"
                             " 'convolution' (F.conv2d) is cross-correlation: slide the kernel as it is":
                             lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w.flip(-2, -1), b, stride, padding),
                             "the padding is missing: pad the input with zeros on every side first (F.pad)":
                             lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, b, stride, 0)
                             if padding else None,
                             "the stride is ignored: step the window by `stride` pixels":
                             lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, b, 1, padding)
                             if stride != 1 else None,
                             "the bias is missing: add bias[o] to every position of output channel o":
                             lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, None, stride, padding)
                             if b is not None else None,
                             "a (height, width) pair is swapped: stride[0] and padding[0] go along the height":
                             lambda x, w, b=None, stride=1, padding=0: C.conv2d(x, w, b, _swap(stride), _swap(padding))})


# ---------------------------------------------------------------- max pooling

def _pool_cases(hidden: bool) -> list[Case]:
    g = _gen(412 if hidden else 411)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=dtype)

    cases = [
        Case("2x2 windows (stride defaults to the kernel)", (r(2, 3, 6, 6), 2)),
        Case("3x3, stride 2, padding 1, all values negative", (-r(1, 2, 7, 7).abs() - 0.1, 3),
             {"stride": 2, "padding": 1}),
        Case("overlapping 2x3 windows, stride 1", (r(2, 2, 5, 8), (2, 3)), {"stride": 1}),
        Case("odd size: the last row and column are dropped", (r(1, 1, 5, 5), 2)),
    ]
    if hidden:
        cases += [
            Case("float64, kernel (3, 2), stride (2, 1), padding (1, 0)", (r(2, 3, 8, 6, dtype=torch.float64), (3, 2)),
                 {"stride": (2, 1), "padding": (1, 0)}),
            Case("1x1 windows with stride 2", (r(1, 4, 6, 6), 1), {"stride": 2}),
            Case("one window covering the whole image", (r(3, 5, 4, 4), 4)),
            Case("negative values, padding (0, 1)", (-r(2, 2, 6, 6).abs() - 1, (2, 2)), {"padding": (0, 1)}),
            Case("ties everywhere", (torch.ones(1, 2, 4, 4), 2)),
            Case("stride larger than the window", (r(1, 1, 9, 9), 2), {"stride": 3}),
        ]
    return cases


@learner_facing
def max_pool2d(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``max_pool2d(x, kernel_size, stride=None, padding=0)`` against ``F.max_pool2d`` (via the reference)."""
    device = get_device() if device is None else device
    guarded = _guarded(fn, "max_pool2d", (F, "max_pool2d"), (F, "max_pool2d_with_indices"), (torch, "max_pool2d"),
                       (F, "adaptive_max_pool2d"))

    def zero_padded(x, k, stride=None, padding=0):
        p = C._pair(padding)
        return C.max_pool2d(F.pad(x, (p[1], p[1], p[0], p[0])), k, stride, 0)

    check_function(guarded, C.max_pool2d, _pool_cases(hidden), name="max_pool2d", device=device, rtol=0, atol=0,
                   hidden=hidden,
                   mistakes={"the padding is filled with 0, which wins the max when every value in the window"
                             " is negative: pad with -inf (F.pad(..., value=float('-inf')))": zero_padded,
                             "when stride is None it should default to kernel_size (non-overlapping windows),"
                             " not 1": lambda x, k, stride=None, padding=0:
                             C.max_pool2d(x, k, 1, padding) if stride is None else None,
                             "this is average pooling: take the largest value of each window":
                             lambda x, k, stride=None, padding=0: C.avg_pool2d(x, k, stride, padding),
                             "the padding is ignored": lambda x, k, stride=None, padding=0:
                             C.max_pool2d(x, k, stride, 0) if padding else None,
                             "a (height, width) pair is swapped: index 0 goes along the height":
                             lambda x, k, stride=None, padding=0: C.max_pool2d(x, _swap(k), _swap(stride), _swap(padding))})


# ---------------------------------------------------------------- parameter count

@learner_facing
def conv_params(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``conv_params(in_channels, out_channels, kernel_size, bias=True, groups=1)`` -> an int."""
    cases = [
        Case("LeNet-5's first layer: 1 -> 6, 5x5", (1, 6, 5)),
        Case("VGG's first layer: 3 -> 64, 3x3", (3, 64, 3)),
        Case("64 -> 128, 3x3, no bias (before batch norm)", (64, 128, 3), {"bias": False}),
        Case("a 1x3 kernel given as a pair", (16, 32, (1, 3))),
        Case("AlexNet's conv2 split over two GPUs: 96 -> 256, 5x5, groups=2", (96, 256, 5), {"groups": 2}),
    ]
    if hidden:
        cases += [
            Case("depthwise: 32 -> 32, 3x3, groups=32", (32, 32, 3), {"groups": 32}),
            Case("AlexNet's conv1: 3 -> 96, 11x11", (3, 96, 11)),
            Case("1x1, no bias", (16, 8, 1), {"bias": False}),
            Case("a (3, 5) kernel", (8, 16, (3, 5))),
            Case("groups=4, no bias", (48, 24, 3), {"bias": False, "groups": 4}),
            Case("a (7, 1) kernel, bias", (5, 7, (7, 1)), {"bias": True}),
        ]

    def ignore_bias_flag(i, o, k, bias=True, groups=1):
        return C.conv_params(i, o, k, True, groups)

    def square_only(i, o, k, bias=True, groups=1):
        kh = k[0] if isinstance(k, (tuple, list)) else k
        return C.conv_params(i, o, kh, bias, groups) if isinstance(k, (tuple, list)) else None

    check_function(fn, C.conv_params, cases, name="conv_params", rtol=0, atol=0, hidden=hidden, quiet=True,
                   mistakes={"the biases are missing: each output channel has one bias (when bias=True)":
                             lambda i, o, k, bias=True, groups=1: C.conv_params(i, o, k, False, groups)
                             if bias else None,
                             "with bias=False there are no biases to count": ignore_bias_flag,
                             "each filter spans *all* its input channels: out * in * kh * kw weights":
                             lambda i, o, k, bias=True, groups=1: C.conv_params(1, o, k, bias, 1),
                             "with groups, each filter sees only in_channels / groups channels":
                             lambda i, o, k, bias=True, groups=1: C.conv_params(i, o, k, bias, 1)
                             if groups != 1 else None,
                             "a kernel given as a pair (kh, kw) has kh * kw weights per channel, not kh * kh":
                             square_only})
    got = run_learner(fn, "conv_params", cases[0], context="case 'LeNet-5's first layer'")
    if not isinstance(got, int) or isinstance(got, bool):
        raise CheckFailed(f"`conv_params` should return a Python int, but it returned {type(got).__name__} {got!r}.")
    passed("conv_params", len(cases), None, hidden)


# ---------------------------------------------------------------- residual block

def _randomize(module: nn.Module, seed: int) -> None:
    """Give every parameter and BN buffer distinct, deterministic values (so eval mode is not trivial)."""
    g = _gen(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var") or (name.endswith("weight") and t.ndim == 1):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.2)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) / math.sqrt(t[0].numel()))


def _describe_state(sd: dict) -> str:
    return "\n    ".join(f"{k}: {tuple(v.shape)}" for k, v in sd.items() if not k.endswith("num_batches_tracked"))


def _load_reference_weights(mine: nn.Module, ref: nn.Module, label: str) -> None:
    """Copy ``ref``'s parameters and buffers into the learner's block: by name, else in order of registration."""
    ref_sd, my_sd = ref.state_dict(), mine.state_dict()
    if set(ref_sd) == set(my_sd) and all(ref_sd[k].shape == my_sd[k].shape for k in ref_sd):
        mine.load_state_dict(ref_sd)
        return
    ref_items = [(k, v) for k, v in ref_sd.items() if not k.endswith("num_batches_tracked")]
    my_items = [(k, v) for k, v in my_sd.items() if not k.endswith("num_batches_tracked")]
    if len(ref_items) == len(my_items) and all(a[1].shape == b[1].shape for a, b in zip(ref_items, my_items)):
        mine.load_state_dict({**my_sd, **{mk: rv for (mk, _), (_, rv) in zip(my_items, ref_items)}})
        return
    raise CheckFailed(f"on {label}, the check could not copy the reference weights into your block: its parameters"
                      f" and buffers are\n    {_describe_state(my_sd)}\n  while the reference has\n    "
                      f"{_describe_state(ref_sd)}\n  Use the attribute names conv1, bn1, conv2, bn2 and shortcut.")


def _block_variants(ref: C.BasicBlock, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference block's weights combined in the classic wrong ways: hint -> output."""
    c1, c2 = ref.conv1, ref.conv2
    sc = ref.shortcut(x)
    h = F.relu(ref.bn1(c1(x)))
    main = ref.bn2(c2(h))
    stride_late = ref.bn2(F.conv2d(F.relu(ref.bn1(F.conv2d(x, c1.weight, padding=1))), c2.weight,
                                   stride=c1.stride, padding=1))
    return {
        "the last ReLU comes *after* adding the shortcut: relu(bn2(conv2(...)) + shortcut(x))":
            F.relu(main) + sc,
        "apply a ReLU after adding the shortcut": main + sc,
        "the shortcut is missing: add shortcut(x) (the identity, or the projection) before the last ReLU":
            F.relu(main),
        "the ReLU between the two convolutions is missing": F.relu(ref.bn2(c2(ref.bn1(c1(x)))) + sc),
        "each conv is followed by its batch norm, *then* the ReLU (conv -> BN -> ReLU)":
            F.relu(ref.bn2(c2(ref.bn1(F.relu(c1(x))))) + sc),
        "the stride belongs on the first 3x3 conv (conv1), not the second": F.relu(stride_late + sc),
    }


@learner_facing
def basic_block(cls: Callable, *, hidden: bool = False, device=None) -> None:
    """Check a ``BasicBlock(in_channels, out_channels, stride=1)`` module against ``companion.cnn.BasicBlock``.

    For each configuration: same parameter count, the reference weights copied in (by
    name, else in order), then outputs compared in training mode (batch statistics) and
    in evaluation mode (running statistics), in float64.
    """
    device = get_device() if device is None else device
    device = torch.device(device) if isinstance(device, str) else device
    configs = [("identity shortcut: 8 -> 8 channels, stride 1", 8, 8, 1, (4, 8, 8, 8)),
               ("projection shortcut: 8 -> 16 channels, stride 2", 8, 16, 2, (4, 8, 8, 8))]
    if hidden:
        configs += [("channels change, stride 1: 6 -> 12", 6, 12, 1, (3, 6, 7, 7)),
                    ("stride 2, same channels: 8 -> 8", 8, 8, 2, (2, 8, 9, 9)),
                    ("odd sizes: 3 -> 5, stride 2, 7x5 images", 3, 5, 2, (5, 3, 7, 5)),
                    ("one channel", 1, 1, 1, (4, 1, 6, 6))]
    g = _gen(421 if hidden else 420)
    for k, (label, c_in, c_out, stride, shape) in enumerate(configs):
        case = Case(label, (c_in, c_out, stride))
        ctx = f"BasicBlock({c_in}, {c_out}, stride={stride}) ({label})"
        mine = run_learner(cls, "BasicBlock", case, context=ctx)
        if not isinstance(mine, nn.Module):
            raise CheckFailed(f"`BasicBlock({c_in}, {c_out}, stride={stride})` should build an nn.Module"
                              f" (a class that subclasses nn.Module), but it gave {type(mine).__name__}.")
        ref = C.BasicBlock(c_in, c_out, stride)
        _randomize(ref, 430 + k)
        n_mine, n_ref = C.count_params(mine), C.count_params(ref)
        if n_mine != n_ref:
            msg = f"{ctx} has {n_mine:,} trainable parameters, expected {n_ref:,}."
            proj = n_ref - C.count_params(nn.Sequential(ref.conv1, ref.bn1, ref.conv2, ref.bn2))
            conv_biases = 2 * c_out + (c_out if proj else 0)
            if proj and n_mine == n_ref - proj:
                msg += (" Hint: the shapes change here (stride != 1 or a new channel count), so the shortcut needs a"
                        " projection: a 1x1 conv with the block's stride and no bias, followed by BatchNorm2d.")
            elif n_mine in (n_ref + 2 * c_out, n_ref + conv_biases):
                msg += " Hint: the convolutions take bias=False (the batch norm after each adds its own shift)."
            elif not proj and n_mine > n_ref:
                msg += (" Hint: with stride 1 and the same channel count the shortcut is the identity:"
                        " no projection, no parameters.")
            else:
                msg += f" The reference's parameters and buffers are\n    {_describe_state(ref.state_dict())}"
            raise CheckFailed(msg)
        _load_reference_weights(mine, ref, ctx)
        mine, ref = mine.to(device, torch.float64), ref.to(device, torch.float64)
        x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
        for training in (True, False):
            mine.train(training)
            ref.train(training)
            mode = "training mode" if training else "evaluation mode"
            before = x.clone()
            with torch.no_grad():
                got = run_learner(lambda inp: mine(inp), "BasicBlock.forward", Case(mode, (x,)),
                                  context=f"{ctx}, {mode}")
                expected = ref(x)
            if not torch.equal(x, before):
                raise CheckFailed(f"`BasicBlock.forward` changed its input x in place ({ctx}): keep x intact for the"
                                  " shortcut (avoid inplace=True ReLUs on x and `+=` into x).")
            problem = compare(got, expected, rtol=1e-7, atol=1e-9, path="the block's output")
            if problem:
                message = f"`BasicBlock` is not right on {ctx}, {mode}, input of shape {tuple(shape)}:\n  {problem}"
                with torch.no_grad():
                    if not training:
                        variants = _block_variants(ref, x)
                    else:  # batch statistics: run the variants on a copy so the running stats stay put
                        variants = _block_variants(_copy(ref), x)
                for hint, wrong in variants.items():
                    if wrong is not None and got.shape == wrong.shape and compare(got, wrong, rtol=1e-7, atol=1e-9) is None:
                        message += f"\n  Hint: {hint}"
                        break
                raise CheckFailed(message)
    passed("BasicBlock", 2 * len(configs), device, hidden)


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)
