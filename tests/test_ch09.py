"""Chapter 9's references (companion.transfer) and its checks.

- freeze / unfreeze / param_groups / layerwise_groups on real models and with torch.optim;
- adaptive batch norm against statistics computed by hand in float64;
- the gradient-reversal layer through autograd, alone and inside a network;
- the pretrained source CNN's checksummed cache: built once, loaded after, rebuilt when corrupt;
- data helpers (few-shot draws, the two digit domains), MiniLM's cached top-layer states;
- each check passes the reference and a learner-style solution (visible and hidden), and
  fails plausible wrong implementations with a message that names the mistake.
"""
from __future__ import annotations

import copy

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from companion import transfer as T  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch09 as check  # noqa: E402

F64 = torch.float64


def seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def small_cnn(seed=0):
    return seeded(lambda: T.SmallCNN(n_classes=3, widths=(4, 6, 8)), seed)


def mlp(seed=0):
    return seeded(lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2)), seed)


# ====================================================================== freezing

def test_freeze_sets_flags_modes_and_count():
    model = small_cnn().train()
    n = T.freeze(model, ("head",))
    assert n == sum(p.numel() for p in model.head.parameters())
    assert all(p.requires_grad == name.startswith("head.") for name, p in model.named_parameters())
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.training and model.head.training and model.block1[0].training  # only batch norm changes mode
    n2 = T.freeze(model, ("head", "block3"))
    assert n2 == n + sum(p.numel() for p in model.block3.parameters())
    assert model.block3[1].training and not model.block2[1].training


def test_freeze_in_eval_mode_keeps_everything_in_eval():
    model = small_cnn().eval()
    T.freeze(model, ("head", "block3"))
    assert not any(m.training for m in model.modules())


def test_freeze_prefix_needs_a_dot():
    model = nn.Sequential()
    model.add_module("head", nn.Linear(2, 2))
    model.add_module("header", nn.Linear(2, 2))
    T.freeze(model, ("head",))
    assert model.head.weight.requires_grad and not model.header.weight.requires_grad


def test_small_cnn_keeps_frozen_batch_norm_in_eval_through_train():
    model = small_cnn()
    T.freeze(model, ("head",))
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = model.block1[1].running_mean.clone()
    model(torch.randn(8, 1, 8, 8) + 3)
    assert torch.equal(model.block1[1].running_mean, before)
    model.keep_frozen_bn_eval = False  # the plain PyTorch behaviour: train() switches every layer back
    model.train()
    assert all(m.training for m in model.modules())
    model(torch.randn(8, 1, 8, 8) + 3)
    assert not torch.equal(model.block1[1].running_mean, before)


def test_plain_sequential_loses_frozen_eval_on_train():
    """Why SmallCNN overrides train(): nn.Module.train puts frozen batch norm back in training mode."""
    model = mlp()
    T.freeze(model, ("3",))
    assert not model[1].training
    model.train()
    assert model[1].training


def test_unfreeze_and_count():
    model = small_cnn().train()
    T.freeze(model, ())
    assert T.count_trainable(model) == 0
    assert T.unfreeze(model) == sum(p.numel() for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_frozen_parameters_do_not_move_in_training():
    torch.manual_seed(0)
    model = small_cnn().train()
    T.freeze(model, ("head",))
    frozen = copy.deepcopy(model.block1.state_dict())
    opt = torch.optim.SGD(T.param_groups(model, 0.1, 0.1), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(16, 1, 8, 8)), torch.randint(0, 3, (16,))).backward()
        opt.step()
    for key, value in model.block1.state_dict().items():
        assert torch.equal(value, frozen[key]), key


# ====================================================================== parameter groups

def test_param_groups_split_and_skip_frozen():
    model = small_cnn()
    T.freeze(model.train(), ("block3", "head"))
    body, head = T.param_groups(model, 1e-4, 1e-2)
    assert body["lr"] == 1e-4 and head["lr"] == 1e-2
    assert [id(p) for p in head["params"]] == [id(p) for p in model.head.parameters()]
    assert [id(p) for p in body["params"]] == [id(p) for p in model.block3.parameters()]
    optimizer = torch.optim.Adam([body, head])
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-2]


def test_param_groups_sgd_step_uses_each_rate():
    model = mlp().double()
    groups = T.param_groups(model, 0.01, 0.5, head="3")
    x = torch.randn(6, 5, dtype=F64)
    model(x).sum().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.SGD(groups, lr=99.0).step()
    for n, p in model.named_parameters():
        lr = 0.5 if n.startswith("3.") else 0.01
        torch.testing.assert_close(p.detach(), before[n] - lr * p.grad, rtol=1e-12, atol=1e-12)


def test_empty_group_is_accepted():
    model = small_cnn()
    T.freeze(model, ("head",))
    groups = T.param_groups(model, 1e-3, 1e-2)
    assert groups[0]["params"] == []
    torch.optim.Adam(groups)


def test_layerwise_groups_decay_and_drop_empty():
    model = small_cnn()
    T.freeze(model, ("head", "block3", "block2"))
    groups = T.layerwise_groups(model, ["head", "block3", "block2", "block1"], 1e-2, 0.5)
    assert [g["name"] for g in groups] == ["head", "block3", "block2"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 5e-3, 2.5e-3])


# ====================================================================== adaptive batch norm

def conv_bn(seed=0):
    model = seeded(lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                                         nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)), seed).double()
    with torch.no_grad():
        model.train()
        for _ in range(5):
            model(torch.randn(10, 1, 7, 7, dtype=F64) + 2)
    return model.eval()


@pytest.mark.parametrize("batch_size", [7, 40, 1000])
def test_adapt_bn_matches_hand_computed_statistics(batch_size):
    model = conv_bn()
    X = torch.randn(40, 1, 7, 7, dtype=F64) * 3 - 1
    weights = {n: p.clone() for n, p in model.named_parameters()}
    ref = copy.deepcopy(model)
    out = T.adapt_bn(model, X, batch_size=batch_size)
    assert out is model and not model.training
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == [0.1, 0.1]
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n])
    # by hand: each batch's input to the batch-norm layer (dropout off), per-channel mean and
    # unbiased variance, averaged over batches (the first layer's input does not depend on the statistics)
    with torch.no_grad():
        means, vars_ = [], []
        for i in range(0, len(X), batch_size):
            z = ref[0](X[i:i + batch_size])
            means.append(z.mean(dim=(0, 2, 3)))
            vars_.append(z.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True))
    torch.testing.assert_close(model[1].running_mean, torch.stack(means).mean(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, torch.stack(vars_).mean(0), rtol=1e-10, atol=1e-12)
    assert int(model[1].num_batches_tracked) == len(means)


def test_adapt_bn_second_layer_sees_batch_normalised_input_without_dropout():
    model = conv_bn()
    X = torch.randn(25, 1, 7, 7, dtype=F64)
    T.adapt_bn(model, X, batch_size=100)
    with torch.no_grad():
        z = model[0](X)
        z = F.batch_norm(z, None, None, model[1].weight, model[1].bias, training=True)
        z = model[4](F.relu(z))  # dropout skipped: the model is in eval mode during the pass
    torch.testing.assert_close(model[5].running_mean, z.mean(dim=(0, 2, 3)), rtol=1e-10, atol=1e-12)


def test_adapt_bn_restores_training_mode():
    model = conv_bn().train()
    T.adapt_bn(model, torch.randn(9, 1, 7, 7, dtype=F64))
    assert all(m.training for m in model.modules())


# ====================================================================== gradient reversal

@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=3), lam=st.floats(-3, 3))
def test_grad_reverse_forward_identity_backward_negated(shape, lam):
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    up = torch.randn(shape, dtype=F64)
    y = T.grad_reverse(x, lam)
    assert torch.equal(y, x) and y is not x
    (g,) = torch.autograd.grad(y, x, grad_outputs=up)
    torch.testing.assert_close(g, -lam * up, rtol=0, atol=0)


def test_grad_reverse_inside_a_network_reverses_the_upstream_gradient():
    torch.manual_seed(0)
    body, disc = nn.Linear(4, 3).double(), nn.Linear(3, 2).double()
    x, y = torch.randn(8, 4, dtype=F64), torch.randint(0, 2, (8,))
    plain = torch.autograd.grad(F.cross_entropy(disc(body(x)), y), body.weight)[0]
    reversed_ = torch.autograd.grad(F.cross_entropy(disc(T.grad_reverse(body(x), 0.3)), y), body.weight)[0]
    torch.testing.assert_close(reversed_, -0.3 * plain, rtol=1e-12, atol=1e-14)
    # the domain classifier itself still descends its loss: its gradient is unchanged
    g1 = torch.autograd.grad(F.cross_entropy(disc(body(x)), y), disc.weight)[0]
    g2 = torch.autograd.grad(F.cross_entropy(disc(T.grad_reverse(body(x), 0.3)), y), disc.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_dann_lambda_schedule():
    assert T.dann_lambda(0.0) == 0.0
    assert 0.999 < T.dann_lambda(1.0) < 1.0
    values = [T.dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)


def test_train_dann_runs_and_logs():
    D = T.Domains(*[(torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))) for _ in range(4)])
    model = T.digit_cnn(0)
    disc, hist = T.train_dann(model, D.source, D.target[0], epochs=2, batch_size=16, progress=False,
                              device=torch.device("cpu"))
    assert set(hist.metrics) == {"loss", "domain_loss", "domain_acc", "lam"} and hist.epochs == 2
    assert isinstance(disc, T.DomainClassifier) and not model.training


# ====================================================================== data and the pretrained CNN

def test_few_shot_indices():
    y = torch.arange(5).repeat_interleave(30)
    idx = T.few_shot_indices(y, 4, seed=1)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert torch.equal(torch.bincount(y[idx]), torch.full((5,), 4))
    assert torch.equal(idx, T.few_shot_indices(y, 4, seed=1))
    assert not torch.equal(idx, T.few_shot_indices(y, 4, seed=2))
    with pytest.raises(ValueError):
        T.few_shot_indices(y, 31)


def test_shrink_is_block_average():
    x = torch.rand(3, 1, 28, 28, dtype=F64)
    torch.testing.assert_close(T.shrink(x, 7), F.avg_pool2d(x, 4), rtol=1e-12, atol=1e-12)


def test_digit_transfer_data_and_domains():
    d = T.digit_transfer_data()
    for X, y in (d.source_train, d.source_val, d.target_pool, d.target_test):
        assert X.shape[1] == 784 and set(y.tolist()) == set(range(5))
    assert len(d.source_train[1]) + len(d.source_val[1]) + len(d.target_pool[1]) + len(d.target_test[1]) < 5000
    D = T.digit_domains()
    assert D.source[0].shape[1:] == D.target[0].shape[1:] == (1, 8, 8)
    assert abs(D.source[0].mean().item()) < 1e-4 and abs(D.source[0].std().item() - 1) < 1e-3
    assert len(D.source[1]) + len(D.source_test[1]) == 1797 and len(D.target[1]) + len(D.target_test[1]) == 5000


def test_fit_steps_counts_epochs():
    model = nn.Linear(3, 2)
    hist = T.fit_steps(model, (torch.randn(10, 3), torch.randint(0, 2, (10,))), steps=12, batch_size=4,
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False,
                       device=torch.device("cpu"))
    assert hist.epochs == 4  # 3 steps an epoch, 12 steps


def test_progressive_unfreezing_stages():
    torch.manual_seed(0)
    model = small_cnn()
    train = (torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,)))
    block1 = copy.deepcopy(model.block1.state_dict())
    hist = T.progressive_unfreezing(model, train, stages=[("head",), ("head", "block3")], steps_per_stage=4,
                                    base_lr=1e-3, head_lr=1e-2, batch_size=10, progress=False,
                                    device=torch.device("cpu"))
    assert hist["stage"] == [0, 0, 1, 1]
    for key, value in model.block1.state_dict().items():  # never unfrozen: weights and statistics untouched
        assert torch.equal(value, block1[key]), key


@pytest.fixture
def quick_pretraining(monkeypatch):
    monkeypatch.setattr(T, "_source_settings", lambda fast: {"epochs": 1, "batch_size": 256, "lr": 3e-3})


def test_pretrain_source_cnn_caches_with_checksum(tmp_cache, quick_pretraining, capsys):
    first = T.pretrain_source_cnn(fast=True, progress=False, device=torch.device("cpu"))
    path = T.checkpoint_path(True)
    assert path.exists() and path.with_suffix(".sha256").exists() and path.parent == tmp_cache
    assert first.pretraining["from_cache"] is False and not first.training
    second = T.pretrain_source_cnn(fast=True, progress=False, device=torch.device("cpu"))
    assert second.pretraining["from_cache"] is True
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert T.checkpoint_path(False) != path
    # a corrupted checkpoint is detected and rebuilt
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    capsys.readouterr()
    third = T.pretrain_source_cnn(fast=True, progress=False, device=torch.device("cpu"))
    assert "failed its checksum" in capsys.readouterr().out
    assert third.pretraining["from_cache"] is False
    assert T.pretrain_source_cnn(fast=True, progress=False, device=torch.device("cpu")).pretraining["from_cache"]


def test_transfer_model_has_fresh_seeded_head():
    base = small_cnn()
    a, b, c = (T.transfer_model(base, 5, seed) for seed in (0, 0, 1))
    assert a.head.out_features == 5 and torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(a.block1[0].weight, base.block1[0].weight) and a.block1[0].weight is not base.block1[0].weight


# ====================================================================== MiniLM top-layer states

def test_minilm_states_reproduce_the_sentence_embedding():
    from companion import pretrained

    tokenizer, encoder = pretrained.load_minilm()
    texts = ["A quiet, lovely film.", "Dull.", "It never finds its footing, and the jokes land with a thud."]
    packed = T.minilm_states(texts, n_top=1, tokenizer=tokenizer, model=encoder, batch_size=2, progress=False)
    assert packed["tokens"].dtype == np.float16 and packed["lengths"].sum() == len(packed["tokens"])
    batches = T.state_batches(packed["tokens"], packed["lengths"], batch_size=2)
    model = T.TopLayersClassifier(encoder, n_top=1).eval()
    with torch.no_grad():
        ours = torch.cat([model.embed(h, m) for h, m in batches])
    theirs = pretrained.embed(texts, tokenizer=tokenizer, model=encoder, progress=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-3)  # float16 storage
    assert T.predict_top_layers(model, batches).shape == (3, 2)


# ====================================================================== checks

SOLUTIONS = '''
import torch
from torch import nn

def freeze(model, trainable=("head",)):
    def is_trainable(name):
        return any(name == prefix or name.startswith(prefix + ".") for prefix in trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name))
    for name, module in model.named_modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.train(model.training and is_trainable(name))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

def param_groups(model, base_lr, head_lr, head="head"):
    body, top = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(head + "."):
            top.append(param)
        else:
            body.append(param)
    return [{"params": body, "lr": base_lr}, {"params": top, "lr": head_lr}]

def adapt_bn(model, X, batch_size=256):
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            model(X[start:start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model

class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None

def grad_reverse(x, lam=1.0):
    return GradReverse.apply(x, lam)
'''


def learner(edit=None):
    source = SOLUTIONS if edit is None else SOLUTIONS.replace(*edit)
    assert edit is None or edit[0] in SOLUTIONS, edit
    namespace = {}
    exec(source, namespace)
    return namespace


NAMES = ["freeze", "param_groups", "adapt_bn", "grad_reverse"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hidden", [False, True])
def test_checks_pass_reference_and_learner_solution(name, hidden, capsys):
    getattr(check, name)(getattr(T, name), hidden=hidden)
    getattr(check, name)(learner()[name], hidden=hidden)
    out = capsys.readouterr()
    assert out.out.count("\u2714") == 2 and out.err == ""


WRONG = [
    ("freeze", ("module.train(model.training and is_trainable(name))", "pass"), "evaluation mode"),
    ("freeze", ("param.requires_grad_(is_trainable(name))", "param.requires_grad_(False)"), "freeze the head"),
    ("freeze", ("return sum(p.numel() for p in model.parameters() if p.requires_grad)",
                "return sum(1 for p in model.parameters() if p.requires_grad)"), "p.numel()"),
    ("freeze", ("module.train(model.training and is_trainable(name))",
                "module.eval() if not is_trainable(name) else None"), "follow the model"),
    ("param_groups", ("        if not param.requires_grad:\n            continue\n", ""), "leave frozen"),
    ("param_groups", ('return [{"params": body, "lr": base_lr}, {"params": top, "lr": head_lr}]',
                      'return [{"params": body, "lr": head_lr}, {"params": top, "lr": base_lr}]'), "swapped"),
    ("adapt_bn", ("        m.reset_running_stats()\n", ""), "not reset"),
    ("adapt_bn", ("        m.momentum = None\n", ""), "momentum=None"),
    ("adapt_bn", ("    model.eval()\n", "    model.train()\n"), "dropout"),
    ("adapt_bn", ("        m.momentum = momentum\n", "        pass\n"), "momentum back"),
    ("adapt_bn", ("    model.train(was_training)\n", ""), "the way it was"),
    ("grad_reverse", ("return -ctx.lam * grad, None", "return ctx.lam * grad, None"), "sign is wrong"),
    ("grad_reverse", ("return -ctx.lam * grad, None", "return -grad, None"), "lambda is ignored"),
    ("grad_reverse", ("return x.view_as(x)", "return -x"), "only in backward"),
]


@pytest.mark.parametrize("name, edit, hint", WRONG, ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG)])
def test_checks_name_the_mistake(name, edit, hint, capsys):
    fn = learner(edit)[name]
    with pytest.raises(CheckFailed, match=None) as info:
        getattr(check, name)(fn, hidden=True)
    assert hint in str(info.value), str(info.value)
    assert capsys.readouterr().err == ""


def test_check_reports_not_written_yet():
    def todo(*args, **kwargs):
        raise NotImplementedError()

    for name in NAMES:
        with pytest.raises(CheckFailed, match="not written yet"):
            getattr(check, name)(todo)


def test_checks_do_not_touch_global_rng():
    state = torch.random.get_rng_state()
    check.adapt_bn(T.adapt_bn)
    assert torch.equal(torch.random.get_rng_state(), state)
