"""Chapter 8's references against PyTorch and scikit-learn, its tools, its checks and its explorer.

- clipping vs torch.nn.utils.clip_grad_norm_ / clip_grad_value_ (float64, hypothesis over shapes);
- fans, gains and the four initialisers vs torch.nn.init: exact formulas, identical draws
  from the same generator, and the statistics of the draws with fixed seeds;
- class weights vs sklearn's compute_class_weight("balanced"), recall vs sklearn;
- the deep-MLP probes (vanishing gradients, activation statistics), the clipping hook,
  the LR range test, the gradient-noise measurement;
- each check passes the reference (visible and hidden) and PyTorch's own function, and
  fails plausible wrong implementations with a message that names the mistake;
- the depth / activation / init explorer builds and redraws headlessly.
"""
from __future__ import annotations

import contextlib
import io
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from companion import diagnostics as D  # noqa: E402
from companion import training  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch08 as check  # noqa: E402

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def params_with_grads(shapes, seed, scale=1.0, dtype=F64, none_at=()):
    g = gen(seed)
    out = []
    for i, shape in enumerate(shapes):
        p = torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)
        if i not in none_at:
            p.grad = torch.randn(shape, generator=g, dtype=dtype) * scale
        out.append(p)
    return out


def twin(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


shapes_st = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), min_size=1, max_size=5)


# ====================================================================== clipping

@settings(max_examples=60, deadline=None)
@given(shapes=shapes_st, scale=st.sampled_from([0.0, 1e-5, 0.1, 1.0, 30.0]),
       max_norm=st.sampled_from([1e-4, 0.5, 1.0, 10.0]), seed=st.integers(0, 10_000))
def test_clip_grad_norm_matches_torch(shapes, scale, max_norm, seed):
    ours = params_with_grads(shapes, seed, scale, none_at=(len(shapes) - 1,) if len(shapes) > 2 else ())
    theirs = twin(ours)
    total = D.clip_grad_norm(iter(ours), max_norm)  # a one-shot iterator, like model.parameters()
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-15)
    for a, b in zip(ours, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
        assert torch.equal(a.detach(), b.detach())


def test_clip_grad_norm_keeps_direction_and_caps_length():
    ps = params_with_grads([(10, 10), (10,)], 1, 5.0)
    before = torch.cat([p.grad.flatten() for p in ps])
    total = D.clip_grad_norm(ps, 1.0)
    after = torch.cat([p.grad.flatten() for p in ps])
    assert total.item() == pytest.approx(before.norm().item())
    assert after.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert F.cosine_similarity(before, after, dim=0).item() == pytest.approx(1.0)
    small = params_with_grads([(3,)], 2, 0.01)
    g0 = small[0].grad.clone()
    D.clip_grad_norm(small, 1.0)
    torch.testing.assert_close(small[0].grad, g0, rtol=1e-5, atol=0)
    single = params_with_grads([(4, 4)], 3, 10.0)[0]
    D.clip_grad_norm(single, 0.1)  # a single tensor works too
    assert single.grad.norm().item() == pytest.approx(0.1, rel=1e-4)
    assert D.clip_grad_norm([torch.zeros(2, requires_grad=True)], 1.0).item() == 0.0  # no gradients at all


@settings(max_examples=40, deadline=None)
@given(shapes=shapes_st, clip=st.sampled_from([1e-3, 0.1, 1.0, 5.0]), seed=st.integers(0, 10_000))
def test_clip_grad_value_matches_torch(shapes, clip, seed):
    ours = params_with_grads(shapes, seed, 2.0, none_at=(0,) if len(shapes) > 1 else ())
    theirs = twin(ours)
    assert D.clip_grad_value((p for p in ours), clip) is None
    torch.nn.utils.clip_grad_value_(theirs, clip)
    for a, b in zip(ours, theirs):
        if b.grad is None:
            assert a.grad is None
        else:
            assert torch.equal(a.grad, b.grad)
            assert a.grad.abs().max() <= clip


def test_gradient_clipper_records_and_clips_inside_fit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    X, y = torch.randn(64, 5) * 50, torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []

    def after(optimizer, args, kwargs):  # runs after the clipper's pre-hook: the clipped norm
        seen.append(D.flat_grad(model).norm().item())

    clipper = D.GradientClipper(opt, max_norm=0.5)
    opt.register_step_pre_hook(after)
    training.fit(model, (X, y), epochs=2, batch_size=16, optimizer=opt, progress=False, device=torch.device("cpu"))
    assert len(clipper.norms) == len(seen) == 8
    assert max(seen) <= 0.5 + 1e-5 and max(clipper.norms) > 0.5
    clipper.remove()
    opt.zero_grad()
    F.cross_entropy(model(X), y).backward()
    opt.step()
    assert len(clipper.norms) == 8, "a removed clipper records nothing"
    recorder = D.GradientClipper(opt)  # neither limit: only records
    opt.zero_grad()
    F.cross_entropy(model(X), y).backward()
    raw = D.flat_grad(model).norm().item()
    opt.step()
    assert recorder.norms == [pytest.approx(raw)]
    by_value = D.GradientClipper(torch.optim.SGD(model.parameters(), lr=0.0), clip_value=1e-3)
    F.cross_entropy(model(X), y).backward()
    by_value.optimizer.step()
    assert D.flat_grad(model).abs().max().item() <= 1e-3 * (1 + 1e-6)


# ====================================================================== initialisation

weight_shapes = st.lists(st.integers(1, 7), min_size=2, max_size=5).map(tuple)


@settings(max_examples=80, deadline=None)
@given(shape=weight_shapes)
def test_fans_match_torch(shape):
    assert D.fan_in_and_fan_out(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert D.fan_in_and_fan_out(torch.Size(shape)) == D.fan_in_and_fan_out(list(shape))


@pytest.mark.parametrize("shape", [(), (5,)])
def test_fans_need_two_dimensions(shape):
    with pytest.raises(ValueError):
        D.fan_in_and_fan_out(shape)


@pytest.mark.parametrize("name, param", [("linear", None), ("conv2d", None), ("conv_transpose1d", None),
                                         ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                                         ("leaky_relu", 0.2), ("leaky_relu", 0), ("selu", None)])
def test_gains_match_torch(name, param):
    assert D.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param), rel=1e-15)


def test_gain_rejects_unknown():
    with pytest.raises(ValueError):
        D.calculate_gain("swish")
    with pytest.raises(ValueError):
        D.kaiming_std((3, 4), mode="fan_avg")


def test_std_formulas_exactly():
    assert D.xavier_std((300, 100)) == math.sqrt(2 / 400)
    assert D.xavier_std((64, 32, 3, 3), gain=5 / 3) == pytest.approx(5 / 3 * math.sqrt(2 / (288 + 576)), rel=1e-15)
    assert D.kaiming_std((300, 100), nonlinearity="relu") == pytest.approx(math.sqrt(2 / 100), rel=1e-15)
    fan_out_std = D.kaiming_std((300, 100), mode="fan_out", nonlinearity="relu")
    assert fan_out_std == pytest.approx(math.sqrt(2 / 300), rel=1e-15)
    assert D.kaiming_std((8, 4, 5), a=0.0) == pytest.approx(math.sqrt(2 / 20), rel=1e-15)  # leaky, slope 0 = ReLU
    assert D.kaiming_std((8, 4, 5)) == pytest.approx(math.sqrt(2 / 20), rel=1e-15)  # a = 0 by default, like torch
    assert D.kaiming_std((8, 4, 5), a=None) == pytest.approx(math.sqrt(2 / (1 + 1e-4)) / math.sqrt(20), rel=1e-15)


INITS = [
    ("xavier_uniform_", lambda t, g: D.xavier_uniform_(t, 1.3, generator=g),
     lambda t, g: torch.nn.init.xavier_uniform_(t, 1.3, generator=g)),
    ("xavier_normal_", lambda t, g: D.xavier_normal_(t, 0.7, generator=g),
     lambda t, g: torch.nn.init.xavier_normal_(t, 0.7, generator=g)),
    ("kaiming_uniform_ fan_out relu",
     lambda t, g: D.kaiming_uniform_(t, mode="fan_out", nonlinearity="relu", generator=g),
     lambda t, g: torch.nn.init.kaiming_uniform_(t, mode="fan_out", nonlinearity="relu", generator=g)),
    ("kaiming_uniform_ default (a = sqrt 5)", lambda t, g: D.kaiming_uniform_(t, a=math.sqrt(5), generator=g),
     lambda t, g: torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)),
    ("kaiming_normal_ fan_in", lambda t, g: D.kaiming_normal_(t, generator=g),
     lambda t, g: torch.nn.init.kaiming_normal_(t, generator=g)),
    ("kaiming_normal_ leaky 0.2 fan_out", lambda t, g: D.kaiming_normal_(t, 0.2, "fan_out", generator=g),
     lambda t, g: torch.nn.init.kaiming_normal_(t, 0.2, "fan_out", generator=g)),
]


@pytest.mark.parametrize("name, ours, theirs", INITS, ids=[i[0] for i in INITS])
@pytest.mark.parametrize("shape", [(7, 3), (128, 64), (16, 3, 5, 5), (8, 4, 3), (2, 2, 2, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_initialisers_draw_what_torch_draws(name, ours, theirs, shape, dtype):
    a = torch.empty(shape, dtype=dtype)
    b = torch.empty(shape, dtype=dtype)
    out = ours(a, gen(7))
    assert out is a, "initialisers fill in place and return the tensor"
    theirs(b, gen(7))
    assert torch.equal(a, b)


def test_initialisers_work_on_parameters_and_the_global_generator():
    layer = nn.Linear(50, 40)
    D.kaiming_normal_(layer.weight, nonlinearity="relu")
    D.xavier_uniform_(layer.weight)
    assert layer.weight.requires_grad and layer.weight.grad is None


@pytest.mark.parametrize("shape", [(1000, 800), (256, 64, 3, 3)])
def test_initialiser_statistics(shape):
    """Fixed seeds, large tensors: sample std within 1 % of the formula; uniform draws fill [-b, b]."""
    he = D.kaiming_std(shape, nonlinearity="relu")
    for fill, std, uniform in [
        (lambda t, g: D.xavier_uniform_(t, generator=g), D.xavier_std(shape), True),
        (lambda t, g: D.xavier_normal_(t, generator=g), D.xavier_std(shape), False),
        (lambda t, g: D.kaiming_uniform_(t, nonlinearity="relu", generator=g), he, True),
        (lambda t, g: D.kaiming_normal_(t, nonlinearity="relu", generator=g), he, False),
    ]:
        w = fill(torch.empty(shape, dtype=F64), gen(11))
        assert w.std().item() == pytest.approx(std, rel=0.01)
        assert abs(w.mean().item()) < 0.01 * std
        if uniform:
            bound = math.sqrt(3) * std
            assert w.abs().max().item() <= bound and w.abs().max().item() > 0.999 * bound


@pytest.mark.parametrize("scheme, std", [("too small", lambda s: 0.01), ("too large", lambda s: 1.0),
                                         ("xavier", D.xavier_std),
                                         ("he", lambda s: D.kaiming_std(s, nonlinearity="relu"))])
def test_initialize_schemes(scheme, std):
    model = D.deep_mlp(depth=4, width=300, n_in=400, init=scheme, generator=gen(0))
    for layer in D.weight_layers(model):
        assert layer.weight.std().item() == pytest.approx(std(tuple(layer.weight.shape)), rel=0.1)
        assert torch.all(layer.bias == 0)
    with pytest.raises(ValueError):
        D.initialize(model, "orthogonal")


# ====================================================================== deep MLPs

def test_deep_mlp_structure():
    plain = D.deep_mlp(depth=6, width=10, n_in=7, n_out=3, activation="tanh", batch_norm=True)
    assert len(D.weight_layers(plain)) == 6
    assert sum(isinstance(m, nn.BatchNorm1d) for m in plain.modules()) == 4
    assert plain(torch.randn(5, 7)).shape == (5, 3)
    res = D.deep_mlp(depth=6, width=10, n_in=7, n_out=3, residual=True)
    assert sum(isinstance(m, D.Residual) for m in res.modules()) == 4
    assert len(D.activation_stats(res, torch.randn(5, 7))) == 5  # first activation + 4 blocks
    assert len(D.activation_stats(plain, torch.randn(5, 7))) == 5
    assert [o.shape for o in D.layer_outputs(plain, torch.randn(5, 7))] == [torch.Size([5, 10])] * 5
    with pytest.raises(ValueError):
        D.deep_mlp(depth=1)


def test_residual_block_adds_identity():
    block = D.Residual(nn.Linear(4, 4))
    with torch.no_grad():
        block.branch.weight.zero_()
        block.branch.bias.zero_()
    x = torch.randn(3, 4)
    assert torch.equal(block(x), x)


def test_sigmoid_gradients_vanish_and_relu_he_does_not():
    g = gen(0)
    X, y = torch.randn(128, 50, generator=g), torch.randint(0, 10, (128,), generator=g)
    torch.manual_seed(0)
    sig = D.gradient_profile(D.deep_mlp(20, 64, n_in=50, activation="sigmoid", init="xavier"), X, y)
    relu = D.gradient_profile(D.deep_mlp(20, 64, n_in=50, activation="relu", init="he"), X, y)
    res = D.gradient_profile(D.deep_mlp(20, 64, n_in=50, activation="relu", residual=True), X, y)
    assert len(sig) == len(relu) == 20
    assert sig[0] / sig[-1] < 1e-6
    assert 0.05 < relu[0] / relu[-1] < 20
    assert 0.05 < res[0] / res[-1] < 20


def test_activation_stats_match_a_manual_forward():
    model = D.deep_mlp(depth=3, width=5, n_in=4, activation="tanh", generator=gen(1), init="xavier")
    X = torch.randn(30, 4, generator=gen(2))
    h1 = torch.tanh(model[0](X))
    h2 = torch.tanh(model[2](h1))
    stats = D.activation_stats(model, X)
    assert stats[0] == pytest.approx((h1.mean().item(), h1.std().item()))
    assert stats[1] == pytest.approx((h2.mean().item(), h2.std().item()))


# ====================================================================== LR range test

def tiny_problem(seed=0):
    g = gen(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    centers = torch.randn(3, 4, generator=g) * 2
    batches = []
    for _ in range(10):
        y = torch.randint(0, 3, (16,), generator=g)
        batches.append((centers[y] + torch.randn(16, 4, generator=g), y))
    return model, batches


def test_lr_range_test_schedule_and_stop():
    model, batches = tiny_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs, losses = D.lr_range_test(model, opt, F.cross_entropy, batches, 1e-4, 1e3, steps=60)
    assert len(lrs) == len(losses) < 60, "a rate of 1000 must make the loss diverge"
    assert lrs[0] == 1e-4
    ratios = np.diff(np.log(lrs))
    assert np.allclose(ratios, math.log(1e7) / 59)
    assert not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses)
    assert all(math.isfinite(v) and v <= 4 * min(losses[:i + 1]) for i, v in enumerate(losses[:-1]))
    model, batches = tiny_problem()
    lrs, losses = D.lr_range_test(model, torch.optim.SGD(model.parameters(), lr=1.0), F.cross_entropy, batches,
                                  1e-4, 1e-2, steps=15)
    assert len(lrs) == 15 and lrs[-1] == pytest.approx(1e-2, rel=1e-12)


def test_lr_range_test_equals_a_manual_loop():
    model, batches = tiny_problem(1)
    twin_model, _ = tiny_problem(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    lrs, losses = D.lr_range_test(model, opt, F.cross_entropy, batches, 1e-3, 1e-1, steps=25)
    manual = []
    for i in range(25):
        lr = 1e-3 * 100 ** (i / 24)
        X, y = batches[i % 10]
        twin_model.zero_grad()
        loss = F.cross_entropy(twin_model(X), y)
        loss.backward()
        with torch.no_grad():
            for p in twin_model.parameters():
                p -= lr * p.grad
        manual.append(loss.item())
    assert losses == pytest.approx(manual, rel=1e-5)


def test_lr_finder_restores_model_and_optimizer():
    model, batches = tiny_problem(2)
    X = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lrs, losses = D.lr_finder(model, opt, (X, y), batch_size=16, lr_min=1e-5, lr_max=10, steps=80)
    assert 10 < len(lrs) <= 80
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.param_groups[0]["lr"] == 3e-3 and not opt.state
    s = D.suggest_lr(lrs, losses)
    assert s["min/10"] == pytest.approx(s["min"] / 10) and lrs[0] <= s["steepest"] <= s["min"]


def test_smooth_and_suggest_on_a_synthetic_curve():
    assert D.smooth([2.0] * 20) == pytest.approx([2.0] * 20)  # bias-corrected: no warm-up dip
    lrs = list(np.logspace(-5, 0, 101))
    losses = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 2) * 3)) + (20 * (lr - 0.3) if lr > 0.3 else 0)
              for lr in lrs]
    s = D.suggest_lr(lrs, losses, beta=0.0)
    assert 5e-3 < s["steepest"] < 2e-2
    assert 0.1 < s["min"] < 0.5


# ====================================================================== gradient noise

def test_gradient_noise_follows_one_over_b():
    g = gen(3)
    X = torch.randn(200, 6, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(200, generator=g) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    r = D.gradient_noise(model, X, y, [1, 4, 16, 64, 200], draws=150)
    assert r["predicted"][-1] == 0.0 and r["measured"][-1] == pytest.approx(0.0, abs=1e-10)  # B = N: no noise
    for m, p in zip(r["measured"][:-1], r["predicted"][:-1]):
        assert 0.6 < m / p < 1.5
    assert r["measured"] == sorted(r["measured"], reverse=True)
    assert model.training


# ====================================================================== class weights, recall

@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_class_weights_match_sklearn(counts, seed):
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=gen(seed))]
    w = D.class_weights(y, len(counts))
    assert w.dtype == torch.float32 and w.shape == (len(counts),)
    expected = compute_class_weight("balanced", classes=np.arange(len(counts)), y=y.numpy())
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    assert (w * torch.tensor(counts)).sum().item() == pytest.approx(len(y), rel=1e-5)


def test_recall_and_balanced_accuracy_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, recall_score

    g = gen(4)
    y = torch.randint(0, 5, (300,), generator=g)
    pred = torch.where(torch.rand(300, generator=g) < 0.7, y, torch.randint(0, 5, (300,), generator=g))
    np.testing.assert_allclose(D.per_class_recall(pred, y, 5).numpy(), recall_score(y, pred, average=None))
    assert D.balanced_accuracy(pred, y, 5) == pytest.approx(balanced_accuracy_score(y, pred))


def test_downsample_keeps_a_fraction_of_the_chosen_classes():
    y = torch.arange(10).repeat_interleave(100)
    X = torch.arange(1000.0)[:, None]
    Xs, ys = D.downsample(X, y, classes=range(5), keep=0.1, seed=0)
    assert torch.bincount(ys).tolist() == [10] * 5 + [100] * 5
    assert torch.equal(Xs[:, 0].long() // 100, ys), "rows stay paired and in order"
    again = D.downsample(X, y, classes=range(5), keep=0.1, seed=0)
    assert torch.equal(again[0], Xs)


# ====================================================================== the checks

def quiet(fn, *args, **kwargs):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = fn(*args, **kwargs)
    assert err.getvalue() == "", "a check must write nothing to stderr"
    return out


def torch_kaiming(t, mode="fan_in", generator=None):
    return torch.nn.init.kaiming_normal_(t, mode=mode, nonlinearity="relu", generator=generator)


RIGHT = {
    "clip_grad_norm": [D.clip_grad_norm, lambda ps, m: torch.nn.utils.clip_grad_norm_(ps, m)],
    "clip_grad_value": [D.clip_grad_value, torch.nn.utils.clip_grad_value_],
    "fan_in_and_fan_out": [D.fan_in_and_fan_out,
                           lambda s: torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(tuple(s)))
                           if len(s) >= 2 else (_ for _ in ()).throw(ValueError("1-D"))],
    "xavier_uniform": [D.xavier_uniform_, torch.nn.init.xavier_uniform_],
    "kaiming_normal": [D.kaiming_normal_, torch_kaiming],
    "lr_range_test": [D.lr_range_test],
    "class_weights": [D.class_weights],
}


@pytest.mark.parametrize("name", sorted(RIGHT))
@pytest.mark.parametrize("hidden", [False, True])
def test_checks_pass_right_answers(name, hidden, capsys):
    for fn in RIGHT[name]:
        assert quiet(getattr(check, name), fn, hidden=hidden) is None
    assert "✔" in capsys.readouterr().out


def _clip_no_eps(params, max_norm):
    params = [p for p in params if p.grad is not None]
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    for p in params:
        p.grad.mul_(min(1.0, max_norm / total.item()))
    return total


def _clip_per_param(params, max_norm):
    params = list(params)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None))
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_([p], max_norm)
    return total


def _clip_twice_through(params, max_norm):  # walks a generator twice: the second loop sees nothing
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None))
    for p in params:
        if p.grad is not None:
            p.grad.mul_(min(1.0, max_norm / (total.item() + 1e-6)))
    return total


def _clip_returns_after(params, max_norm):
    params = list(params)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None))


def _clip_new_tensors(params, max_norm):  # replaces .grad instead of scaling in place: still correct
    params = [p for p in params if p.grad is not None]
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    for p in params:
        p.grad = p.grad * min(1.0, max_norm / (total.item() + 1e-6))
    return total.item()


def _fans_swapped(shape):
    a, b = D.fan_in_and_fan_out(shape)
    return b, a


def _fans_no_field(shape):
    if len(shape) < 2:
        raise ValueError
    return shape[1], shape[0]


def _fans_no_error(shape):
    return D.fan_in_and_fan_out(shape) if len(shape) >= 2 else (1, 1)


def _xavier_std_bound(t, gain=1.0, generator=None):
    b = D.xavier_std(t.shape, gain)
    with torch.no_grad():
        return t.uniform_(-b, b, generator=generator)


def _xavier_global_rng(t, gain=1.0, generator=None):
    b = math.sqrt(3) * D.xavier_std(t.shape, gain)
    with torch.no_grad():
        return t.uniform_(-b, b)


def _xavier_returns_new(t, gain=1.0, generator=None):
    b = math.sqrt(3) * D.xavier_std(t.shape, gain)
    return torch.empty_like(t).uniform_(-b, b, generator=generator)


def _he_no_gain(t, mode="fan_in", generator=None):
    fan = D.fan_in_and_fan_out(t.shape)[0 if mode == "fan_in" else 1]
    with torch.no_grad():
        return t.normal_(0, 1 / math.sqrt(fan), generator=generator)


def _he_swapped(t, mode="fan_in", generator=None):
    fan = D.fan_in_and_fan_out(t.shape)[1 if mode == "fan_in" else 0]
    with torch.no_grad():
        return t.normal_(0, math.sqrt(2 / fan), generator=generator)


def _he_ignores_mode(t, mode="fan_in", generator=None):
    return torch_kaiming(t, "fan_in", generator)


def _he_randn(t, mode="fan_in", generator=None):  # torch.randn with the generator: the same numbers, accepted
    fan = D.fan_in_and_fan_out(t.shape)[0 if mode == "fan_in" else 1]
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype) * math.sqrt(2 / fan))
    return t


def _cw_inverse(y, c):
    return 1.0 / torch.bincount(y, minlength=c).float()


def _cw_float64(y, c):
    return D.class_weights(y, c).double()


WRONG = [
    ("clip_grad_norm", _clip_per_param, False, "global"),
    ("clip_grad_norm", _clip_no_eps, True, "1e-6"),
    ("clip_grad_norm", _clip_twice_through, False, "generator"),
    ("clip_grad_norm", _clip_returns_after, False, "before"),
    ("clip_grad_value", lambda ps, c: [p.grad.clamp_(max=c) for p in ps if p.grad is not None] and None, False,
     "both sides"),
    ("clip_grad_value", lambda ps, c: [p.data.clamp_(-c, c) for p in ps], False, "parameters themselves"),
    ("fan_in_and_fan_out", _fans_swapped, False, "swapped"),
    ("fan_in_and_fan_out", _fans_no_field, False, "receptive field"),
    ("fan_in_and_fan_out", _fans_no_error, False, "ValueError"),
    ("xavier_uniform", _xavier_std_bound, False, "sqrt(3)"),
    ("xavier_uniform", _xavier_global_rng, False, "generator"),
    ("xavier_uniform", _xavier_returns_new, False, "in place"),
    ("xavier_uniform", lambda t, gain=1.0, generator=None: D.xavier_uniform_(t, generator=generator), False, "gain"),
    ("kaiming_normal", _he_no_gain, False, "sqrt(2)"),
    ("kaiming_normal", _he_swapped, False, "swapped"),
    ("kaiming_normal", _he_ignores_mode, False, "swapped"),
    ("lr_range_test", check._LR_MISTAKES[next(k for k in check._LR_MISTAKES if "exponentially" in k)], False,
     "exponentially"),
    ("lr_range_test", check._LR_MISTAKES[next(k for k in check._LR_MISTAKES if "zero the gradients" in k)], False,
     "zero the gradients"),
    ("lr_range_test", check._LR_MISTAKES[next(k for k in check._LR_MISTAKES if "one step late" in k)], False,
     "one step late"),
    ("lr_range_test", check._LR_MISTAKES[next(k for k in check._LR_MISTAKES if "stop right after" in k)], False,
     "stop right after"),
    ("class_weights", _cw_inverse, False, "normalised"),
    ("class_weights", _cw_float64, False, "float32"),
]


@pytest.mark.parametrize("name, wrong, hidden_only, hint", WRONG, ids=[f"{w[0]}-{w[3]}" for w in WRONG])
def test_checks_name_the_mistake(name, wrong, hidden_only, hint):
    if hidden_only:
        quiet(getattr(check, name), wrong)  # the visible cases cannot tell
    with pytest.raises(CheckFailed) as info:
        quiet(getattr(check, name), wrong, hidden=True)
    assert hint in str(info.value), str(info.value)


@pytest.mark.parametrize("name, fn", [("clip_grad_norm", _clip_new_tensors), ("kaiming_normal", _he_randn)])
def test_checks_accept_other_correct_styles(name, fn):
    quiet(getattr(check, name), fn, hidden=True)


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_checks_report_unwritten_and_crashing_functions(name):
    def unwritten(*args, **kwargs):
        raise NotImplementedError()

    def crashes(*args, **kwargs):
        return [][1]

    with pytest.raises(CheckFailed, match="not written yet"):
        quiet(getattr(check, name), unwritten)
    with pytest.raises(CheckFailed, match="IndexError"):
        quiet(getattr(check, name), crashes)


def test_checks_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    check.lr_range_test(D.lr_range_test)
    check.xavier_uniform(D.xavier_uniform_)
    assert torch.equal(torch.rand(3), before)


# ====================================================================== explorer

def _controls(box):
    found, stack = [], [box]
    while stack:
        widget = stack.pop()
        found.append(widget)
        stack.extend(getattr(widget, "children", ()))
    return found


def test_init_explorer_redraws_for_every_control():
    import ipywidgets as w
    import matplotlib.pyplot as plt

    plt.close("all")
    box = D.init_explorer()
    assert isinstance(box, w.VBox)
    controls = _controls(box)
    depth = next(c for c in controls if isinstance(c, w.IntSlider))
    act, init = (next(c for c in controls if isinstance(c, w.Dropdown) and c.description == d)
                 for d in ("activation", "init"))
    bn = next(c for c in controls if isinstance(c, w.Checkbox))
    drawn = len(plt.get_fignums())
    assert drawn == 1
    for name in act.options:
        if name != act.value:
            act.value = name
            drawn += 1
            assert len(plt.get_fignums()) == drawn
            assert name in plt.gcf().texts[0].get_text() if plt.gcf().texts else True
    for scheme in init.options:
        if scheme != init.value:
            init.value = scheme
            drawn += 1
    depth.value = 7
    bn.value = True
    drawn += 2
    assert len(plt.get_fignums()) == drawn
    std_line = plt.gcf().axes[0].get_lines()[0]
    assert len(std_line.get_xdata()) == 6, "depth 7 has 6 hidden activations"
    plt.close("all")


def test_depth_profile_shows_the_textbook_pattern():
    small = D.depth_profile(30, "tanh", "too small")
    he = D.depth_profile(30, "relu", "he")
    assert small["std"][-1] < 1e-10 < small["std"][0]
    assert 0.3 < he["std"][-1] / he["std"][0] < 3
    assert len(he["grad"]) == 30


# ====================================================================== CUDA (skipped without a GPU)

@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_their_checks_on_cuda(hidden):
    cuda = torch.device("cuda")
    check.clip_grad_norm(D.clip_grad_norm, hidden=hidden, device=cuda)
    check.clip_grad_value(D.clip_grad_value, hidden=hidden, device=cuda)
    check.xavier_uniform(D.xavier_uniform_, hidden=hidden, device=cuda)
    check.kaiming_normal(D.kaiming_normal_, hidden=hidden, device=cuda)
    check.lr_range_test(D.lr_range_test, hidden=hidden, device=cuda)
    check.class_weights(D.class_weights, hidden=hidden, device=cuda)


@pytest.mark.cuda
def test_tools_run_on_cuda():
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = D.deep_mlp(depth=6, width=16, n_in=10, residual=True).to(cuda)
    X, y = torch.randn(64, 10, device=cuda), torch.randint(0, 10, (64,), device=cuda)
    assert len(D.gradient_profile(model, X, y)) == 6
    assert len(D.activation_stats(model, X)) == 5
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clipper = D.GradientClipper(opt, max_norm=0.1)
    training.fit(model, (X.cpu(), y.cpu()), epochs=1, optimizer=opt, device=cuda, progress=False)
    assert len(clipper.norms) == 2
    lrs, losses = D.lr_finder(model, opt, (X.cpu(), y.cpu()), batch_size=16, steps=20)
    assert len(lrs) == len(losses) > 0
    r = D.gradient_noise(model, X, y, [4, 16], draws=5)
    assert len(r["measured"]) == 2
    w = D.class_weights(y, 10)
    assert w.device.type == "cuda" and w.dtype == torch.float32
    assert D.per_class_recall(y, y, 10).device.type == "cuda"
