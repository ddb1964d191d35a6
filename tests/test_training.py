"""companion.training (fit, History, EarlyStopping, evaluate) and companion.models."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from companion import models
from companion.training import EarlyStopping, History, accuracy, batches, evaluate, fit, predict

CPU = torch.device("cpu")


def blobs(n=200, seed=0):
    """Two well-separated Gaussian blobs in 2-D: labels 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centers = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    X = centers[y] + 0.5 * torch.randn(n, 2, generator=g)
    return X, y


def small_net(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


# ------------------------------------------------------------------ fit

def test_fit_learns_a_separable_problem():
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    model = small_net()
    h = fit(model, (X, y), (Xv, yv), epochs=15, lr=1e-2, batch_size=32, device=CPU, progress=False)
    assert h["acc"][-1] >= 0.98
    assert h["val_acc"][-1] >= 0.98
    assert h["loss"][-1] < h["loss"][0]
    assert evaluate(model, (Xv, yv))["acc"] == pytest.approx(h["val_acc"][-1])
    assert accuracy(predict(model, Xv), yv) >= 0.98


def test_history_contents():
    X, y = blobs(64)
    epochs = 4
    h = fit(small_net(), (X, y), (X, y), epochs=epochs, lr=3e-3, device=CPU, progress=False)
    assert isinstance(h, History)
    assert set(h.metrics) == {"loss", "acc", "val_loss", "val_acc", "lr"}
    for key in ("loss", "acc", "val_loss", "val_acc", "lr"):
        assert key in h
        assert len(h[key]) == epochs, key
        assert all(isinstance(v, float) for v in h[key]), key
    assert h.epochs == epochs
    assert h["lr"] == [3e-3] * epochs
    assert all(0.0 <= a <= 1.0 for a in h["acc"] + h["val_acc"])
    assert all(v > 0 for v in h["loss"] + h["val_loss"])
    assert h.stopped_epoch is None
    index, value = h.best("val_loss")
    assert value == min(h["val_loss"]) and h["val_loss"][index] == value
    assert h.best("val_acc", mode="max")[1] == max(h["val_acc"])


def test_history_without_validation_has_no_val_keys():
    X, y = blobs(64)
    h = fit(small_net(), (X, y), epochs=2, device=CPU, progress=False)
    assert "val_loss" not in h and "val_acc" not in h
    assert len(h["loss"]) == len(h["lr"]) == 2


def test_scheduler_is_stepped_once_per_epoch():
    X, y = blobs(64)
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    h = fit(model, (X, y), epochs=3, optimizer=opt, scheduler=sched, device=CPU, progress=False)
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_fit_is_deterministic_on_cpu():
    X, y = blobs(96)
    Xv, yv = blobs(48, seed=1)
    runs = []
    for _ in range(2):
        model = small_net(seed=3, dropout=0.2)  # dropout draws from the global generator too
        h = fit(model, (X, y), (Xv, yv), epochs=3, lr=1e-2, batch_size=16, device=CPU,
                progress=False, seed=7)
        runs.append((h.metrics, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]  # identical floats, not just close
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


def test_fit_seed_controls_shuffling():
    X, y = blobs(96)
    h1 = fit(small_net(seed=3), (X, y), epochs=2, batch_size=8, device=CPU, progress=False, seed=1)
    h2 = fit(small_net(seed=3), (X, y), epochs=2, batch_size=8, device=CPU, progress=False, seed=2)
    assert h1["loss"] != h2["loss"]


def test_fit_accepts_an_iterable_of_batches():
    X, y = blobs(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
    h = fit(small_net(), loader, loader, epochs=2, device=CPU, progress=False)
    assert len(h["loss"]) == 2 and len(h["val_acc"]) == 2


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_huge_learning_rate_raises_floating_point_error(opt):
    X, y = blobs(64)
    model = small_net()
    optimizer = (torch.optim.SGD if opt == "sgd" else torch.optim.Adam)(model.parameters(), lr=1e30)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(model, (X, y), epochs=5, optimizer=optimizer, device=CPU, progress=False)


def test_acc_logged_even_when_zero():
    X = torch.randn(64, 2)
    y = torch.zeros(64, dtype=torch.long)
    model = nn.Linear(2, 2)
    with torch.no_grad():  # always predicts class 1: accuracy 0 while lr is tiny
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 10.0]))
    h = fit(model, (X, y), epochs=2, lr=1e-6, device=CPU, progress=False)
    assert h["acc"] == [0.0, 0.0]


def test_fit_with_a_loss_module_and_validation():
    X, y = blobs(64)
    h = fit(small_net(), (X, y), (X, y), epochs=1, loss_fn=nn.CrossEntropyLoss(), device=CPU, progress=False)
    assert len(h["val_loss"]) == 1


# ------------------------------------------------------------------ EarlyStopping

class Recorder:
    """Keeps a copy of the weights at the end of every epoch (runs before EarlyStopping)."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, epoch, logs, model):
        self.states.append(copy.deepcopy(model.state_dict()))
        return False


def test_early_stopping_stops_and_restores_best_weights():
    X, y = blobs(64)
    # validation labels are the opposite of the training ones: the better the model fits
    # the training data, the worse its validation loss, so training soon stops improving it
    val = (X, 1 - y)
    model = small_net()
    rec, es = Recorder(), EarlyStopping(monitor="val_loss", patience=3)
    h = fit(model, (X, y), val, epochs=50, lr=1e-2, device=CPU, progress=False, callbacks=[rec, es])
    assert h.stopped_epoch is not None and h.stopped_epoch < 49
    assert h.epochs == h.stopped_epoch + 1 == len(rec.states)
    best_epoch, best_value = h.best("val_loss")
    assert es.best_epoch == best_epoch and es.best == best_value
    assert h.stopped_epoch == best_epoch + 3  # exactly `patience` epochs without improvement
    # the model holds the best epoch's weights, not the last epoch's
    for key, value in model.state_dict().items():
        assert torch.equal(value, rec.states[best_epoch][key]), key
    assert any(not torch.equal(model.state_dict()[k], rec.states[-1][k]) for k in rec.states[-1])
    assert evaluate(model, val)["loss"] == pytest.approx(best_value, rel=1e-6)


def test_early_stopping_without_restore_keeps_last_weights():
    X, y = blobs(64)
    model = small_net()
    rec = Recorder()
    fit(model, (X, y), (X, 1 - y), epochs=50, lr=1e-2, device=CPU, progress=False,
        callbacks=[rec, EarlyStopping(patience=2, restore_best=False)])
    for key, value in model.state_dict().items():
        assert torch.equal(value, rec.states[-1][key])


def test_early_stopping_rules():
    es = EarlyStopping(monitor="val_acc", mode="max", patience=2, min_delta=0.01)
    model = nn.Linear(1, 1)
    es.on_train_begin(model)
    assert es.on_epoch_end(0, {"val_acc": 0.5}, model) is False      # improvement
    assert es.on_epoch_end(1, {"val_acc": 0.505}, model) is False    # < min_delta: wait 1
    assert es.on_epoch_end(2, {"val_acc": 0.6}, model) is False      # improvement resets
    assert es.on_epoch_end(3, {"val_acc": 0.6}, model) is False      # wait 1
    assert es.on_epoch_end(4, {"val_acc": 0.59}, model) is True      # wait 2 -> stop
    assert es.best == 0.6 and es.best_epoch == 2
    with pytest.raises(KeyError, match="val_acc"):
        es.on_epoch_end(5, {"loss": 1.0}, model)
    with pytest.raises(ValueError):
        EarlyStopping(mode="largest")


def test_early_stopping_missing_monitor_in_fit():
    X, y = blobs(32)
    with pytest.raises(KeyError, match="val_loss"):
        fit(small_net(), (X, y), epochs=2, device=CPU, progress=False, callbacks=[EarlyStopping()])


# ------------------------------------------------------------------ helpers

def test_batches_covers_every_row_once():
    X, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    parts = list(batches((X, y), 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in parts] == [4, 4, 2]
    got = torch.cat([b[1] for b in parts])
    assert sorted(got.tolist()) == list(range(10))
    for bx, by in parts:
        assert torch.equal(bx.squeeze(1).long(), by)
    ordered = torch.cat([b[1] for b in batches((X, y), 3, shuffle=False)])
    assert torch.equal(ordered, y)


def test_evaluate_restores_training_mode():
    X, y = blobs(32)
    model = small_net(dropout=0.5)
    model.train()
    result = evaluate(model, (X, y), batch_size=10)
    assert model.training
    assert set(result) == {"loss", "acc"}
    with torch.no_grad():
        model.eval()
        expected = F.cross_entropy(model(X), y).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ models

def test_guide_mlp_parameters_and_output():
    model = models.guide_mlp()
    assert models.count_parameters(model) == 111_146
    assert sum(p.numel() for p in model.parameters()) == 111_146
    model.eval()
    out = model(torch.randn(5, 784))
    assert out.shape == (5, 10)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [128, 64, 32, 10]
    assert sum(isinstance(m, nn.Dropout) for m in model) == 2
    assert not isinstance(list(model)[-1], nn.Softmax)  # logits, not probabilities


def test_count_parameters_trainable_only():
    model = models.guide_mlp(n_in=20, n_classes=3)
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen = 20 * 128 + 128
    total = models.count_parameters(model, trainable_only=False)
    assert models.count_parameters(model) == total - frozen
