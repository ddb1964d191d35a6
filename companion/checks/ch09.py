"""Checks for chapter 9, Transfer learning.

Each function takes the learner's implementation, runs it next to the reference in
``companion.transfer`` on identical copies of small, seeded models, and prints a verdict
or raises :class:`CheckFailed` naming what differs (which parameter is trainable that
should not be, which batch-norm layer is in the wrong mode, which running statistic is
off) and, where it recognises one, the classic mistake behind it. ``hidden=True`` runs
the extra cases of nbgrader's hidden tests.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .. import transfer as T
from ..runtime import get_device
from .core import Case, CheckFailed, compare, describe, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rng_fork(device):
    """Fork the CPU generator, and the CUDA one when ``device`` is a GPU, so seeding inside leaves no trace."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[torch.cuda.current_device() if device.index is None else device.index])


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with weights drawn from ``seed`` (the global generator is put back)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _cnn(seed: int) -> T.SmallCNN:
    return _seeded(lambda: T.SmallCNN(n_classes=3, widths=(4, 6, 8)), seed)


def _mlp(seed: int) -> nn.Sequential:
    """A plain ``nn.Sequential`` (no special ``train()``): Linear, BN1d, ReLU, Linear, BN1d, ReLU, Linear."""
    return _seeded(lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 6),
                                         nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)), seed)


def _bn_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, T.BatchNorm)]


def _state(model: nn.Module) -> dict:
    """What a freeze decides: requires_grad per parameter, and the mode of every module."""
    return {"grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "mode": {n or "(the model itself)": m.training for n, m in model.named_modules()}}


# ---------------------------------------------------------------- freeze

@learner_facing
def freeze(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``freeze(model, trainable=("head",))`` -> number of trainable scalars.

    On copies of the same model: the requires_grad flag of every parameter, the mode of
    every layer (frozen batch norm in eval mode, trainable batch norm following the
    model), the weights left as they were, and the returned count.
    """
    device = get_device() if device is None else device

    def fresh_cnn(seed, mode=True, first=None):
        def make():
            model = _cnn(seed).to(device).train(mode)
            if first is not None:
                T.freeze(model, first)
            return model
        return make

    cases = [
        ("the course's SmallCNN in training mode, trainable=('head',)", fresh_cnn(1), ("head",)),
        ("the same, trainable=('head', 'block3')", fresh_cnn(2), ("head", "block3")),
        ("a SmallCNN already frozen to ('head',), now trainable=('head', 'block3', 'block2')",
         fresh_cnn(3, first=("head",)), ("head", "block3", "block2")),
    ]
    if hidden:
        cases += [
            ("a model in evaluation mode, trainable=('head', 'block3')", fresh_cnn(4, mode=False), ("head", "block3")),
            ("nothing trainable, trainable=()", fresh_cnn(5), ()),
            ("everything trainable", fresh_cnn(6), ("block1", "block2", "block3", "head")),
            ("a plain nn.Sequential MLP with BatchNorm1d, trainable=('6',) (its last layer)",
             lambda: _mlp(7).to(device).train(), ("6",)),
            ("the MLP, trainable=('3', '4', '6') (the top two layers with their batch norm)",
             lambda: _mlp(8).to(device).train(), ("3", "4", "6")),
            ("trainable given as a list, ['head']", fresh_cnn(9), ["head"]),
        ]
    for label, make, trainable in cases:
        mine, ref = make(), make()
        before = copy.deepcopy(mine.state_dict())
        expected_count = T.freeze(ref, tuple(trainable))
        got_count = run_learner(fn, "freeze", Case(label, (mine, trainable)), context=f"case '{label}'")
        got, exp = _state(mine), _state(ref)
        bn = set(_bn_names(ref))
        # requires_grad
        wrong = [n for n in exp["grad"] if got["grad"][n] != exp["grad"][n]]
        if wrong:
            name = wrong[0]
            flags = got["grad"]
            msg = (f"`freeze` on case '{label}': parameter `{name}` has requires_grad={flags[name]}, expected"
                   f" {exp['grad'][name]} ({len(wrong)} of {len(flags)} parameters are wrong).")
            if any(exp["grad"].values()) and not any(flags.values()):
                msg += " Hint: every parameter is frozen, the trainable ones too (did you freeze the head as well?)."
            elif all(flags.values()) and not all(exp["grad"].values()):
                msg += " Hint: nothing was frozen: set requires_grad_(False) on every parameter outside `trainable`."
            elif all(flags[n] != exp["grad"][n] for n in flags):
                msg += (" Hint: it is exactly the other way round: the names in `trainable` are the ones that"
                        " stay trainable, everything else is frozen.")
            else:
                msg += (" A parameter is trainable when its name starts with one of the prefixes followed by a dot"
                        " (`name.startswith(prefix + '.')`); list them with model.named_parameters().")
            raise CheckFailed(msg)
        # modes
        wrong = [n for n in exp["mode"] if got["mode"][n] != exp["mode"][n]]
        if wrong:
            name = wrong[0]
            msg = (f"`freeze` on case '{label}': after it, `{name}` has training={got['mode'][name]}, expected"
                   f" {exp['mode'][name]}.")
            if name in bn and not T._under(name, tuple(trainable)) and got["mode"][name]:
                msg += (" Hint: a frozen batch-norm layer must go to evaluation mode (`module.eval()`): its"
                        " running mean and variance are buffers, not parameters, so requires_grad=False does not"
                        " stop them from being updated by every training-mode forward pass.")
            elif name in bn:
                msg += (" Hint: only the batch-norm layers outside the trainable part go to eval; the others"
                        " follow the model, `module.train(model.training)` (this matters when the model is in"
                        " evaluation mode, and when freeze is called again to unfreeze more layers).")
            else:
                msg += (" Only batch-norm layers change mode; leave every other layer (and the model) as it was:"
                        " don't call model.eval() or model.train() on the whole model.")
            raise CheckFailed(msg)
        problem = compare(mine.state_dict(), before, rtol=0, atol=0, path="the model's state_dict")
        if problem:
            raise CheckFailed(f"`freeze` on case '{label}' changed the model's weights or buffers: {problem}"
                              " Freezing only flips flags; it must not touch any value.")
        if not isinstance(got_count, int) and not (isinstance(got_count, torch.Tensor) and got_count.numel() == 1):
            raise CheckFailed(f"`freeze` on case '{label}' returned {describe(got_count)}; it should return the"
                              f" number of trainable scalars, an int (here {expected_count}).")
        got_count = int(got_count)
        if got_count != expected_count:
            n_tensors = sum(1 for p in ref.parameters() if p.requires_grad)
            n_frozen = sum(p.numel() for p in ref.parameters() if not p.requires_grad)
            hint = ""
            if got_count == n_tensors:
                hint = " Hint: that is the number of parameter *tensors*; count their scalars with p.numel()."
            elif got_count == n_frozen:
                hint = " Hint: that is the number of *frozen* scalars; count those with requires_grad=True."
            elif got_count == n_frozen + expected_count:
                hint = " Hint: that counts every parameter; count only those with requires_grad=True."
            raise CheckFailed(f"`freeze` on case '{label}' returned {got_count}, expected {expected_count}"
                              f" trainable scalars.{hint}")
    passed("freeze", len(cases), device, hidden)


# ---------------------------------------------------------------- parameter groups

def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


@learner_facing
def param_groups(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``param_groups(model, base_lr, head_lr, head="head")`` -> ``[body group, head group]``.

    Each group must be a dict with the right ``params`` (any order, trainable ones only)
    and ``lr``; then an SGD step built from the groups must move every parameter by its
    own group's learning rate.
    """
    device = get_device() if device is None else device

    def cnn(seed, trainable=None):
        def make():
            model = _cnn(seed).to(device).train()
            if trainable is not None:
                T.freeze(model, trainable)
            return model
        return make

    def mlp(seed, trainable=None):
        def make():
            model = _mlp(seed).to(device).train()
            if trainable is not None:
                T.freeze(model, trainable)
            return model
        return make

    cases = [
        ("a fully trainable SmallCNN, base_lr=1e-4, head_lr=1e-2", cnn(11), (1e-4, 1e-2), {}),
        ("block1 frozen, base_lr=0.001, head_lr=0.05", cnn(12, ("block2", "block3", "head")), (1e-3, 5e-2), {}),
    ]
    if hidden:
        cases += [
            ("only the head trainable (empty body group)", cnn(13, ("head",)), (1e-4, 1e-2), {}),
            ("the head is called '6', head='6'", mlp(14), (0.01, 0.1), {"head": "6"}),
            ("an MLP with its first layers frozen, head='6'", mlp(15, ("4", "6")), (3e-4, 3e-3), {"head": "6"}),
            ("equal rates", cnn(16), (0.01, 0.01), {}),
        ]
    for label, make, (base_lr, head_lr), kw in cases:
        model = make()
        head = kw.get("head", "head")
        names = _names(model)
        expected = T.param_groups(model, base_lr, head_lr, **kw)
        got = run_learner(fn, "param_groups", Case(label, (model, base_lr, head_lr), kw), context=f"case '{label}'")
        if isinstance(got, tuple):
            got = list(got)
        if not isinstance(got, list) or len(got) != 2 or not all(isinstance(g, dict) for g in got):
            raise CheckFailed(f"`param_groups` on case '{label}' returned {describe(got)}; expected a list of two"
                              " dicts, [{'params': [...], 'lr': base_lr}, {'params': [...], 'lr': head_lr}].")
        for i, (g, e, what) in enumerate(zip(got, expected, ("body (everything but the head)", "head"))):
            if "params" not in g or "lr" not in g:
                raise CheckFailed(f"`param_groups` on case '{label}': group {i} has keys {sorted(g)}; each group"
                                  " needs 'params' (a list of parameters) and 'lr'.")
            params = list(g["params"])
            g["params"] = params  # a generator would be empty the second time round
            ids = [id(p) for p in params]
            want = {id(p) for p in e["params"]}
            if set(ids) != want or len(ids) != len(set(ids)):
                extra = [names.get(i, "a tensor that is not a parameter of the model") for i in ids if i not in want]
                missing = [names[i] for i in want if i not in set(ids)]
                msg = f"`param_groups` on case '{label}': group {i} (the {what}) "
                if extra:
                    msg += f"holds `{extra[0]}`, which does not belong there"
                    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
                    if extra[0] in frozen:
                        msg += ". Hint: leave frozen parameters (requires_grad=False) out: the optimizer should see"
                        msg += " only what it is meant to train"
                    else:
                        msg += (". Hint: the head's parameters (names starting with `head + '.'`) go in the second"
                                " group only, everything else in the first")
                elif missing:
                    msg += f"is missing `{missing[0]}`"
                else:
                    msg += "lists a parameter twice"
                raise CheckFailed(msg + ".")
            if compare(g["lr"], e["lr"], rtol=1e-12, atol=0):
                swapped = abs(float(g["lr"]) - (head_lr if i == 0 else base_lr)) < 1e-15 and base_lr != head_lr
                raise CheckFailed(f"`param_groups` on case '{label}': group {i} (the {what}) has lr={g['lr']},"
                                  f" expected {e['lr']}." + (" Hint: the two learning rates are swapped: the body"
                                                             " gets base_lr, the head head_lr." if swapped else ""))
        # the groups work in an optimizer: one SGD step moves each parameter by its own group's rate
        x = torch.randn(4, *((1, 8, 8) if isinstance(model, T.SmallCNN) else (5,)), generator=_gen(3)).to(device)
        model.zero_grad()
        model(x).square().sum().backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        try:
            torch.optim.SGD(got, lr=123.0).step()
        except Exception as err:  # noqa: BLE001 (the learner's groups were rejected by torch.optim)
            raise CheckFailed(f"`param_groups` on case '{label}': torch.optim.SGD rejected the groups:"
                              f" {type(err).__name__}: {err}") from None
        for n, p in model.named_parameters():
            lr = 0.0 if not p.requires_grad else (head_lr if n.startswith(head + ".") else base_lr)
            step = before[n] - (lr * p.grad if p.grad is not None else 0.0)
            problem = compare(p.detach(), step, rtol=1e-5, atol=1e-7, path=f"`{n}` after one SGD step")
            if problem:
                raise CheckFailed(f"`param_groups` on case '{label}': {problem}")
    passed("param_groups", len(cases), device, hidden)


# ---------------------------------------------------------------- adaptive batch norm

def _adabn_model(seed: int, device, mode: bool) -> nn.Module:
    """A small CNN with dropout before a batch norm, pretrained statistics, in the given mode."""
    def build():
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
            nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5, momentum=0.2), nn.ReLU(),
            nn.Flatten(), nn.Linear(5 * 36, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    model = _seeded(build, seed).to(device)
    g = _gen(seed)
    model.train()
    with torch.no_grad(), _rng_fork(device):
        torch.manual_seed(seed)
        for _ in range(30):  # "pretraining" statistics on a source distribution
            model((torch.randn(16, 1, 6, 6, generator=g) * 0.5 + 1.0).to(device))
    return model.train(mode)


def _adabn_variant(model: nn.Module, X: torch.Tensor, batch_size: int = 256, *, reset=True, keep_momentum=False,
                   dropout=False, restore_momentum=True, restore_mode=True, one_batch=False, bn_train=True):
    """The reference with one step changed, to recognise a classic mistake."""
    norms = [m for m in model.modules() if isinstance(m, T.BatchNorm)]
    was = model.training
    old = [m.momentum for m in norms]
    with torch.no_grad():
        model.train() if dropout else model.eval()
        for m in norms:
            if reset:
                m.reset_running_stats()
            if not keep_momentum:
                m.momentum = None
            m.train(bn_train)
        step = len(X) if one_batch else batch_size
        for i in range(0, len(X), step):
            model(X[i:i + step])
    if restore_momentum:
        for m, mom in zip(norms, old):
            m.momentum = mom
    if restore_mode:
        model.train(was)
    return model


_ADABN_MISTAKES = {
    "the running statistics were not reset first: with momentum=None the new batches are averaged together"
    " with everything the layer saw in pretraining (num_batches_tracked keeps counting), so the target"
    " barely moves them. Call reset_running_stats() on each batch-norm layer before the pass.":
        dict(reset=False),
    "the statistics are an exponential moving average (each layer's own momentum) instead of the plain"
    " average over the target batches: set momentum=None on every batch-norm layer during the pass.":
        dict(keep_momentum=True),
    "the whole model was put in training mode, so dropout was active while the statistics were estimated:"
    " put the model in eval mode and switch only the batch-norm layers to training mode.":
        dict(dropout=True),
    "the running statistics did not change: batch norm only updates them in training mode, so switch the"
    " batch-norm layers to training mode during the pass.":
        dict(bn_train=False),
    "all of X went through in one batch: go through it in batches of `batch_size` (the average over batches"
    " is what PyTorch's momentum=None computes).":
        dict(one_batch=True),
}


@learner_facing
def adapt_bn(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``adapt_bn(model, X, batch_size=256)``: re-estimated running statistics, nothing else changed."""
    device = get_device() if device is None else device
    g = _gen(40 + hidden)

    def target(n):
        return (torch.randn(n, 1, 6, 6, generator=g) * 2.0 - 1.0).to(device)

    cases = [
        ("a model in eval mode, 100 target images, batch_size=32", 21, False, target(100), {"batch_size": 32}),
        ("a model in eval mode, 50 target images, the default batch_size", 22, False, target(50), {}),
    ]
    if hidden:
        cases += [
            ("a model in training mode, batch_size=16", 23, True, target(70), {"batch_size": 16}),
            ("batches that do not divide N (N=45, batch_size=20)", 24, False, target(45), {"batch_size": 20}),
            ("float64 model and images", 25, False, None, {"batch_size": 25}),
        ]
    for label, seed, mode, X, kw in cases:
        mine, ref = _adabn_model(seed, device, mode), _adabn_model(seed, device, mode)
        if X is None:
            mine, ref = mine.double(), ref.double()
            X = target(60).double()
        params_before = {n: p.detach().clone() for n, p in mine.named_parameters()}
        momenta = {n: m.momentum for n, m in mine.named_modules() if isinstance(m, T.BatchNorm)}
        modes = {n: m.training for n, m in mine.named_modules()}
        spare = copy.deepcopy(mine)
        T.adapt_bn(ref, X, **kw)
        with _rng_fork(device):
            torch.manual_seed(0)
            out = run_learner(fn, "adapt_bn", Case(label, (mine, X), kw), context=f"case '{label}'")
        context = f"`adapt_bn` on case '{label}'"
        for name, p in mine.named_parameters():
            problem = compare(p.detach(), params_before[name], rtol=0, atol=0, path=f"parameter `{name}`")
            if problem:
                raise CheckFailed(f"{context} changed the weights: {problem} Adaptive batch norm only re-estimates"
                                  " the running statistics; run the forward passes under torch.no_grad() and"
                                  " never call an optimizer.")
        got_buffers, exp_buffers = dict(mine.named_buffers()), dict(ref.named_buffers())
        for name, exp in exp_buffers.items():
            problem = compare(got_buffers[name], exp, rtol=1e-4, atol=1e-5, path=f"`{name}`")
            if problem:
                msg = f"{context}: {problem}"
                for hint, options in _ADABN_MISTAKES.items():
                    with _rng_fork(device):
                        torch.manual_seed(0)
                        wrong = _adabn_variant(copy.deepcopy(spare), X, **kw, **options)
                    with torch.no_grad():
                        if all(compare(b, dict(wrong.named_buffers())[n], rtol=1e-4, atol=1e-5) is None
                               for n, b in got_buffers.items() if not n.endswith("num_batches_tracked")):
                            msg += f"\n  Hint: {hint}"
                            break
                raise CheckFailed(msg)
        for name, m in mine.named_modules():
            if isinstance(m, T.BatchNorm) and m.momentum != momenta[name]:
                raise CheckFailed(f"{context}: afterwards `{name}` has momentum={m.momentum}, but it had"
                                  f" {momenta[name]} before. Put each layer's momentum back when you are done,"
                                  " so later training behaves as before.")
        for name, m in mine.named_modules():
            if m.training != modes[name]:
                where = f"`{name}`" if name else "the model"
                raise CheckFailed(f"{context}: afterwards {where} has training={m.training}, but the model came in"
                                  f" {'training' if mode else 'evaluation'} mode. Put it back the way it was"
                                  " (remember `was_training = model.training`, then `model.train(was_training)`).")
        if out is not mine:
            raise CheckFailed(f"{context} returned {describe(out)}; return the model itself (it is changed in place).")
    passed("adapt_bn", len(cases), device, hidden)


# ---------------------------------------------------------------- gradient reversal

@learner_facing
def grad_reverse(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``grad_reverse(x, lam)``: the values of x forward, ``-lam * grad`` backward (through autograd)."""
    device = get_device() if device is None else device
    g = _gen(50 + hidden)
    cases = [
        ("a vector, lam = 1", torch.randn(6, generator=g), 1.0),
        ("a 4x3 batch of features, lam = 0.5", torch.randn(4, 3, generator=g), 0.5),
        ("images (2, 3, 4, 4), lam = 2", torch.randn(2, 3, 4, 4, generator=g), 2.0),
    ]
    if hidden:
        cases += [
            ("float64, lam = 0.1", torch.randn(5, 7, generator=g, dtype=torch.float64), 0.1),
            ("lam = 0: no gradient reaches the features", torch.randn(8, 2, generator=g), 0.0),
            ("a transposed (non-contiguous) input, lam = 0.75", torch.randn(3, 5, generator=g).t(), 0.75),
            ("a single number, lam = 3", torch.tensor(1.5), 3.0),
        ]
    for label, x0, lam in cases:
        x = x0.to(device).requires_grad_(True)
        upstream = torch.randn(x.shape, generator=g, dtype=x.dtype).to(device)
        case = Case(label, (x, lam))
        context = f"`grad_reverse` on case '{label}'"
        out = run_learner(fn, "grad_reverse", case, context=f"case '{label}'")
        problem = compare(out.detach() if isinstance(out, torch.Tensor) else out, x.detach(), rtol=0, atol=0,
                          path="the forward output")
        if problem:
            hint = ""
            if isinstance(out, torch.Tensor) and out.shape == x.shape and torch.allclose(out.detach(), -x.detach()):
                hint = (" Hint: the forward pass must not change anything (it returns x as it is); the sign flip"
                        " happens only in backward.")
            elif isinstance(out, torch.Tensor) and out.shape == x.shape and torch.allclose(out.detach(),
                                                                                          -lam * x.detach()):
                hint = " Hint: forward returns x unchanged; -lam multiplies the gradient in backward, not x."
            raise CheckFailed(f"{context}: {problem}{hint}")
        if not out.requires_grad:
            raise CheckFailed(f"{context}: the output does not require grad, so no gradient can flow back to x."
                              " Return the result of GradReverse.apply(x, lam) (and don't detach it).")
        try:
            (grad,) = torch.autograd.grad(out, x, grad_outputs=upstream, allow_unused=True)
        except Exception as err:  # noqa: BLE001 (the learner's backward raised)
            raise CheckFailed(f"{context}: the backward pass raised {type(err).__name__}: {err}. backward(ctx, grad)"
                              " must return one gradient per input of forward: (-ctx.lam * grad, None).") from None
        if grad is None:
            raise CheckFailed(f"{context}: no gradient reached x (the graph is cut). Use a torch.autograd.Function"
                              " whose forward returns x.view_as(x) and whose backward returns -lam * grad.")
        expected = -lam * upstream
        problem = compare(grad, expected, rtol=1e-6, atol=1e-7, path="the gradient reaching x")
        if problem:
            hint = ""
            if grad.shape == upstream.shape:
                if torch.allclose(grad, lam * upstream):
                    hint = " Hint: the sign is wrong: the gradient is *reversed*, -lam * grad, not lam * grad."
                elif torch.allclose(grad, upstream):
                    hint = " Hint: the gradient passed through unchanged: backward must return -lam * grad."
                elif torch.allclose(grad, -upstream):
                    hint = " Hint: lambda is ignored: backward returns -grad; it should be -lam * grad."
                elif torch.allclose(grad, -lam * lam * upstream):
                    hint = " Hint: lambda is applied twice (in forward and in backward); only backward scales."
            raise CheckFailed(f"{context}: {problem} The gradient reaching x should be -lam times the gradient"
                              f" arriving from above.{hint}")
    passed("grad_reverse", len(cases), device, hidden)
