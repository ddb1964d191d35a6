"""companion.callbacks with companion.training.fit: checkpoints, LR reduction, early stopping, logs."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from companion import callbacks as cb
from companion import training
from companion.training import fit

CPU = torch.device("cpu")


def blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centers = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    return centers[y] + 0.9 * torch.randn(n, 2, generator=g), y


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def replay(callback, values, key="val_loss", model=None):
    """Drive a callback by hand: epoch e gets logs {key: values[e]} and weights filled with e."""
    model = model or small_net()
    callback.on_train_begin(model)
    stops = []
    for epoch, value in enumerate(values):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(epoch))
        stops.append(bool(callback.on_epoch_end(epoch, {key: value, "loss": 1.0}, model)))
        if stops[-1]:
            break
    callback.on_train_end(model)
    return model, stops


# ------------------------------------------------------------------ ModelCheckpoint

def test_checkpoint_keeps_the_best_epoch_on_disk(tmp_path):
    ckpt = cb.ModelCheckpoint(tmp_path / "run", monitor="val_loss")
    replay(ckpt, [1.0, 0.8, 0.9, 0.5, 0.7, 0.5])  # ties are not improvements
    assert ckpt.best_epoch == 3 and ckpt.best == 0.5 and ckpt.saves == 3
    saved = torch.load(ckpt.path, weights_only=True)
    assert saved["epoch"] == 3 and saved["val_loss"] == 0.5
    assert all(torch.all(t == 3.0) for t in saved["state_dict"].values())
    model = ckpt.load_best(small_net(1))
    assert all(torch.all(p == 3.0) for p in model.parameters())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt"], "no temporary files left behind"


def test_checkpoint_mode_max_and_last(tmp_path):
    ckpt = cb.ModelCheckpoint(tmp_path, monitor="val_acc", mode="max", save_best_only=False, filename="top.pt")
    replay(ckpt, [0.5, 0.7, 0.6, 0.65], key="val_acc")
    assert ckpt.best_epoch == 1
    assert torch.load(tmp_path / "top.pt", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


def test_checkpoint_ignores_nan_and_reports_missing_metric(tmp_path):
    ckpt = cb.ModelCheckpoint(tmp_path)
    replay(ckpt, [math.nan, 2.0, math.nan])
    assert ckpt.best_epoch == 1
    with pytest.raises(KeyError, match="val_loss"):
        replay(cb.ModelCheckpoint(tmp_path), [1.0], key="loss_only")
    with pytest.raises(ValueError):
        cb.ModelCheckpoint(tmp_path, mode="best")
    with pytest.raises(FileNotFoundError):
        cb.ModelCheckpoint(tmp_path / "empty").load_best(small_net())


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt = cb.ModelCheckpoint(tmp_path)
    model = small_net()
    ckpt.on_train_begin(model)
    ckpt.on_epoch_end(0, {"val_loss": 1.0}, model)
    good = ckpt.path.read_bytes()
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.on_epoch_end(1, {"val_loss": 0.5}, model)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_checkpoint_with_fit_matches_early_stopping(tmp_path):
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    model = small_net()
    ckpt = cb.ModelCheckpoint(tmp_path)
    stopper = cb.EarlyStopping(patience=3)
    h = fit(model, (X, y), (Xv, yv), epochs=40, lr=0.05, device=CPU, progress=False, callbacks=[ckpt, stopper])
    best_epoch, best = h.best("val_loss")
    assert ckpt.best_epoch == stopper.best_epoch == best_epoch and ckpt.best == best
    loaded = ckpt.load_best(small_net(5))
    assert training.evaluate(loaded, (Xv, yv))["loss"] == pytest.approx(best, rel=1e-6)
    for a, b in zip(loaded.parameters(), model.parameters()):  # EarlyStopping restored the same weights
        assert torch.equal(a, b)


def test_early_stopping_is_the_training_one():
    assert cb.EarlyStopping is training.EarlyStopping


# ------------------------------------------------------------------ ReduceLROnPlateau

@pytest.mark.parametrize("kwargs", [dict(factor=0.5, patience=2), dict(factor=0.1, patience=0, min_lr=1e-3),
                                    dict(factor=0.5, patience=1, cooldown=2), dict(mode="max", patience=1, factor=0.5)])
def test_reduce_lr_matches_torch_scheduler(kwargs):
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95]
    model = small_net()
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(small_net().parameters(), lr=0.1)
    callback = cb.ReduceLROnPlateau(opt_a, **kwargs)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_b, **kwargs)
    callback.on_train_begin(model)
    for epoch, v in enumerate(values):
        assert callback.on_epoch_end(epoch, {"val_loss": v}, model) is False
        sched.step(v)
        assert opt_a.param_groups[0]["lr"] == pytest.approx(opt_b.param_groups[0]["lr"])
    assert len(callback.reductions) >= 1


def test_reduce_lr_callback_equals_fit_scheduler():
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    runs = []
    for use_callback in (True, False):
        model = small_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        kwargs = dict(factor=0.5, patience=1)
        if use_callback:
            h = fit(model, (X, y), (Xv, yv), epochs=12, optimizer=opt, device=CPU, progress=False,
                    callbacks=[cb.ReduceLROnPlateau(opt, **kwargs)])
        else:
            h = fit(model, (X, y), (Xv, yv), epochs=12, optimizer=opt, device=CPU, progress=False,
                    scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs))
        runs.append(h)
    assert runs[0]["lr"] == runs[1]["lr"]
    assert runs[0]["val_loss"] == runs[1]["val_loss"]
    assert min(runs[0]["lr"]) < 0.5, "the plateau should have cut the rate at least once"


# ------------------------------------------------------------------ loggers

def test_csv_and_json_logs_hold_the_history(tmp_path):
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    model = small_net()
    csv_log = cb.CSVLogger(tmp_path / "logs" / "log.csv")
    json_log = cb.JSONLogger(tmp_path / "logs" / "events.jsonl", histograms=True, bins=10)
    h = fit(model, (X, y), (Xv, yv), epochs=5, lr=0.01, device=CPU, progress=False, callbacks=[csv_log, json_log])
    log = cb.read_csv_log(tmp_path / "logs" / "log.csv")
    assert log["epoch"] == list(range(5))
    for key in ("loss", "acc", "val_loss", "val_acc", "lr"):
        assert log[key] == pytest.approx(h[key], rel=1e-12), key
    events = cb.read_json_log(tmp_path / "logs" / "events.jsonl")
    assert [e["epoch"] for e in events] == list(range(5))
    assert [e["scalars"]["val_loss"] for e in events] == pytest.approx(h["val_loss"])
    assert all(e["time"] >= 0 for e in events)
    assert set(events[-1]["layers"]) == {"0", "2"}
    first = events[-1]["layers"]["0"]
    assert first["shape"] == [16, 2]
    assert sum(first["histogram"]["counts"]) == 32 and len(first["histogram"]["counts"]) == 10
    assert first["weight_norm"] == pytest.approx(model[0].weight.norm().item())
    assert first["grad_norm"] > 0
    for line in (tmp_path / "logs" / "events.jsonl").read_text().splitlines():
        json.loads(line)  # one JSON object per line


def test_csv_logger_restarts_or_appends(tmp_path):
    path = tmp_path / "log.csv"
    X, y = blobs(64)
    fit(small_net(), (X, y), epochs=2, device=CPU, progress=False, callbacks=[cb.CSVLogger(path)])
    fit(small_net(), (X, y), epochs=3, device=CPU, progress=False, callbacks=[cb.CSVLogger(path)])
    assert cb.read_csv_log(path)["epoch"] == [0, 1, 2]
    fit(small_net(), (X, y), epochs=2, device=CPU, progress=False, callbacks=[cb.CSVLogger(path, append=True)])
    log = cb.read_csv_log(path)
    assert log["epoch"] == [0, 1, 2, 0, 1] and set(log) == {"epoch", "loss", "acc", "lr"}


def test_json_logger_without_histograms_is_scalars_only(tmp_path):
    X, y = blobs(64)
    fit(small_net(), (X, y), epochs=2, device=CPU, progress=False, callbacks=[cb.JSONLogger(tmp_path / "e.jsonl")])
    events = cb.read_json_log(tmp_path / "e.jsonl")
    assert len(events) == 2 and "layers" not in events[0] and set(events[0]["scalars"]) == {"loss", "acc", "lr"}


def test_all_callbacks_together_with_early_stop(tmp_path):
    X, y = blobs()
    Xv, yv = blobs(seed=1)
    model = small_net()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    callbacks = [cb.ModelCheckpoint(tmp_path), cb.ReduceLROnPlateau(opt, patience=1), cb.EarlyStopping(patience=3),
                 cb.CSVLogger(tmp_path / "log.csv"), cb.JSONLogger(tmp_path / "events.jsonl")]
    h = fit(model, (X, y), (Xv, yv), epochs=60, optimizer=opt, device=CPU, progress=False, callbacks=callbacks)
    assert h.stopped_epoch is not None and h.epochs == h.stopped_epoch + 1 < 60
    assert len(cb.read_csv_log(tmp_path / "log.csv")["epoch"]) == h.epochs
    assert len(cb.read_json_log(tmp_path / "events.jsonl")) == h.epochs
    assert callbacks[0].best == min(h["val_loss"])


def test_base_callback_does_nothing():
    c = cb.Callback()
    model = small_net()
    c.on_train_begin(model)
    assert c.on_epoch_end(0, {"loss": 1.0}, model) is False
    c.on_train_end(model)
