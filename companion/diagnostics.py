"""Diagnosing and steering training: gradients, clipping, initialisation, the LR finder, class weights.

Chapter 8's references. Each matches its PyTorch counterpart where one exists:

======================================  ==============================================
companion                               PyTorch
======================================  ==============================================
:func:`clip_grad_norm`                  ``torch.nn.utils.clip_grad_norm_``
:func:`clip_grad_value`                 ``torch.nn.utils.clip_grad_value_``
:func:`fan_in_and_fan_out`              ``torch.nn.init._calculate_fan_in_and_fan_out``
:func:`calculate_gain`                  ``torch.nn.init.calculate_gain``
:func:`xavier_uniform_` / ``_normal_``  ``torch.nn.init.xavier_uniform_`` / ``xavier_normal_``
:func:`kaiming_uniform_` / ``_normal_`` ``torch.nn.init.kaiming_uniform_`` / ``kaiming_normal_``
:func:`class_weights`                   ``sklearn.utils.class_weight.compute_class_weight("balanced")``
======================================  ==============================================

Given the same ``torch.Generator`` state, the initialisers draw exactly the numbers
``torch.nn.init`` draws. The rest are tools the notebook uses: deep MLPs to probe
(:func:`deep_mlp`), per-layer gradient norms and activation statistics, a clipping hook
for any optimizer, the learning-rate range test, the minibatch-gradient noise, per-class
recall, and an interactive explorer (:func:`init_explorer`).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# ---------------------------------------------------------------- gradient norms

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear and Conv layers of ``model``, in the order ``model.modules()`` lists them."""
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def layer_grad_norms(model: nn.Module) -> list[float]:
    """L2 norm of each weight layer's ``weight.grad`` (0.0 where there is no gradient yet)."""
    return [m.weight.grad.norm().item() if m.weight.grad is not None else 0.0 for m in weight_layers(model)]


def layer_weight_norms(model: nn.Module) -> list[float]:
    """L2 norm of each weight layer's weight."""
    return [m.weight.detach().norm().item() for m in weight_layers(model)]


def gradient_profile(model: nn.Module, X: Tensor, y: Tensor, loss_fn: Callable = F.cross_entropy) -> list[float]:
    """One forward and backward pass on ``(X, y)``; the weight-gradient norm of every layer, input side first."""
    model.zero_grad()
    loss_fn(model(X), y).backward()
    norms = layer_grad_norms(model)
    model.zero_grad()
    return norms


# ---------------------------------------------------------------- clipping

def _with_grads(parameters: Iterable[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p for p in parameters if p.grad is not None]  # a generator is consumed exactly once here


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``; in place.

    The global norm treats every gradient as part of one long vector:
    ``total = sqrt(sum over p of ||p.grad||^2)``. Every gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))`` (PyTorch's convention, the 1e-6 keeps an all-zero
    gradient finite), so the update keeps its direction and only its length shrinks.
    Parameters without a gradient are skipped. Returns ``total``, the norm *before*
    clipping, as a 0-d tensor (like ``torch.nn.utils.clip_grad_norm_``).
    """
    params = _with_grads(parameters)
    if not params:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(scale.to(p.grad.device, p.grad.dtype))
    return total


@torch.no_grad()
def clip_grad_value(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``, in place (``clip_grad_value_``).

    Unlike norm clipping this changes the gradient's direction: large entries are cut,
    small ones kept.
    """
    for p in _with_grads(parameters):
        p.grad.clamp_(-clip_value, clip_value)


class GradientClipper:
    """Clip (and record) the gradients of ``optimizer``'s parameters just before each ``step()``.

    Works with any training loop, :func:`companion.training.fit` included, because it hooks
    into the optimizer (``register_step_pre_hook``). ``norms`` collects the global gradient
    norm before clipping at every step. With ``max_norm`` and ``clip_value`` both None it
    only records. Call :meth:`remove` to detach it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float | None = None,
                 clip_value: float | None = None):
        self.optimizer, self.max_norm, self.clip_value = optimizer, max_norm, clip_value
        self.norms: list[float] = []
        self._handle = optimizer.register_step_pre_hook(self._hook)

    def _params(self) -> list[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def _hook(self, optimizer, args, kwargs) -> None:
        params = self._params()
        with torch.no_grad():
            if params:
                total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
                self.norms.append(total.item())
        if self.clip_value is not None:
            clip_grad_value(params, self.clip_value)
        if self.max_norm is not None:
            clip_grad_norm(params, self.max_norm)

    def remove(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------- initialisation

def fan_in_and_fan_out(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``, PyTorch's convention.

    A Linear weight is ``(out_features, in_features)``; a Conv weight is
    ``(out_channels, in_channels, *kernel)``. Each output unit sums ``fan_in =
    in_channels * prod(kernel)`` inputs, and each input feeds ``fan_out = out_channels *
    prod(kernel)`` outputs. Shapes with fewer than 2 dimensions (biases) raise ValueError.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"fan_in and fan_out need a weight with at least 2 dimensions, got shape {shape}")
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The factor that keeps the activations' variance steady through ``nonlinearity``.

    The same values as ``torch.nn.init.calculate_gain``: 1 (linear, conv, sigmoid), 5/3
    (tanh), sqrt(2) (ReLU), sqrt(2 / (1 + slope^2)) (leaky ReLU, slope 0.01 by default), 3/4 (SELU).
    """
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith(("conv", "conv_transpose")):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def xavier_std(shape: Sequence[int], gain: float = 1.0) -> float:
    """Glorot & Bengio (2010): std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def kaiming_std(shape: Sequence[int], a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> float:
    """He et al. (2015): std = gain / sqrt(fan), gain = sqrt(2) for ReLU; ``mode`` picks fan_in or fan_out."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


@torch.no_grad()
def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place from U(-b, b), b = sqrt(3) * xavier_std (a uniform on [-b, b] has std b / sqrt(3))."""
    bound = math.sqrt(3.0) * xavier_std(tensor.shape, gain)
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place from N(0, xavier_std^2)."""
    return tensor.normal_(0.0, xavier_std(tensor.shape, gain), generator=generator)


@torch.no_grad()
def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place from U(-b, b), b = sqrt(3) * kaiming_std."""
    bound = math.sqrt(3.0) * kaiming_std(tensor.shape, a, mode, nonlinearity)
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place from N(0, kaiming_std^2)."""
    return tensor.normal_(0.0, kaiming_std(tensor.shape, a, mode, nonlinearity), generator=generator)


INITS = ("default", "too small", "too large", "xavier", "he")


@torch.no_grad()
def initialize(model: nn.Module, scheme: str, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialise every Linear/Conv weight of ``model`` (biases to 0, except for ``"default"``).

    schemes: ``"default"`` (leave PyTorch's own init alone), ``"too small"`` (N(0, 0.01^2)),
    ``"too large"`` (N(0, 1)), ``"xavier"`` (Glorot normal, gain 1), ``"he"`` (Kaiming normal, ReLU).
    """
    if scheme not in INITS:
        raise ValueError(f"scheme must be one of {INITS}, got {scheme!r}")
    if scheme == "default":
        return model
    for layer in weight_layers(model):
        w = layer.weight
        if scheme == "too small":
            w.normal_(0.0, 0.01, generator=generator)
        elif scheme == "too large":
            w.normal_(0.0, 1.0, generator=generator)
        elif scheme == "xavier":
            xavier_normal_(w, generator=generator)
        else:
            kaiming_normal_(w, nonlinearity="relu", generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()
    return model


# ---------------------------------------------------------------- deep MLPs to probe

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "linear": nn.Identity}


class Residual(nn.Module):
    """``x + branch(x)``: the identity path carries signal and gradient past the branch untouched."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


def deep_mlp(depth: int = 20, width: int = 64, n_in: int = 784, n_out: int = 10, activation: str = "relu",
             batch_norm: bool = False, residual: bool = False, init: str = "default",
             generator: torch.Generator | None = None) -> nn.Sequential:
    """An MLP with ``depth`` Linear layers: n_in -> width -> ... -> width -> n_out.

    Plain hidden layers are ``Linear -> [BatchNorm1d] -> activation``. With ``residual`` the
    ``depth - 2`` middle layers become blocks ``x + Linear(activation([BatchNorm1d](x)))``.
    The activation after each layer is its own module (``nn.Identity`` for "linear"), so
    :func:`activation_stats` can find it. ``init`` is applied by :func:`initialize`.
    """
    if depth < 2:
        raise ValueError("depth counts the Linear layers and must be at least 2")
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = [nn.Linear(n_in, width), act()]
    for _ in range(depth - 2):
        linear = nn.Linear(width, width)
        if residual:
            branch = ([nn.BatchNorm1d(width)] if batch_norm else []) + [act(), linear]
            layers.append(Residual(nn.Sequential(*branch)))
        else:
            layers += [linear] + ([nn.BatchNorm1d(width)] if batch_norm else []) + [act()]
    layers.append(nn.Linear(width, n_out))
    return initialize(nn.Sequential(*layers), init, generator)


@torch.no_grad()
def activation_stats(model: nn.Module, X: Tensor) -> list[tuple[float, float]]:
    """(mean, std) of the output of every activation module (and every residual block), in forward order.

    X: a batch the model accepts. Uses forward hooks (:func:`layer_outputs`), so it works for any model.
    """
    return [(out.mean().item(), out.std().item()) for out in layer_outputs(model, X)]


@torch.no_grad()
def layer_outputs(model: nn.Module, X: Tensor) -> list[Tensor]:
    """The outputs of every activation module (or residual block), in forward order, as CPU tensors."""
    kinds = tuple(ACTIVATIONS.values()) + (Residual,)
    inside_residual = {id(m) for block in model.modules() if isinstance(block, Residual) for m in block.modules()
                       if m is not block}
    found: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: found.append(out.detach().cpu()))
             for m in model.modules() if isinstance(m, kinds) and id(m) not in inside_residual]
    try:
        model(X)
    finally:
        for h in hooks:
            h.remove()
    return found


# ---------------------------------------------------------------- learning-rate range test

def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batches: Sequence,
                  lr_min: float = 1e-6, lr_max: float = 1.0, steps: int = 100,
                  diverge: float = 4.0) -> tuple[list[float], list[float]]:
    """Train for up to ``steps`` steps while the learning rate grows exponentially from lr_min to lr_max.

    Step i (from 0) sets every parameter group's lr to ``lr_min * (lr_max / lr_min) ** (i / (steps - 1))``,
    takes batch ``batches[i % len(batches)]``, zeroes the gradients, computes and records the
    loss (``loss.item()``, measured before this step's update), back-propagates and steps.
    It stops right after recording a loss that is not finite or exceeds ``diverge`` times
    the lowest loss so far. Returns ``(lrs, losses)``, two lists of floats of equal length.
    The model and optimizer are changed: run it on a copy, or restore them afterwards.
    """
    lrs, losses, best = [], [], math.inf
    for i in range(steps):
        lr = lr_min * (lr_max / lr_min) ** (i / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        X, y = batches[i % len(batches)]
        optimizer.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
        value = loss.item()
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        if not math.isfinite(value) or value > diverge * best:
            break
    return lrs, losses


def smooth(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as Adam corrects its moments)."""
    avg, out = 0.0, []
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], beta: float = 0.9) -> dict[str, float]:
    """Two common readings of an LR range test, on the smoothed loss.

    ``"min/10"``: a tenth of the learning rate where the smoothed loss is lowest (the loss
    still falls fast there, safely before the blow-up). ``"steepest"``: where the smoothed
    loss falls fastest per decade of learning rate (noisier). ``"min"``: the minimum itself.
    """
    s = torch.tensor(smooth(losses, beta))
    log_lr = torch.log10(torch.tensor(lrs, dtype=torch.float64))
    i_min = int(torch.argmin(s))
    slopes = (s[1:] - s[:-1]) / (log_lr[1:] - log_lr[:-1]).float()
    upto = max(i_min, 1)
    i_steep = int(torch.argmin(slopes[:upto]))
    return {"min": lrs[i_min], "min/10": lrs[i_min] / 10, "steepest": lrs[i_steep]}


def lr_finder(model: nn.Module, optimizer: torch.optim.Optimizer, train: tuple[Tensor, Tensor],
              loss_fn: Callable = F.cross_entropy, batch_size: int = 64, lr_min: float = 1e-6, lr_max: float = 10.0,
              steps: int = 200, diverge: float = 4.0, seed: int = 0) -> tuple[list[float], list[float]]:
    """Run :func:`lr_range_test` on shuffled mini-batches of ``train`` and put the model and optimizer back.

    The weights, the optimizer's state and its learning rates are restored afterwards,
    so the same model can then be trained from its initial weights.
    """
    import copy

    from .training import batches as make_batches

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    X, y = train
    data: list = []
    while len(data) < steps:
        data += [(a.to(device), b.to(device)) for a, b in make_batches((X, y), batch_size, True, g)]
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    model.train()
    try:
        return lr_range_test(model, optimizer, loss_fn, data[:steps], lr_min, lr_max, steps, diverge)
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        model.train(was_training)


# ---------------------------------------------------------------- batch size and gradient noise

def flat_grad(model: nn.Module) -> Tensor:
    """All parameter gradients of ``model`` concatenated into one vector (zeros where missing)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


def batch_gradient(model: nn.Module, X: Tensor, y: Tensor, loss_fn: Callable = F.cross_entropy) -> Tensor:
    """The gradient of the mean loss on ``(X, y)`` with respect to all parameters, flattened."""
    model.zero_grad()
    loss_fn(model(X), y).backward()
    g = flat_grad(model).detach().clone()
    model.zero_grad()
    return g


def gradient_noise(model: nn.Module, X: Tensor, y: Tensor, batch_sizes: Sequence[int], draws: int = 50,
                   loss_fn: Callable = F.cross_entropy, seed: int = 0) -> dict:
    """How far minibatch gradients stray from the full-batch gradient, by batch size.

    For each B, ``draws`` minibatches of B distinct rows of ``(X, y)`` are drawn and
    ``||g_B - g||^2`` averaged (g the gradient on all N rows). Sampling theory predicts
    ``trace(Sigma) / B * (N - B) / (N - 1)``, where trace(Sigma) is the mean of
    ``||g_i - g||^2`` over the N single examples (computed exactly, one example at a time).
    The model is put in eval mode, so dropout adds no noise of its own.
    Returns ``{"batch_sizes", "measured", "predicted", "trace", "full_norm"}``.
    """
    was_training = model.training
    model.eval()
    full = batch_gradient(model, X, y, loss_fn)
    n = len(X)
    trace = sum(((batch_gradient(model, X[i:i + 1], y[i:i + 1], loss_fn) - full) ** 2).sum().item()
                for i in range(n)) / n
    gen = torch.Generator().manual_seed(seed)
    measured, predicted = [], []
    for b in batch_sizes:
        total = 0.0
        for _ in range(draws):
            idx = torch.randperm(n, generator=gen)[:b].to(X.device)
            total += ((batch_gradient(model, X[idx], y[idx], loss_fn) - full) ** 2).sum().item()
        measured.append(total / draws)
        predicted.append(trace / b * (n - b) / (n - 1))
    model.train(was_training)
    return {"batch_sizes": list(batch_sizes), "measured": measured, "predicted": predicted, "trace": trace,
            "full_norm": full.norm().item()}


# ---------------------------------------------------------------- class imbalance

def class_weights(y: Tensor, n_classes: int) -> Tensor:
    """"Balanced" class weights: ``n_samples / (n_classes * count_c)`` for c = 0 .. n_classes - 1.

    y: (N,) integer labels, every class present. Returns a float32 tensor (n_classes,) on
    y's device. A class with the average count gets weight 1; a class 10 times rarer
    than average gets 10. The same numbers as scikit-learn's
    ``compute_class_weight("balanced", classes=range(n_classes), y=y)``; pass them to
    ``F.cross_entropy(..., weight=...)``.
    """
    counts = torch.bincount(y, minlength=n_classes).to(torch.float32)
    return len(y) / (n_classes * counts)


def per_class_recall(pred: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Recall of each class: the fraction of its examples predicted as it. (n_classes,) float (NaN if absent)."""
    hits = torch.bincount(y[pred == y], minlength=n_classes).double()
    return hits / torch.bincount(y, minlength=n_classes).double()


def balanced_accuracy(pred: Tensor, y: Tensor, n_classes: int) -> float:
    """Mean of the per-class recalls (sklearn's ``balanced_accuracy_score``)."""
    recall = per_class_recall(pred, y, n_classes)
    return recall[~torch.isnan(recall)].mean().item()


def downsample(X: Tensor, y: Tensor, classes: Sequence[int], keep: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Keep only a fraction ``keep`` of the rows of each class in ``classes`` (others untouched), order preserved."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(len(y), dtype=torch.bool)
    for c in classes:
        rows = torch.nonzero(y == c).flatten()
        dropped = rows[torch.randperm(len(rows), generator=g)[round(len(rows) * keep):]]
        mask[dropped] = False
    return X[mask], y[mask]


# ---------------------------------------------------------------- interactive explorer

def depth_profile(depth: int, activation: str, init: str, batch_norm: bool = False, width: int = 128,
                  n: int = 256, seed: int = 0) -> dict:
    """Activation std and weight-gradient norm per layer of a fresh :func:`deep_mlp` on Gaussian inputs.

    The inputs are N(0, 1) with ``width`` features and random labels among 10 classes,
    so nothing depends on a dataset. Returns ``{"mean", "std", "grad"}`` lists.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # PyTorch's default init draws from the global generator
        model = deep_mlp(depth, width, n_in=width, n_out=10, activation=activation, batch_norm=batch_norm,
                         init=init, generator=g)
    X = torch.randn(n, width, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    stats = activation_stats(model, X)
    grads = gradient_profile(model, X, y)
    return {"mean": [m for m, _ in stats], "std": [s for _, s in stats], "grad": grads}


def init_explorer():
    """Pick depth, activation, initialisation and batch norm; see activation spread and gradient norms per layer.

    Returns the ``ipywidgets`` container: leave it as a cell's last expression to show it.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    depth = w.IntSlider(value=20, min=2, max=60, step=1, description="depth")
    act = w.Dropdown(options=list(ACTIVATIONS), value="tanh", description="activation")
    init = w.Dropdown(options=list(INITS), value="xavier", description="init")
    bn = w.Checkbox(value=False, description="batch norm")
    out = w.Output()

    def draw(*_):
        prof = depth_profile(depth.value, act.value, init.value, bn.value)
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
            layers = range(1, len(prof["std"]) + 1)
            axes[0].semilogy(layers, [max(s, 1e-30) for s in prof["std"]], "o-", ms=3)
            axes[0].set(xlabel="layer", ylabel="std of activations", title="forward: spread of the signal")
            axes[1].semilogy(range(1, len(prof["grad"]) + 1), [max(v, 1e-30) for v in prof["grad"]], "o-", ms=3,
                             color="C1")
            axes[1].set(xlabel="layer (input side first)", ylabel="||dL/dW||", title="backward: gradient norm")
            fig.suptitle(f"{depth.value} layers, {act.value}, init {init.value}"
                         + (", batch norm" if bn.value else ""))
            fig.tight_layout()
            plt.show()

    for control in (depth, act, init, bn):
        control.observe(draw, names="value")
    box = w.VBox([w.HBox([depth, act]), w.HBox([init, bn]), out])
    draw()
    return box
