"""Chapter 3's references against PyTorch in float64, and its checks against right and wrong answers.

- losses vs torch.nn.functional (values and gradients), including extreme logits;
- the from-scratch optimizers vs torch.optim, parameter for parameter over >= 50 steps;
- schedules vs torch.optim.lr_scheduler; batch norm vs F.batch_norm / nn.BatchNorm1d;
  early stopping vs companion.training.EarlyStopping;
- each check passes the reference (visible and hidden) and PyTorch's own function, and
  fails a plausible wrong implementation with a message that names the mistake.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from companion import losses as L  # noqa: E402
from companion import optim as O  # noqa: E402
from companion import regularization as R  # noqa: E402
from companion import schedules as S  # noqa: E402
from companion import surfaces as SF  # noqa: E402
from companion import training  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch03 as check  # noqa: E402

F64 = torch.float64


def assert_close(got, expected, rtol=1e-12, atol=1e-12):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ====================================================================== losses

SCALES = [0.1, 1.0, 10.0, 100.0, 1e4]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(1,), (7,), (4, 5), (2, 3, 6)])
def test_bce_matches_torch_value_and_gradient(scale, shape):
    g = gen(hash((scale, shape)) % 2**31)
    z = (torch.randn(shape, generator=g, dtype=F64) * scale).requires_grad_(True)
    y = torch.rand(shape, generator=g, dtype=F64)
    ours, theirs = L.bce_with_logits(z, y), F.binary_cross_entropy_with_logits(z, y)
    assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad(ours, z)
    (g2,) = torch.autograd.grad(theirs, z)
    assert_close(g1, g2, rtol=1e-10, atol=1e-15)


def test_bce_is_finite_where_the_textbook_formula_is_not():
    z = torch.tensor([-1e4, -100.0, -20.0, 20.0, 100.0, 1e4])
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert torch.isinf(L.naive_bce(torch.sigmoid(z), y))
    assert_close(L.bce_with_logits(z, y), F.binary_cross_entropy_with_logits(z, y), rtol=1e-6, atol=0)
    # confidently right: exactly zero-ish, never negative
    assert 0 <= L.bce_with_logits(torch.tensor([1e4, -1e4]), torch.tensor([1.0, 0.0])).item() < 1e-30


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("n, c", [(1, 1), (1, 4), (16, 10), (64, 3)])
def test_cross_entropy_matches_torch_value_and_gradient(scale, n, c):
    g = gen(n * 100 + c)
    z = (torch.randn(n, c, generator=g, dtype=F64) * scale).requires_grad_(True)
    y = torch.randint(0, c, (n,), generator=g)
    ours, theirs = L.cross_entropy(z, y), F.cross_entropy(z, y)
    assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad(ours, z)
    (g2,) = torch.autograd.grad(theirs, z)
    assert_close(g1, g2, rtol=1e-10, atol=1e-15)


def test_cross_entropy_float32_extremes_match_torch_and_naive_breaks():
    z = torch.tensor([[1000.0, 1001.0, 1002.0], [-5e4, -5e4 - 1, -5e4 + 2], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 2])
    assert_close(L.cross_entropy(z, y), F.cross_entropy(z, y), rtol=1e-6, atol=1e-6)
    assert not torch.isfinite(L.naive_cross_entropy(z, y))
    assert_close(L.log_softmax(z), F.log_softmax(z, dim=-1), rtol=1e-6, atol=1e-5)
    assert_close(L.logsumexp(z.double()), torch.logsumexp(z.double(), dim=-1))


def test_logsumexp_of_all_minus_infinity_rows():
    z = torch.full((2, 3), -math.inf, dtype=F64)
    assert torch.equal(L.logsumexp(z), torch.logsumexp(z, dim=-1))


@pytest.mark.parametrize("delta", [0.1, 1.0, 2.5])
@pytest.mark.parametrize("shape", [(1,), (50,), (3, 4, 5)])
def test_regression_losses_match_torch(delta, shape):
    g = gen(len(shape) * 7 + int(delta * 10))
    p = (torch.randn(shape, generator=g, dtype=F64) * 3).requires_grad_(True)
    t = torch.randn(shape, generator=g, dtype=F64) * 3
    pairs = [(L.mse(p, t), F.mse_loss(p, t)), (L.mae(p, t), F.l1_loss(p, t)),
             (L.huber(p, t, delta), F.huber_loss(p, t, delta=delta))]
    for ours, theirs in pairs:
        assert_close(ours, theirs)
        (g1,) = torch.autograd.grad(ours, p)
        (g2,) = torch.autograd.grad(theirs, p)
        assert_close(g1, g2)


def test_torch_pairs_table_is_consistent():
    pairs = L.torch_pairs()
    assert set(pairs) == {"binary cross-entropy", "cross-entropy", "MSE", "MAE", "Huber"}
    assert pairs["Huber"] == (L.huber, F.huber_loss)


# ====================================================================== optimizers

def _mlp64():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4)).double()


def _batches(n=60, seed=3):
    g = gen(seed)
    return [(torch.randn(16, 6, generator=g, dtype=F64), torch.randint(0, 4, (16,), generator=g)) for _ in range(n)]


OPTIMIZER_SETTINGS = [
    ("SGD", O.SGD, torch.optim.SGD, dict(lr=0.1)),
    ("momentum", O.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("momentum 0.5", O.SGD, torch.optim.SGD, dict(lr=0.2, momentum=0.5)),
    ("Nesterov", O.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("AdaGrad", O.Adagrad, torch.optim.Adagrad, dict(lr=0.05)),
    ("AdaGrad eps", O.Adagrad, torch.optim.Adagrad, dict(lr=0.5, eps=1e-3)),
    ("RMSprop", O.RMSprop, torch.optim.RMSprop, dict(lr=1e-2)),
    ("RMSprop alpha", O.RMSprop, torch.optim.RMSprop, dict(lr=3e-3, alpha=0.9, eps=1e-6)),
    ("Adam", O.Adam, torch.optim.Adam, dict(lr=1e-2)),
    ("Adam betas", O.Adam, torch.optim.Adam, dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6)),
]


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("name, ours, theirs, kwargs", OPTIMIZER_SETTINGS, ids=[s[0] for s in OPTIMIZER_SETTINGS])
def test_optimizer_matches_torch_for_many_steps(name, ours, theirs, kwargs, weight_decay):
    gaps = O.lockstep(_mlp64, lambda p: ours(p, weight_decay=weight_decay, **kwargs),
                      lambda p: theirs(p, weight_decay=weight_decay, **kwargs), _batches(80), F.cross_entropy)
    assert len(gaps) == 80
    assert max(gaps) < 1e-12, f"{name}: parameters drift apart by {max(gaps):.2e}"


def test_optimizers_really_train():
    # a sanity check that lockstep is not comparing two models that never move
    model = _mlp64()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = O.Adam(model.parameters(), lr=1e-2)
    for X, y in _batches(10):
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(before, model.parameters()))


def test_param_groups_and_skipped_parameters_match_torch():
    def groups(model, make):
        first, last = list(model[0].parameters()), list(model[4].parameters())
        return make([{"params": first, "lr": 0.01}, {"params": last}])

    a, b = _mlp64(), _mlp64()
    opt_a = groups(a, lambda g: O.Adam(g, lr=0.03))
    opt_b = groups(b, lambda g: torch.optim.Adam(g, lr=0.03))
    for X, y in _batches(50):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(X), y).backward()
            opt.step()
    assert O.max_param_gap(a, b) < 1e-12
    # the middle layer was in no group: untouched in both
    assert torch.equal(a[2].weight, _mlp64()[2].weight)


def test_closure_is_supported():
    model = _mlp64()
    X, y = _batches(1)[0]
    optimizer = O.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        return loss

    assert torch.isfinite(optimizer.step(closure))


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError):
        O.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, nesterov=True)


def test_step_functions_do_not_modify_their_inputs():
    g = gen(0)
    p, grad, s1, s2 = (torch.randn(5, generator=g, dtype=F64) for _ in range(4))
    s2 = s2.abs()
    copies = [t.clone() for t in (p, grad, s1, s2)]
    O.sgd_step(p, grad, 0.1)
    O.momentum_step(p, grad, s1, 0.1, 0.9, True)
    O.adagrad_step(p, grad, s2, 0.1)
    O.rmsprop_step(p, grad, s2, 0.1)
    O.adam_step(p, grad, s1, s2, 3, 0.1)
    for before, after in zip(copies, (p, grad, s1, s2)):
        assert torch.equal(before, after)


def test_adam_first_step_has_size_lr():
    # with bias correction the first step is lr * g / (|g| + eps): about lr in every coordinate
    p = torch.zeros(4, dtype=F64)
    g = torch.tensor([1e-3, -2.0, 50.0, -0.1], dtype=F64)
    new_p, m, v = O.adam_step(p, g, torch.zeros_like(p), torch.zeros_like(p), 1, lr=0.1)
    torch.testing.assert_close(new_p, -0.1 * torch.sign(g), rtol=1e-4, atol=0)
    assert_close(m, 0.1 * g)


# ====================================================================== schedules

def test_step_exponential_cosine_match_lr_scheduler():
    sched = torch.optim.lr_scheduler
    for lr0 in (0.1, 3e-4):
        ours = [S.step_lr(e, lr0, 7, 0.3) for e in range(50)]
        assert np.allclose(ours, S.torch_lrs(lambda o: sched.StepLR(o, 7, 0.3), 50, lr0), rtol=1e-12, atol=0)
        ours = [S.exponential_lr(e, lr0, 0.93) for e in range(50)]
        assert np.allclose(ours, S.torch_lrs(lambda o: sched.ExponentialLR(o, 0.93), 50, lr0), rtol=1e-12, atol=0)
        for T, eta in ((10, 0.0), (25, 1e-5), (1, 0.0)):
            n = 2 * T + 1 if T > 1 else 1  # the closed form also holds past T_max (the cosine climbs back)
            ours = [S.cosine_lr(e, lr0, T, eta) for e in range(n)]
            theirs = S.torch_lrs(lambda o, T=T, eta=eta: sched.CosineAnnealingLR(o, T, eta), n, lr0)
            assert np.allclose(ours, theirs, rtol=1e-10, atol=1e-15)


def test_cosine_end_points():
    assert S.cosine_lr(0, 0.1, 10) == 0.1
    assert S.cosine_lr(10, 0.1, 10, eta_min=0.01) == pytest.approx(0.01, abs=1e-15)
    assert S.cosine_lr(5, 0.1, 10) == pytest.approx(0.05)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=60),
       patience=st.integers(0, 6), cooldown=st.integers(0, 3), factor=st.sampled_from([0.1, 0.5, 0.9]),
       threshold=st.sampled_from([0.0, 1e-4, 0.05]), mode=st.sampled_from(["min", "max"]),
       min_lr=st.sampled_from([0.0, 1e-3]))
def test_plateau_matches_reduce_lr_on_plateau(values, patience, cooldown, factor, threshold, mode, min_lr):
    kwargs = dict(factor=factor, patience=patience, cooldown=cooldown, threshold=threshold, mode=mode, min_lr=min_lr)
    ours = S.plateau_lrs(values, 0.1, **kwargs)
    theirs = S.torch_lrs(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **kwargs), len(values), 0.1,
                         metrics=values)
    assert np.allclose(ours, theirs, rtol=1e-12, atol=0)


def test_plateau_rejects_bad_arguments():
    with pytest.raises(ValueError):
        S.Plateau(0.1, factor=1.5)
    with pytest.raises(ValueError):
        S.Plateau(0.1, mode="sideways")


# ====================================================================== regularization

def test_dropout_properties():
    torch.manual_seed(0)
    x = torch.rand(200_000, dtype=F64) + 0.5
    for p in (0.1, 0.5, 0.8):
        out = R.dropout(x, p)
        kept = out != 0
        assert out.dtype == x.dtype and out.shape == x.shape
        assert abs((~kept).double().mean().item() - p) < 0.01
        assert_close(out[kept], x[kept] / (1 - p))
        assert abs(out.mean().item() - x.mean().item()) < 0.01
        assert R.dropout(x, p, training=False) is x
    assert torch.equal(R.dropout(x, 0.0), x)
    assert torch.equal(R.dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("n, d, momentum, eps", [(2, 3, 0.1, 1e-5), (32, 8, 0.01, 1e-3), (7, 1, 0.5, 1e-5)])
def test_batch_norm_matches_functional(n, d, momentum, eps):
    g = gen(n + d)
    x = torch.randn(n, d, generator=g, dtype=F64) * 4 + 2
    gamma, beta = torch.rand(d, generator=g, dtype=F64) + 0.5, torch.randn(d, generator=g, dtype=F64)
    rm, rv = torch.randn(d, generator=g, dtype=F64), torch.rand(d, generator=g, dtype=F64) + 0.5
    for training_mode in (True, False):
        trm, trv = rm.clone(), rv.clone()
        expected = F.batch_norm(x, trm, trv, gamma, beta, training=training_mode, momentum=momentum, eps=eps)
        out, new_m, new_v = R.batch_norm(x, gamma, beta, rm, rv, training_mode, momentum, eps)
        assert_close(out, expected)
        assert_close(new_m, trm)
        assert_close(new_v, trv)
    assert torch.equal(rm, rm.clone())  # inputs untouched (F.batch_norm wrote into its own copies)


def test_batchnorm_module_matches_torch_in_both_modes_and_in_gradients():
    torch.manual_seed(0)
    ours, theirs = R.BatchNorm1d(5).double(), nn.BatchNorm1d(5).double()
    for _ in range(25):
        x = (torch.randn(12, 5, dtype=F64) * 3 + 1).requires_grad_(True)
        a, b = ours(x), theirs(x)
        assert_close(a, b)
        (ga,) = torch.autograd.grad(a.pow(2).sum(), x)
        (gb,) = torch.autograd.grad(b.pow(2).sum(), x)
        assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    assert_close(ours.running_mean, theirs.running_mean)
    assert_close(ours.running_var, theirs.running_var)
    assert set(ours.state_dict()) >= {"weight", "bias", "running_mean", "running_var"}
    ours.eval(), theirs.eval()
    x = torch.randn(3, 5, dtype=F64)
    assert_close(ours(x), theirs(x))


def test_l2_penalty_equals_sgd_weight_decay():
    lam = 0.02
    a = nn.Linear(6, 3).double()
    b = nn.Linear(6, 3).double()
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD([{"params": [b.weight], "weight_decay": 2 * lam}, {"params": [b.bias]}], lr=0.1)
    for X, y in _batches(60):
        X = X[:, :6]
        y = y % 3
        opt_a.zero_grad()
        (F.cross_entropy(a(X), y) + R.l2_penalty(R.weights(a), lam)).backward()
        opt_a.step()
        opt_b.zero_grad()
        F.cross_entropy(b(X), y).backward()
        opt_b.step()
    assert O.max_param_gap(a, b) < 1e-13


def test_penalties_and_penalized_loss():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    ws = R.weights(model)
    assert [tuple(w.shape) for w in ws] == [(2, 3), (1, 2)]
    assert R.l1_penalty(ws, 0.5).item() == pytest.approx(0.5 * sum(w.abs().sum().item() for w in ws))
    assert R.l2_penalty(ws, 0.5).item() == pytest.approx(0.5 * sum((w**2).sum().item() for w in ws))
    loss = R.penalized(F.mse_loss, model, l1=0.1, l2=0.2)
    out, y = torch.zeros(4, 1), torch.ones(4, 1)
    model.train()
    assert loss(out, y).item() == pytest.approx(1.0 + R.l1_penalty(ws, 0.1).item() + R.l2_penalty(ws, 0.2).item())
    model.eval()
    assert loss(out, y).item() == pytest.approx(1.0)


def _callback_decision(values, patience, min_delta, mode):
    stopper = training.EarlyStopping(monitor="v", patience=patience, mode=mode, min_delta=min_delta, restore_best=False)
    model = nn.Linear(1, 1)
    stopper.on_train_begin(model)
    for epoch, value in enumerate(values):
        if stopper.on_epoch_end(epoch, {"v": value}, model):
            return epoch, stopper.best_epoch
    return None, stopper.best_epoch


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.sampled_from([0.5, 0.6, 0.61, 0.7, 0.8, 0.9, 1.0]) | st.floats(0, 2), min_size=1,
                       max_size=40),
       patience=st.integers(1, 6), min_delta=st.sampled_from([0.0, 0.005, 0.05]),
       mode=st.sampled_from(["min", "max"]))
def test_early_stopping_decision_matches_the_callback(values, patience, min_delta, mode):
    assert R.early_stopping(values, patience, min_delta, mode) == _callback_decision(values, patience, min_delta, mode)


def test_early_stopping_restores_best_weights_in_fit():
    torch.manual_seed(0)
    X = torch.randn(64, 5)
    y = (X[:, 0] > 0).long()
    Xv = torch.randn(64, 5)
    yv = torch.randint(0, 2, (64,))  # noise: validation loss soon rises
    model = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 2))
    stopper = training.EarlyStopping(patience=3)
    hist = training.fit(model, (X, y), (Xv, yv), epochs=60, lr=1e-2, callbacks=[stopper], progress=False,
                        device=torch.device("cpu"))
    stop, best = R.early_stopping(hist["val_loss"], 3)
    assert (stop, best) == (hist.stopped_epoch, stopper.best_epoch)
    assert training.evaluate(model, (Xv, yv))["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-5)


# ====================================================================== surfaces

@pytest.mark.parametrize("surface", list(SF.SURFACES))
def test_paths_of_companion_and_torch_optimizers_coincide(surface):
    s = SF.SURFACES[surface]
    for rule, (ours, theirs, kwargs) in O.catalogue().items():
        kw = {**kwargs, "lr": s.lrs[rule]}
        a = SF.trace(s, lambda p: ours(p, **kw), 80)
        b = SF.trace(s, lambda p: theirs(p, **kw), 80)
        assert a.shape == b.shape == (81, 2)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        assert SF.heights(s, a)[-1] < SF.heights(s, a)[0], f"{rule} with its suggested lr climbs on {surface}"


def test_surface_minimum_and_divergence_is_cut_short():
    for s in SF.SURFACES.values():
        assert float(s(torch.tensor(s.minimum, dtype=F64))) == pytest.approx(0.0, abs=1e-12)
    path = SF.trace(SF.SURFACES["ravine"], lambda p: O.SGD(p, lr=1.0), 500)  # lr > 2 / 4: diverges
    assert len(path) < 501 and np.isfinite(path).all()


def test_optimizer_explorer_builds_and_redraws():
    import ipywidgets as w
    import matplotlib.pyplot as plt

    plt.close("all")
    box = SF.optimizer_explorer()
    assert isinstance(box, w.VBox)
    controls, stack = [], [box]
    while stack:
        widget = stack.pop()
        controls.append(widget)
        stack.extend(getattr(widget, "children", ()))
    dropdowns = [c for c in controls if isinstance(c, w.Dropdown)]
    surface_w = next(d for d in dropdowns if d.description == "surface")
    rule_w = next(d for d in dropdowns if d.description == "optimizer")
    lr_w = next(c for c in controls if isinstance(c, w.FloatLogSlider))
    mom_w = next(c for c in controls if isinstance(c, w.FloatSlider) and "momentum" in c.description)
    for surface in surface_w.options:
        surface_w.value = surface
        plt.close("all")
        for rule in rule_w.options:
            rule_w.value = rule
            assert lr_w.value == pytest.approx(SF.SURFACES[surface].lrs[rule], rel=0.15)  # snapped to the slider
    rule_w.value = "Nesterov"
    mom_w.value = 0.0  # Nesterov without momentum must not crash (torch refuses it)
    lr_w.value = 3.0  # diverges on every surface: the title says so
    assert "diverged" in plt.gcf().axes[1].get_title()
    plt.close("all")


# ====================================================================== checks: right answers pass

def _bce_logsigmoid(z, y):
    return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()


def _ce_plain_lse(z, y):
    m = z.amax(dim=1, keepdim=True)
    return (m.squeeze(1) + torch.log(torch.exp(z - m).sum(dim=1)) - z[torch.arange(len(y)), y]).mean()


def _momentum_dampening_free_torch_style(p, grad, velocity, lr, momentum=0.9, nesterov=False):
    v = velocity.mul(momentum).add(grad)
    step = grad.add(v, alpha=momentum) if nesterov else v
    return p.sub(step, alpha=lr), v


def _adam_torch_style(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m = torch.lerp(m, grad, 1 - b1)
    v = v * b2 + (1 - b2) * grad * grad
    step_size = lr / (1 - b1**t)
    denom = v.sqrt() / math.sqrt(1 - b2**t) + eps
    return p - step_size * m / denom, m, v


def _bn_manual(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
    rm2, rv2 = rm.clone(), rv.clone()
    out = F.batch_norm(x, rm2, rv2, gamma, beta, training=training, momentum=momentum, eps=eps)
    return out, rm2, rv2


@pytest.mark.parametrize("hidden", [False, True])
def test_references_and_torch_functions_pass_every_check(hidden, capsys):
    cpu = torch.device("cpu")
    assert check.bce_with_logits(L.bce_with_logits, hidden=hidden, device=cpu) is None
    check.bce_with_logits(F.binary_cross_entropy_with_logits, hidden=hidden, device=cpu)
    check.bce_with_logits(_bce_logsigmoid, hidden=hidden, device=cpu)
    check.cross_entropy(L.cross_entropy, hidden=hidden, device=cpu)
    check.cross_entropy(F.cross_entropy, hidden=hidden, device=cpu)
    check.cross_entropy(_ce_plain_lse, hidden=hidden, device=cpu)
    check.mse_mae(L.mse, L.mae, hidden=hidden, device=cpu)
    check.mse_mae(F.mse_loss, F.l1_loss, hidden=hidden, device=cpu)
    check.huber(L.huber, hidden=hidden, device=cpu)
    check.huber(F.huber_loss, hidden=hidden, device=cpu)
    check.momentum_step(O.momentum_step, hidden=hidden, device=cpu)
    check.momentum_step(_momentum_dampening_free_torch_style, hidden=hidden, device=cpu)
    check.adam_step(O.adam_step, hidden=hidden, device=cpu)
    check.adam_step(_adam_torch_style, hidden=hidden, device=cpu)
    check.cosine_lr(S.cosine_lr, hidden=hidden)
    check.cosine_lr(lambda e, lr0, T, eta_min=0.0: torch.tensor(S.cosine_lr(e, lr0, T, eta_min)), hidden=hidden)
    check.dropout(R.dropout, hidden=hidden, device=cpu)
    check.dropout(lambda x, p=0.5, training=True: F.dropout(x, p, training), hidden=hidden, device=cpu)
    check.batch_norm(R.batch_norm, hidden=hidden, device=cpu)
    check.batch_norm(_bn_manual, hidden=hidden, device=cpu)
    check.early_stopping(R.early_stopping, hidden=hidden)
    check.early_stopping(lambda v, p, min_delta=0.0, mode="min": _callback_decision(v, p, min_delta, mode),
                         hidden=hidden)
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("\u2714") == 22


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check.dropout(R.dropout, device="cpu")
    assert torch.equal(torch.rand(3), expected)


# ====================================================================== checks: wrong answers fail helpfully

def _not_written(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("run", [
    lambda: check.bce_with_logits(_not_written), lambda: check.cross_entropy(_not_written),
    lambda: check.mse_mae(_not_written, L.mae), lambda: check.mse_mae(L.mse, _not_written),
    lambda: check.huber(_not_written), lambda: check.momentum_step(_not_written),
    lambda: check.adam_step(_not_written), lambda: check.cosine_lr(_not_written),
    lambda: check.dropout(_not_written), lambda: check.batch_norm(_not_written),
    lambda: check.early_stopping(_not_written),
])
def test_unwritten_exercises_fail_with_the_friendly_message(run):
    with pytest.raises(CheckFailed, match="not written yet"):
        run()


def _bce_naive(z, y):
    return L.naive_bce(torch.sigmoid(z), y)


def _bce_sum(z, y):
    return (z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).sum()


def _ce_no_add_back(z, y):
    m = z.amax(dim=1, keepdim=True)
    return (torch.log(torch.exp(z - m).sum(dim=1)) - z.gather(1, y[:, None]).squeeze(1)).mean()


def _huber_no_half(p, t, delta=1.0):
    r = (p - t).abs()
    return torch.where(r <= delta, r**2, delta * (r - 0.5 * delta)).mean()


def _momentum_keras(p, grad, velocity, lr, momentum=0.9, nesterov=False):
    v = momentum * velocity - lr * grad
    return (p + momentum * v - lr * grad if nesterov else p + v), v


def _momentum_stale_nesterov(p, grad, velocity, lr, momentum=0.9, nesterov=False):
    v = momentum * velocity + grad
    return p - lr * (grad + momentum * velocity if nesterov else v), v


def _momentum_dampened(p, grad, velocity, lr, momentum=0.9, nesterov=False):
    v = momentum * velocity + (1 - momentum) * grad
    return p - lr * (grad + momentum * v if nesterov else v), v


def _momentum_forgets_state(p, grad, velocity, lr, momentum=0.9, nesterov=False):
    # right single steps from the given velocity, but returns the old velocity: drifts over many steps
    new_p, _ = O.momentum_step(p, grad, velocity, lr, momentum, nesterov)
    return new_p, velocity


def _adam_no_correction(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    return p - lr * m / (v.sqrt() + eps), m, v


def _adam_eps_inside(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    return p - lr * (m / (1 - b1**t)) / torch.sqrt(v / (1 - b2**t) + eps), m, v


def _adam_stores_hats(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    new_p, m, v = O.adam_step(p, grad, m, v, t, lr, betas, eps)
    return new_p, m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)


def _dropout_unscaled(x, p=0.5, training=True):
    return x * (torch.rand(x.shape, device=x.device) >= p) if training else x


def _dropout_keep_p(x, p=0.5, training=True):
    return R.dropout(x, 1 - p, training) * (p / (1 - p)) if training and 0 < p < 1 else R.dropout(x, p, training)


def _dropout_old_style(x, p=0.5, training=True):
    return x * (torch.rand(x.shape, device=x.device) >= p) if training else x * (1 - p)


def _dropout_fixed_mask(x, p=0.5, training=True):
    g = torch.Generator().manual_seed(0)
    return torch.where(torch.rand(x.shape, generator=g) >= p, x / (1 - p), torch.zeros_like(x)) if training else x


def _bn_unbiased_norm(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
    out, m, v = R.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps)
    if training:
        out = (x - x.mean(0)) / torch.sqrt(x.var(0) + eps) * gamma + beta
    return out, m, v


def _bn_keras_momentum(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
    return R.batch_norm(x, gamma, beta, rm, rv, training, 1 - momentum, eps)


def _bn_batch_stats_in_eval(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
    out, m, v = R.batch_norm(x, gamma, beta, rm, rv, True, momentum, eps)
    return (out, m, v) if training else (out, rm, rv)


def _bn_stats_not_updated(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
    return R.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps)[0], rm, rv


def _es_late(values, patience, min_delta=0.0, mode="min"):
    return R.early_stopping(values, patience + 1, min_delta, mode)


def _es_ties(values, patience, min_delta=0.0, mode="min"):
    best, best_epoch, wait = math.inf, -1, 0
    for epoch, value in enumerate(values):
        v = value if mode == "min" else -value
        if v <= best - min_delta:
            best, best_epoch, wait = v, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch, best_epoch
    return None, best_epoch


def _cos_no_floor(epoch, lr0, T_max, eta_min=0.0):
    return lr0 * (1 + math.cos(math.pi * epoch / T_max)) / 2


WRONG = [
    ("bce naive", lambda h: check.bce_with_logits(_bce_naive, hidden=h), "textbook formula"),
    ("bce sum", lambda h: check.bce_with_logits(_bce_sum, hidden=h), "mean over all entries"),
    ("ce naive", lambda h: check.cross_entropy(L.naive_cross_entropy, hidden=h), "log-sum-exp"),
    ("ce no add-back", lambda h: check.cross_entropy(_ce_no_add_back, hidden=h), "add it back"),
    ("mse sum", lambda h: check.mse_mae(lambda p, t: ((p - t) ** 2).sum(), L.mae, hidden=h), "averaged"),
    ("mae no abs", lambda h: check.mse_mae(L.mse, lambda p, t: (p - t).mean(), hidden=h), "absolute value"),
    ("huber no half", lambda h: check.huber(_huber_no_half, hidden=h), "r\\*\\*2 / 2"),
    ("huber fixed delta", lambda h: check.huber(lambda p, t, delta=1.0: L.huber(p, t), hidden=h), "delta"),
    ("huber smooth l1", lambda h: check.huber(lambda p, t, delta=1.0: F.smooth_l1_loss(p, t, beta=delta), hidden=h),
     "smooth_l1_loss"),
    ("momentum keras", lambda h: check.momentum_step(_momentum_keras, hidden=h), "gradient units"),
    ("momentum dampened", lambda h: check.momentum_step(_momentum_dampened, hidden=h), "whole gradient"),
    ("momentum stale nesterov", lambda h: check.momentum_step(_momentum_stale_nesterov, hidden=h), "new"),
    ("momentum forgets state", lambda h: check.momentum_step(_momentum_forgets_state, hidden=h), "updated\\* velocity"),
    ("adam no correction", lambda h: check.adam_step(_adam_no_correction, hidden=h), "bias correction"),
    ("adam eps inside", lambda h: check.adam_step(_adam_eps_inside, hidden=h), "outside the square root"),
    ("adam stores hats", lambda h: check.adam_step(_adam_stores_hats, hidden=h), "raw moving averages"),
    ("cosine no floor", lambda h: check.cosine_lr(_cos_no_floor, hidden=h), "eta_min"),
    ("dropout unscaled", lambda h: check.dropout(_dropout_unscaled, hidden=h), "not scaled"),
    ("dropout keep p", lambda h: check.dropout(_dropout_keep_p, hidden=h), "probability of \\*dropping\\*"),
    ("dropout old style", lambda h: check.dropout(_dropout_old_style, hidden=h), "not scaled"),
    ("dropout fixed mask", lambda h: check.dropout(_dropout_fixed_mask, hidden=h), "new random mask"),
    ("dropout eval", lambda h: check.dropout(lambda x, p=0.5, training=True: R.dropout(x, p, True), hidden=h),
     "training=False"),
    ("bn unbiased", lambda h: check.batch_norm(_bn_unbiased_norm, hidden=h), "biased"),
    ("bn keras momentum", lambda h: check.batch_norm(_bn_keras_momentum, hidden=h), "Keras"),
    ("bn batch stats in eval", lambda h: check.batch_norm(_bn_batch_stats_in_eval, hidden=h), "running statistics"),
    ("bn stats not updated", lambda h: check.batch_norm(_bn_stats_not_updated, hidden=h), "\\*updated\\*"),
    ("es late", lambda h: check.early_stopping(_es_late, hidden=h), "one epoch late"),
    ("es ties", lambda h: check.early_stopping(_es_ties, hidden=True), "strict"),  # ties: hidden cases only
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, run, hint", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_answers_fail_with_a_helpful_message(name, run, hint, hidden):
    with pytest.raises(CheckFailed, match=hint):
        run(hidden)


def test_hidden_cases_catch_what_visible_ones_miss():
    # ties and mode="max" only appear in the hidden early-stopping cases
    check.early_stopping(_es_ties)
    with pytest.raises(CheckFailed):
        check.early_stopping(_es_ties, hidden=True)
    no_mode = lambda v, p, min_delta=0.0, mode="min": R.early_stopping(v, p, min_delta, "min")  # noqa: E731
    check.early_stopping(no_mode)
    with pytest.raises(CheckFailed, match="mode is ignored"):
        check.early_stopping(no_mode, hidden=True)
    # p = 1 only in the hidden dropout cases
    divides_by_zero = lambda x, p=0.5, training=True: (  # noqa: E731
        x * (torch.rand(x.shape) >= p) / (1 - p) if training else x)
    check.dropout(divides_by_zero, device="cpu")
    with pytest.raises(CheckFailed, match="p = 1"):
        check.dropout(divides_by_zero, hidden=True, device="cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_the_checks_on_cuda(hidden):
    cuda = torch.device("cuda")
    check.bce_with_logits(L.bce_with_logits, hidden=hidden, device=cuda)
    check.cross_entropy(L.cross_entropy, hidden=hidden, device=cuda)
    check.mse_mae(L.mse, L.mae, hidden=hidden, device=cuda)
    check.huber(L.huber, hidden=hidden, device=cuda)
    check.momentum_step(O.momentum_step, hidden=hidden, device=cuda)
    check.adam_step(O.adam_step, hidden=hidden, device=cuda)
    check.dropout(R.dropout, hidden=hidden, device=cuda)
    check.dropout(lambda x, p=0.5, training=True: F.dropout(x, p, training), hidden=hidden, device=cuda)
    check.batch_norm(R.batch_norm, hidden=hidden, device=cuda)
