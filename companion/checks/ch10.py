"""Checks for chapter 10, Model deployment.

Each function takes the learner's implementation, compares it with the reference in
``companion.deploy`` (whose pruning mask matches ``torch.nn.utils.prune.l1_unstructured``
and whose distillation loss is written with ``F.kl_div``), and prints a verdict or raises
:class:`CheckFailed`. ``hidden=True`` runs the extra cases that nbgrader's hidden tests use.
Every random input comes from a seeded ``torch.Generator``, so grading is deterministic.

The ONNX parity check feeds real ONNX Runtime sessions: small MLPs written to ONNX by
:func:`companion.deploy.sequential_to_onnx` (in memory, in milliseconds), one faithful
export and one made from half-precision weights that must be caught.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import deploy as D
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, describe, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _device(device) -> torch.device:
    device = get_device() if device is None else device
    return torch.device(device) if isinstance(device, str) else device


# ---------------------------------------------------------------- int8 scale

def _weights(shape, seed: int, scale: float = 0.1, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


@learner_facing
def int8_scale(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``int8_scale(w, dim=None)``: max|w| / 127, per tensor or per channel (keepdim)."""
    device = _device(device)
    lopsided = _weights((6, 5), 2) - 0.3  # mostly negative: max(w) and max|w| differ
    cases = [Case("per tensor, a (64, 32) weight", (_weights((64, 32), 1),)),
             Case("per tensor, mostly negative weights", (lopsided,)),
             Case("per output channel (dim = 0) of a (8, 16) weight", (_weights((8, 16), 3),), {"dim": 0})]
    if hidden:
        zero_row = _weights((5, 7), 4)
        zero_row[2] = 0
        cases += [Case("per channel along dim = 1", (_weights((4, 9), 5),), {"dim": 1}),
                  Case("per channel of a conv weight (6, 3, 3, 3)", (_weights((6, 3, 3, 3), 6),), {"dim": 0}),
                  Case("float64 weights", (_weights((10, 10), 7, dtype=torch.float64),)),
                  Case("a channel that is all zeros (it gets scale 1)", (zero_row,), {"dim": 0}),
                  Case("an all-zero tensor (scale 1)", (torch.zeros(3, 4),)),
                  Case("a vector (a bias), per tensor", (_weights((12,), 8),)),
                  Case("dim = -1 means the last dimension", (_weights((3, 5), 9),), {"dim": -1})]

    def plain_max(w, dim=None):  # max, not max of |w|
        amax = w.amax() if dim is None else w.amax(dim=[d for d in range(w.dim()) if d != dim % w.dim()],
                                                   keepdim=True)
        return torch.where(amax > 0, amax / 127, torch.ones_like(amax))

    def by_128(w, dim=None):
        return D.int8_scale(w, dim) * 127 / 128

    def by_255(w, dim=None):
        return D.int8_scale(w, dim) * 127 / 255

    def no_keepdim(w, dim=None):
        return D.int8_scale(w, dim).squeeze() if dim is not None else D.int8_scale(w, dim)

    def reduced_along_dim(w, dim=None):  # per channel over the wrong axis
        if dim is None:
            return D.int8_scale(w)
        amax = w.abs().amax(dim=dim, keepdim=True)
        return torch.where(amax > 0, amax / 127, torch.ones_like(amax))

    def zero_scale(w, dim=None):
        s = D.int8_scale(w, dim)
        amax = w.abs().amax() if dim is None else w.abs().amax(
            dim=[d for d in range(w.dim()) if d != dim % w.dim()], keepdim=True)
        return torch.where(amax > 0, s, torch.zeros_like(s))

    check_function(fn, D.int8_scale, cases, name="int8_scale", device=device, rtol=1e-6, atol=0, hidden=hidden,
                   mistakes={"use the largest *magnitude*, w.abs().amax(): with max(w) the most negative weights"
                             " fall off the grid": plain_max,
                             "symmetric int8 uses -127..127 here, so divide by 127, not 128": by_128,
                             "divide by 127 (the largest int8 magnitude), not 255 (the width of uint8)": by_255,
                             "keep the reduced dimensions (keepdim=True) so the scale broadcasts against w,"
                             " e.g. shape (out, 1) for a (out, in) weight": no_keepdim,
                             "per channel along dim d means one scale per index of d: take the max over all"
                             " the *other* dimensions": reduced_along_dim,
                             "a channel of zeros must get scale 1, not 0 (quantize would divide by zero)":
                             zero_scale})


# ---------------------------------------------------------------- quantize / dequantize

def _quant_cases(hidden: bool) -> list[Case]:
    w = _weights((32, 16), 11)
    s = D.int8_scale(w)
    step = torch.tensor(0.125)  # a power of two: x / scale is exact, so the halves really are halves
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.25, -3.75]) * step
    cases = [Case("a (32, 16) weight with its per-tensor scale", (w, s)),
             Case("values exactly halfway between two steps (ties go to the even integer)", (halves, step)),
             Case("values beyond 127 steps are clamped", (torch.linspace(-40, 40, 17), step))]
    if hidden:
        w2 = _weights((8, 20), 12)
        cases += [Case("per-channel scales of shape (8, 1)", (w2, D.int8_scale(w2, dim=0))),
                  Case("-127.5 steps: clamped to -127, not -128", (torch.tensor([-63.75, -64.0, 63.75, 64.0]),
                                                                 torch.tensor(0.5))),
                  Case("float64 input", (_weights((7, 3), 13, dtype=torch.float64),
                                         torch.tensor(0.003, dtype=torch.float64))),
                  Case("a (2, 3, 4) tensor", (_weights((2, 3, 4), 14), torch.tensor(0.001))),
                  Case("zeros", (torch.zeros(5), torch.tensor(1.0)))]
    return cases


@learner_facing
def quantize(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``quantize(x, scale)`` -> int8: round half to even, clamp to [-127, 127]."""
    device = _device(device)

    def truncate(x, scale):
        return torch.clamp((x / scale).trunc(), -127, 127).to(torch.int8)

    def half_up(x, scale):
        return torch.clamp(torch.floor(x / scale + 0.5), -127, 127).to(torch.int8)

    def half_away(x, scale):
        r = x / scale
        return torch.clamp(torch.sign(r) * torch.floor(r.abs() + 0.5), -127, 127).to(torch.int8)

    def asymmetric(x, scale):
        return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)

    def no_clamp(x, scale):
        return torch.round(x / scale).to(torch.int8)

    def times(x, scale):
        return torch.clamp(torch.round(x * scale), -127, 127).to(torch.int8)

    def float_out(x, scale):
        return torch.clamp(torch.round(x / scale), -127, 127)

    check_function(fn, D.quantize, _quant_cases(hidden), name="quantize", device=device, rtol=0, atol=0,
                   hidden=hidden,
                   mistakes={"the values are truncated toward 0: round to the nearest integer with torch.round":
                             truncate,
                             "floor(r + 0.5) rounds halves up; torch.round rounds them to the even integer"
                             " (2.5 -> 2, -2.5 -> -2), the convention of PyTorch and NumPy": half_up,
                             "halves are rounded away from zero; torch.round rounds them to the even integer":
                             half_away,
                             "this chapter's symmetric int8 clamps to [-127, 127]; -128 is left out so that the"
                             " grid is symmetric": asymmetric,
                             "clamp before converting: .to(torch.int8) wraps values beyond 127 around"
                             " (200 becomes -56)": no_clamp,
                             "divide by the scale (x / scale), don't multiply": times,
                             "return int8: finish with .to(torch.int8)": float_out})


@learner_facing
def dequantize(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``dequantize(q, scale)`` -> q * scale in scale's dtype."""
    device = _device(device)
    g = _gen(21)
    q = torch.randint(-127, 128, (16, 8), generator=g, dtype=torch.int8)
    cases = [Case("int8 values with a per-tensor scale", (q, torch.tensor(0.0123))),
             Case("per-channel scales of shape (16, 1)", (q, torch.rand(16, 1, generator=g) * 0.1 + 1e-3))]
    if hidden:
        w_rt = _weights((5, 6), 22)
        cases += [Case("float64 scale", (q[:4], torch.tensor(0.5, dtype=torch.float64))),
                  Case("extremes -127 and 127", (torch.tensor([-127, 0, 127], dtype=torch.int8), torch.tensor(0.25))),
                  Case("a round trip of a weight", (D.quantize(w_rt, D.int8_scale(w_rt)), D.int8_scale(w_rt)))]

    def divided(q, scale):
        return q.to(scale.dtype) / scale

    def int_times(q, scale):
        return (q * scale).to(torch.int8)

    check_function(fn, D.dequantize, cases, name="dequantize", device=device, rtol=1e-6, atol=0, hidden=hidden,
                   mistakes={"multiply by the scale (q * scale): quantize divided by it": divided,
                             "return floats in the scale's dtype, not int8": int_times})


# ---------------------------------------------------------------- magnitude pruning

@learner_facing
def magnitude_mask(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``magnitude_mask(w, sparsity)``: the same mask as ``prune.l1_unstructured``."""
    device = _device(device)
    cases = [Case("a (20, 10) weight, sparsity 0.5", (_weights((20, 10), 31), 0.5)),
             Case("sparsity 0.9", (_weights((16, 8), 32), 0.9)),
             Case("30 weights, sparsity 0.33 (9.9 rounds to 10)", (_weights((30,), 33), 0.33))]
    if hidden:
        with_zeros = _weights((10, 10), 34)
        with_zeros[:3] = 0  # 30 weights already pruned: they go first
        cases += [Case("sparsity 0 keeps everything", (_weights((4, 5), 35), 0.0)),
                  Case("sparsity 1 removes everything", (_weights((4, 5), 36), 1.0)),
                  Case("weights that are already zero", (with_zeros, 0.4)),
                  Case("float64 conv weight (8, 3, 3, 3)", (_weights((8, 3, 3, 3), 37, dtype=torch.float64), 0.7)),
                  Case("7 weights, sparsity 0.5 (3.5 rounds to 4)", (_weights((7,), 38), 0.5)),
                  Case("a large (256, 784) layer", (_weights((256, 784), 39), 0.95))]

    def keep_smallest(w, s):
        return 1 - D.magnitude_mask(w, 1 - s)

    def signed(w, s):  # ranks w, not |w|
        k = round(s * w.numel())
        mask = torch.ones_like(w)
        if k:
            mask.view(-1)[torch.topk(w.flatten(), k, largest=False).indices] = 0
        return mask

    def truncated(w, s):
        return D.magnitude_mask(w, int(s * w.numel()) / w.numel())

    def kept_fraction(w, s):
        return D.magnitude_mask(w, 1 - s)

    def as_bool(w, s):
        return D.magnitude_mask(w, s).bool()

    check_function(fn, D.magnitude_mask, cases, name="magnitude_mask", device=device, rtol=0, atol=0, hidden=hidden,
                   mistakes={"the mask keeps the *smallest* weights: prune the smallest |w| and keep the largest":
                             keep_smallest,
                             "rank by magnitude, w.abs(): large negative weights matter as much as large"
                             " positive ones": signed,
                             "prune round(sparsity * w.numel()) weights (round, as torch.nn.utils.prune does),"
                             " not int(...), which rounds down": truncated,
                             "sparsity is the fraction *removed*, not the fraction kept": kept_fraction,
                             "return a mask of w's dtype (1.0 kept, 0.0 pruned), like prune's weight_mask,"
                             " e.g. torch.ones_like(w) with zeros written in": as_bool})


# ---------------------------------------------------------------- knowledge distillation

def _kd_case(label: str, n: int, c: int, seed: int, T: float, alpha: float, scale: float = 2.0,
             dtype=torch.float32) -> Case:
    g = _gen(seed)
    s = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale * 1.5).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return Case(label, (s, t, y), {"T": T, "alpha": alpha})


@learner_facing
def kd_loss(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``kd_loss(student_logits, teacher_logits, labels, T, alpha)``: value (and gradient when hidden)."""
    device = _device(device)
    cases = [_kd_case("batch of 8, 10 classes, T = 4, alpha = 0.9", 8, 10, 41, 4.0, 0.9),
             _kd_case("T = 2, alpha = 0.5", 16, 5, 42, 2.0, 0.5),
             _kd_case("T = 1, alpha = 1 (no label term)", 4, 3, 43, 1.0, 1.0)]
    if hidden:
        cases += [_kd_case("alpha = 0: plain cross-entropy", 6, 4, 44, 3.0, 0.0),
                  _kd_case("T = 10, float64", 32, 10, 45, 10.0, 0.7, dtype=torch.float64),
                  _kd_case("one example", 1, 10, 46, 4.0, 0.9),
                  _kd_case("confident teacher, logits up to about 300", 8, 10, 47, 1.0, 0.9, scale=100.0),
                  _kd_case("two classes, T = 0.5", 10, 2, 48, 0.5, 0.6)]

    def no_t2(s, t, y, T=4.0, alpha=0.9):
        return D.kd_loss(s, t, y, T, alpha) - alpha * (T * T - 1) * _kl(s, t, T)

    def reversed_kl(s, t, y, T=4.0, alpha=0.9):
        kl = F.kl_div(F.log_softmax(t / T, 1), F.log_softmax(s / T, 1), reduction="batchmean", log_target=True)
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    def teacher_not_softened(s, t, y, T=4.0, alpha=0.9):
        kl = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    def student_not_softened(s, t, y, T=4.0, alpha=0.9):
        kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    def mean_reduction(s, t, y, T=4.0, alpha=0.9):  # F.kl_div's reduction="mean": divided by N * C
        return alpha * T * T * _kl(s, t, T) / s.shape[1] + (1 - alpha) * F.cross_entropy(s, y)

    def swapped_alpha(s, t, y, T=4.0, alpha=0.9):
        return D.kd_loss(s, t, y, T, 1 - alpha)

    def ce_softened(s, t, y, T=4.0, alpha=0.9):
        return alpha * T * T * _kl(s, t, T) + (1 - alpha) * F.cross_entropy(s / T, y)

    def no_teacher_entropy(s, t, y, T=4.0, alpha=0.9):  # soft cross-entropy instead of KL
        soft_ce = -(F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1).mean()
        return alpha * T * T * soft_ce + (1 - alpha) * F.cross_entropy(s, y)

    def log_of_softmax(s, t, y, T=4.0, alpha=0.9):  # underflows for confident logits
        p_t = F.softmax(t / T, 1)
        kl = (p_t * (torch.log(p_t) - torch.log(F.softmax(s / T, 1)))).sum(1).mean()
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    check_function(fn, D.kd_loss, cases, name="kd_loss", device=device, rtol=1e-5, atol=1e-6, hidden=hidden,
                   quiet=True,
                   mistakes={"the soft term is missing its factor T**2 (it keeps the soft gradients as large as"
                             " the hard ones when T grows)": no_t2,
                             "the KL divergence is the wrong way round: KL(teacher || student) ="
                             " sum p_teacher * (log p_teacher - log p_student)": reversed_kl,
                             "soften the teacher too: softmax(teacher_logits / T)": teacher_not_softened,
                             "soften the student too: log_softmax(student_logits / T)": student_not_softened,
                             "average the KL over the batch only ('batchmean'): sum over classes, divide by N,"
                             " not by N * C": mean_reduction,
                             "alpha weighs the *soft* (teacher) term and 1 - alpha the cross-entropy with the"
                             " labels": swapped_alpha,
                             "the cross-entropy with the labels uses the plain logits, without the temperature":
                             ce_softened,
                             "that is the soft cross-entropy; the KL divergence also subtracts the teacher's own"
                             " entropy, sum p_t * log p_t": no_teacher_entropy,
                             "log(softmax(...)) underflows to log(0) for confident logits; use F.log_softmax":
                             log_of_softmax})
    n = len(cases)
    if hidden:  # the gradient reaching the student's logits
        for case in cases[:2] + cases[4:5]:
            s, t, y = (a.to(device) for a in case.args)
            mine = s.clone().requires_grad_(True)
            ref = s.clone().requires_grad_(True)
            out = run_learner(fn, "kd_loss", Case(case.label, (mine, t, y), case.kwargs), context=case.label)
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                raise CheckFailed(f"`kd_loss` on case '{case.label}': the result is not differentiable with"
                                  " respect to student_logits (was something detached or converted to a number?).")
            (g_mine,) = torch.autograd.grad(out, mine)
            (g_ref,) = torch.autograd.grad(D.kd_loss(ref, t, y, **case.kwargs), ref)
            problem = compare(g_mine, g_ref, rtol=1e-4, atol=1e-6, path="the gradient with respect to student_logits")
            if problem:
                raise CheckFailed(f"`kd_loss` on case '{case.label}': {problem}")
            n += 1
    passed("kd_loss", n, device, hidden)


def _kl(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)


# ---------------------------------------------------------------- ONNX parity

def _parity_model(seed: int, sizes=(784, 32, 10), dropout: float = 0.3):
    torch.manual_seed(seed)
    model = D.mlp(sizes, dropout=dropout)
    with torch.no_grad():
        for layer in D.linear_layers(model):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=_gen(seed + layer.out_features)) * 0.2)
    return model


def _half_precision_copy(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.parameters():
            p.copy_(p.half().float())
    return broken


@learner_facing
def onnx_parity(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``onnx_parity(model, session, x, atol)`` -> ``(max_abs_diff, ok)`` on real ONNX Runtime sessions.

    The model comes in training mode (with dropout): a parity check must evaluate it in
    eval mode. One session is exported faithfully; another from half-precision weights.
    """
    device = _device(device)
    # (label, model seed, sizes, session built from: "same" or "half", input name, batch, atol)
    settings = [("a faithful export, batch of 16", 1, (784, 32, 10), "same", "x", 16, 1e-4),
                ("an export made from half-precision weights (it must fail)", 2, (784, 32, 10), "half", "x", 16, 1e-4),
                ("a faithful export, one example", 3, (784, 64, 10), "same", "x", 1, 1e-4)]
    if hidden:
        settings += [("the input is called 'input.1', not 'x'", 4, (784, 16, 10), "same", "input.1", 8, 1e-4),
                     ("half-precision weights with a loose tolerance (it passes)", 5, (784, 32, 10), "half", "x", 8,
                      1.0),
                     ("a deeper model, 20 features", 6, (20, 64, 64, 3), "same", "features", 32, 1e-5),
                     ("a faithful export, but a tolerance of 0", 7, (784, 32, 10), "same", "x", 4, 0.0)]
    n = 0
    for label, seed, sizes, source, input_name, batch, atol in settings:
        model = _parity_model(seed, sizes)
        exported = model if source == "same" else _half_precision_copy(model)
        session = D.ort_session(D.sequential_to_onnx(exported.eval(), input_name=input_name))
        x = torch.rand(batch, sizes[0], generator=_gen(100 + seed))
        reference_model = copy.deepcopy(model).to(device)
        expected = D.onnx_parity(reference_model, session, x.to(device), atol)
        if atol == 0.0 and expected[1]:
            continue  # bit-identical on this machine: nothing to learn from this case
        learner_model = copy.deepcopy(model).train().to(device)  # as a learner might hand it over
        x_in = x.to(device)
        got = run_learner(fn, "onnx_parity", Case(label, (learner_model, session, x_in), {"atol": atol}),
                          context=f"case '{label}'")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"`onnx_parity` on case '{label}' returned {describe(got)}; expected a pair"
                              " (max_abs_diff, ok), e.g. `return diff, diff <= atol`.")
        diff, ok = got
        if isinstance(diff, (torch.Tensor, np.ndarray)) and np.asarray(_np(diff)).size == 1:
            diff = float(np.asarray(_np(diff)).reshape(()))
        if not isinstance(diff, (int, float, np.floating)) or isinstance(diff, bool):
            raise CheckFailed(f"`onnx_parity` on case '{label}': max_abs_diff is {describe(diff)}; expected a"
                              " single number (float(...) of the largest absolute difference).")
        if isinstance(ok, (torch.Tensor, np.ndarray)) and np.asarray(_np(ok)).size == 1:
            ok = bool(np.asarray(_np(ok)).reshape(()))
        if not isinstance(ok, (bool, np.bool_)):
            raise CheckFailed(f"`onnx_parity` on case '{label}': ok is {describe(ok)}; expected True or False.")
        hint = _parity_hint(float(diff), bool(ok), expected, model, session, x, atol)
        if not math.isclose(float(diff), expected[0], rel_tol=1e-3, abs_tol=1e-7):
            raise CheckFailed(f"`onnx_parity` on case '{label}': max_abs_diff is {float(diff):.4g}, expected"
                              f" {expected[0]:.4g}.{hint}")
        if bool(ok) != expected[1]:
            raise CheckFailed(f"`onnx_parity` on case '{label}': ok is {bool(ok)}, expected {expected[1]}"
                              f" (max_abs_diff {expected[0]:.3g}, atol {atol:g}): ok means max_abs_diff <= atol.{hint}")
        n += 1
    passed("onnx_parity (on ONNX Runtime sessions)", n, device, hidden)


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _parity_hint(diff: float, ok: bool, expected: tuple, model, session, x, atol: float) -> str:
    """Name the classic mistake that the learner's (diff, ok) matches, if any."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    delta = got - ref
    candidates = {
        "that is the *mean* absolute difference; parity is about the worst case, the max": float(np.abs(delta).mean()),
        "take the absolute value before the max: np.abs(a - b).max()": float(delta.max()),
        "take the absolute value before the max (this is the most negative difference)": float(delta.min()),
        "that is a relative difference; the exercise asks for the absolute one, |a - b|":
            float((np.abs(delta) / (np.abs(ref) + 1e-12)).max()),
    }
    for hint, value in candidates.items():
        if math.isclose(diff, value, rel_tol=1e-3, abs_tol=1e-9) and not math.isclose(diff, expected[0], rel_tol=1e-3,
                                                                                        abs_tol=1e-7):
            return f"\n  Hint: {hint}."
    if diff > max(100 * expected[0], 1e-3) and expected[1]:
        return ("\n  Hint: a much larger difference than a faithful export gives: is the model in evaluation mode?"
                " model.eval() turns dropout off (and torch.no_grad() saves memory).")
    if diff == expected[0] and ok != (diff <= atol):
        return "\n  Hint: ok should be exactly `max_abs_diff <= atol` (<=, so a difference equal to atol passes)."
    return ""
