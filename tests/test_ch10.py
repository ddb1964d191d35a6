"""Chapter 10's references against PyTorch and ONNX Runtime, its processes, and its checks.

- int8 quantization vs ``torch.quantize_per_tensor`` / ``quantize_per_channel``;
  dynamic quantization without warnings, 4x smaller;
- magnitude masks vs ``torch.nn.utils.prune`` (per layer and global);
- the distillation loss vs the formula written out in float64;
- export: ``torch.export`` and ONNX (through ONNX Runtime) match the model, quietly;
- the model server and ``torchrun``: loopback only, bounded in time, every process they
  start is gone afterwards, even when the block that uses them fails;
- each check passes the reference (visible and hidden) and fails plausible wrong answers
  with a message that names the mistake, printing nothing on stderr.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from companion import data
from companion import deploy as D
from companion.checks import CheckFailed
from companion.checks import ch10 as check

F64 = torch.float64
POSIX = os.name == "posix"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gone(pid: int) -> bool:
    """True when no process (or, on POSIX, no process group) with this id is left."""
    if POSIX:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False


def trained_like_mlp(seed=0, sizes=(784, 64, 32, 10)):
    torch.manual_seed(seed)
    return D.mlp(sizes, dropout=0.2).eval()


# ====================================================================== quantization

@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), seed=st.integers(0, 10_000), per_channel=st.booleans())
def test_quantize_matches_torch_quantize(rows, cols, seed, per_channel):
    w = torch.randn(rows, cols, generator=gen(seed)) * 0.3
    scale = D.int8_scale(w, dim=0 if per_channel else None)
    ours = D.quantize(w, scale)
    with D._torch_ao_deprecations():
        if per_channel:
            theirs = torch.quantize_per_channel(w, scale.flatten().double(), torch.zeros(rows, dtype=torch.long), 0,
                                                torch.qint8)
        else:
            theirs = torch.quantize_per_tensor(w, scale.item(), 0, torch.qint8)
    assert ours.dtype == torch.int8 and ours.shape == w.shape
    # the max-abs scale never reaches -128, where the two conventions differ
    assert torch.equal(ours, theirs.int_repr())
    assert torch.allclose(D.dequantize(ours, scale), theirs.dequantize(), rtol=0, atol=1e-7)


def test_quantize_convention_ties_to_even_and_clamp():
    step = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 100.0, -63.75, -100.0])
    assert D.quantize(x, step).tolist() == [0, 2, 2, 0, -2, 127, -127, -127]


@pytest.mark.parametrize("shape, dim, expected", [((8, 5), 0, (8, 1)), ((8, 5), 1, (1, 5)), ((8, 5), -1, (1, 5)),
                                                  ((6, 3, 3, 3), 0, (6, 1, 1, 1)), ((7,), 0, (7,)),
                                                  ((4, 4), None, ())])
def test_int8_scale_shapes_and_values(shape, dim, expected):
    w = torch.randn(shape, generator=gen(1), dtype=F64)
    s = D.int8_scale(w, dim)
    assert s.shape == expected and s.dtype == F64
    if dim is None:
        assert s.item() == w.abs().max().item() / 127
    error = (D.dequantize(D.quantize(w, s), s) - w).abs()
    assert torch.all(error <= s / 2 + 1e-12)  # nothing clamped: every error is at most half a step


def test_int8_scale_of_zeros_is_one():
    w = torch.randn(3, 4, generator=gen(2))
    w[1] = 0
    assert D.int8_scale(w, dim=0)[1].item() == 1.0
    assert D.int8_scale(torch.zeros(5)).item() == 1.0
    assert torch.equal(D.quantize(torch.zeros(5), D.int8_scale(torch.zeros(5))), torch.zeros(5, dtype=torch.int8))


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_weights_returns_rounded_copy_and_int8_state(per_channel):
    model = trained_like_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q_model, state = D.quantize_weights(model, per_channel=per_channel)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    for i, layer in zip((0, 3, 6), D.linear_layers(q_model)):
        q, s = state[f"{i}.weight"], state[f"{i}.scale"]
        assert q.dtype == torch.int8 and s.shape == ((layer.out_features, 1) if per_channel else ())
        assert torch.equal(layer.weight, D.dequantize(q, s))
    x = torch.rand(16, 784, generator=gen(3))
    assert (q_model(x) - model(x)).abs().max() < 0.05
    assert D.state_dict_bytes(state) < D.state_dict_bytes(model) / 3


def test_dynamic_quantize_is_quiet_close_and_four_times_smaller():
    model = trained_like_mlp(sizes=(784, 256, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = D.dynamic_quantize(model)
        x = torch.rand(32, 784, generator=gen(4))
        with torch.inference_mode():
            out = q(x)
        size = D.state_dict_bytes(q)
    assert not caught, [str(w.message)[:80] for w in caught]
    assert isinstance(q[0], torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(model[0], nn.Linear)  # the original is untouched
    with torch.no_grad():
        assert (out - model(x)).abs().max() < 0.05
    assert 3.5 < D.state_dict_bytes(model) / size < 4.1


def test_latency_and_threads():
    calls = []
    ms = D.latency_ms(lambda: calls.append(time.sleep(0.001)), repeats=5, warmup=2)
    assert len(calls) == 7 and 0.9 < ms < 100
    before = torch.get_num_threads()
    with D.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ====================================================================== pruning

@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(1,), (7,), (30,), (5, 4), (16, 9), (3, 2, 4)]), amount=st.floats(0.0, 1.0),
       seed=st.integers(0, 10_000))
def test_magnitude_mask_matches_l1_unstructured(shape, amount, seed):
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(torch.randn(shape, generator=gen(seed)))
    mask = D.magnitude_mask(layer.weight.detach(), amount)
    prune.l1_unstructured(layer, "weight", amount=amount)
    assert mask.dtype == layer.weight_mask.dtype and torch.equal(mask, layer.weight_mask)


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.8, 0.95, 1.0])
def test_global_masks_match_global_unstructured(amount):
    model = trained_like_mlp(1)
    ours = D.global_magnitude_masks([layer.weight for layer in D.linear_layers(model)], amount)
    pruned = D.prune_global(trained_like_mlp(1), amount)
    theirs = [layer.weight_mask for layer in D.linear_layers(pruned)]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    D.finalize_pruning(pruned)
    assert not any(prune.is_pruned(layer) for layer in D.linear_layers(pruned))
    n = sum(layer.weight.numel() for layer in D.linear_layers(pruned))
    assert abs(D.weight_sparsity(pruned) - round(amount * n) / n) < 1e-12


def test_sparse_bytes_counts_kept_weights():
    model = D.finalize_pruning(D.prune_global(trained_like_mlp(2, (100, 50, 10)), 0.9))
    kept = sum(int((layer.weight != 0).sum()) for layer in D.linear_layers(model))
    expected = kept * 6 + (50 + 1) * 4 + (10 + 1) * 4 + (50 + 10) * 4
    assert D.sparse_bytes(model) == expected


# ====================================================================== distillation

def kd_by_hand(s, t, y, T, alpha):
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(len(y)), y].mean()
    return alpha * T**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (10.0, 1.0), (2.0, 0.0)])
def test_kd_loss_matches_formula(T, alpha):
    g = gen(int(T * 10 + alpha * 100))
    s, t = torch.randn(12, 7, generator=g, dtype=F64) * 3, torch.randn(12, 7, generator=g, dtype=F64) * 3
    y = torch.randint(0, 7, (12,), generator=g)
    torch.testing.assert_close(D.kd_loss(s, t, y, T, alpha), kd_by_hand(s, t, y, T, alpha), rtol=1e-12, atol=1e-12)


def test_kd_loss_is_zero_soft_term_when_student_equals_teacher():
    z = torch.randn(5, 4, generator=gen(5), dtype=F64)
    assert abs(D.kd_loss(z, z, torch.zeros(5, dtype=torch.long), T=3.0, alpha=1.0).item()) < 1e-12


def test_distillation_loss_unpacks_targets_and_falls_back_to_cross_entropy():
    g = gen(6)
    s, t, y = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    loss = D.DistillationLoss(T=3.0, alpha=0.7)
    torch.testing.assert_close(loss(s, D.kd_targets(t, y)), D.kd_loss(s, t, y, 3.0, 0.7))
    torch.testing.assert_close(loss(s, y), F.cross_entropy(s, y))


# ====================================================================== export

def test_export_program_matches_and_has_dynamic_batch(tmp_path, capfd):
    model = trained_like_mlp(7)
    program = D.export_program(model, torch.rand(4, 784)[:2])
    torch.export.save(program, tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2").stat().st_size < 2 * D.state_dict_bytes(model)  # no stray sample data
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    for n in (1, 9):
        x = torch.rand(n, 784, generator=gen(n))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert capfd.readouterr().err == ""


def test_export_onnx_runs_in_onnxruntime_quietly(tmp_path, capfd):
    model = trained_like_mlp(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = D.export_onnx(model, torch.rand(3, 784), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == "" and not caught, (out[:200], err[:200], [str(w.message)[:80] for w in caught])
    assert path.exists() and not list(tmp_path.glob("*.data"))  # weights inside the one file
    session = D.ort_session(path)
    x = torch.rand(17, 784, generator=gen(9))
    diff, ok = D.onnx_parity(model, session, x, atol=1e-4)
    assert ok and diff < 1e-4


def test_sequential_to_onnx_and_parity_catches_a_bad_export():
    model = trained_like_mlp(10)
    session = D.ort_session(D.sequential_to_onnx(model, input_name="pixels"))
    assert session.get_inputs()[0].name == "pixels"
    x = torch.rand(5, 784, generator=gen(10))
    assert D.onnx_parity(model, session, x)[1]
    half = check._half_precision_copy(model)
    diff, ok = D.onnx_parity(model, D.ort_session(D.sequential_to_onnx(half)), x, atol=1e-4)
    assert not ok and diff > 1e-4
    with pytest.raises(TypeError, match="BatchNorm1d"):
        D.sequential_to_onnx(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))


# ====================================================================== processes

SLEEPER = [sys.executable, "-c", "import time; print('READY', flush=True); time.sleep(600)"]


@pytest.mark.timeout(60)
def test_managed_process_stops_the_child_and_its_children_even_on_error():
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
              " print('READY', flush=True); time.sleep(600)")
    with pytest.raises(ZeroDivisionError):
        with D.managed_process([sys.executable, "-c", script], ready="READY", timeout=30) as handle:
            pid = handle.pid
            assert handle.proc.poll() is None
            1 / 0
    assert handle.proc.returncode is not None
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:  # the grandchild was in the same group
        time.sleep(0.1)
    assert gone(pid)


@pytest.mark.timeout(60)
def test_managed_process_kills_a_child_that_ignores_sigterm():
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('READY', flush=True);"
                " time.sleep(600)")
    start = time.monotonic()
    with D.managed_process([sys.executable, "-c", stubborn], ready="READY", timeout=30, grace=0.5) as handle:
        pass
    assert handle.proc.returncode == -signal.SIGKILL and time.monotonic() - start < 30
    assert gone(handle.pid)


@pytest.mark.timeout(60)
def test_managed_process_reports_a_child_that_never_gets_ready():
    with pytest.raises(RuntimeError, match="was not ready after 1 s"):
        with D.managed_process(SLEEPER[:2] + ["import time; time.sleep(600)"], ready="READY", timeout=1):
            pass
    with pytest.raises(RuntimeError, match="exited"):
        with D.managed_process([sys.executable, "-c", "print('oops')"], ready="READY", timeout=30):
            pass


@pytest.mark.timeout(60)
def test_run_process_times_out_and_cleans_up():
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        D.run_process(SLEEPER, timeout=1)
    assert time.monotonic() - start < 20
    done = D.run_process([sys.executable, "-c", "print('hello')"], timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "hello"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    model = trained_like_mlp(11)
    path = tmp_path_factory.mktemp("served") / "mlp.onnx"
    path.write_bytes(D.sequential_to_onnx(model))
    return model, path


@pytest.mark.timeout(60)
def test_model_server_predicts_on_loopback_and_stops(onnx_model):
    model, path = onnx_model
    x = torch.rand(6, 784, generator=gen(12))
    with D.model_server(path) as server:
        assert server.url.startswith("http://127.0.0.1:")
        health = D.get_json(server.url + "/health")
        assert health["status"] == "ok" and health["pid"] == server.pid and health["input"] == ["batch", 784]
        answer = D.predict_http(server.url, x)
        with torch.no_grad():
            expected = model(x)
        assert answer["predictions"] == expected.argmax(1).tolist()
        np.testing.assert_allclose(answer["logits"], expected.numpy(), atol=1e-3)
        one = D.predict_http(server.url, x[:1].numpy())
        assert len(one["predictions"]) == 1
        with pytest.raises(RuntimeError, match="HTTP 400"):
            D.post_json(server.url + "/predict", {"inputs": [[1.0, 2.0]]})
        with pytest.raises(RuntimeError, match="HTTP 400"):
            D.post_json(server.url + "/predict", {"wrong key": 1})
        with pytest.raises(urllib.error.HTTPError):
            D.get_json(server.url + "/nothing")
        pid = server.pid
    assert gone(pid)


@pytest.mark.timeout(60)
def test_model_server_stops_when_the_block_fails(onnx_model):
    with pytest.raises(KeyError):
        with D.model_server(onnx_model[1]) as server:
            pid = server.pid
            raise KeyError("a failing cell")
    assert gone(pid)


def test_serve_refuses_non_loopback_hosts(onnx_model):
    with pytest.raises(ValueError, match="loopback"):
        D.serve(onnx_model[1], host="0.0.0.0")


def test_torchrun_command_and_environment():
    cmd = D.torchrun_command("train.py", 2, ["--steps", 3])
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert cmd[4:] == ["--nproc_per_node=2", "train.py", "--steps", "3"]


@pytest.mark.timeout(240)
def test_torchrun_ddp_two_ranks_end_with_identical_weights(tmp_path):
    data.load_mnist5k()  # the ranks read the cache; build it here, once
    script = Path(D.__file__).parent / "ddp_train.py"
    out = tmp_path / "result.json"
    done = D.run_torchrun(script, nproc=2, args=["--steps", 3, "--batch-size", 16, "--out", out], timeout=180)
    assert done.returncode == 0, done.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo" and result["steps"] == 3
    assert result["global_batch"] == 32 and len(result["losses"]) == 3
    assert len(result["weights_sha256"]) == 2 and len(set(result["weights_sha256"])) == 1
    assert 0.0 <= result["test_acc"] <= 1.0


# ====================================================================== checks

CHECKS = ["int8_scale", "quantize", "dequantize", "magnitude_mask", "kd_loss", "onnx_parity"]


@pytest.mark.parametrize("name", CHECKS)
@pytest.mark.parametrize("hidden", [False, True])
def test_checks_pass_the_reference_quietly(name, hidden, capfd):
    assert getattr(check, name)(getattr(D, name), hidden=hidden) is None
    out, err = capfd.readouterr()
    assert "✔" in out and err == ""


def _fails(name, fn, *fragments, hidden=False):
    with pytest.raises(CheckFailed) as info:
        getattr(check, name)(fn, hidden=hidden)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_checks_accept_pytorch_style_alternatives():
    def parity_in_torch(model, session, x, atol=1e-4):
        model.eval()
        with torch.no_grad():
            ref = model(x).cpu()
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0])
        diff = (ref - out).abs().max()
        return diff, diff <= atol  # tensors are accepted

    check.onnx_parity(parity_in_torch, hidden=True)

    def kd_with_probabilities(s, t, y, T=4.0, alpha=0.9):
        soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
        return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, y)

    check.kd_loss(kd_with_probabilities, hidden=True)


def test_check_int8_scale_names_mistakes():
    _fails("int8_scale", lambda w, dim=None: D.int8_scale(w, dim) * 127 / 128, "divide by 127")
    _fails("int8_scale", lambda w, dim=None: (w.amax() if dim is None else w.amax(dim=1, keepdim=True)) / 127,
           "largest *magnitude*")

    def zero_scale(w, dim=None):
        s = D.int8_scale(w, dim)
        return torch.where(s == 1.0, torch.zeros_like(s), s)
    _fails("int8_scale", zero_scale, "scale 1, not 0", hidden=True)


def test_check_quantize_and_dequantize_name_mistakes():
    _fails("quantize", lambda x, s: torch.clamp(torch.floor(x / s + 0.5), -127, 127).to(torch.int8), "even integer")
    _fails("quantize", lambda x, s: torch.clamp(torch.round(x / s), -128, 127).to(torch.int8), "[-127, 127]")
    _fails("quantize", lambda x, s: torch.round(x / s).to(torch.int8), "wraps")
    _fails("quantize", lambda x, s: (x / s).to(torch.int8), "truncated")
    _fails("quantize", lambda x, s: torch.clamp(torch.round(x / s), -127, 127), "int8")
    _fails("dequantize", lambda q, s: q.to(s.dtype) / s, "multiply by the scale")
    _fails("quantize", lambda x, s: None, "quantize")


def test_check_magnitude_mask_names_mistakes():
    _fails("magnitude_mask", lambda w, s: D.magnitude_mask(w, int(s * w.numel()) / w.numel()), "round(")
    _fails("magnitude_mask", lambda w, s: D.magnitude_mask(w, 1 - s), "fraction *removed*")
    _fails("magnitude_mask", lambda w, s: D.magnitude_mask(w, s).bool(), "dtype")
    _fails("magnitude_mask", lambda w, s: 1 - D.magnitude_mask(w, 1 - s), "*smallest*")

    def no_k0_guard(w, s):
        k = round(s * w.numel())
        mask = torch.ones_like(w)
        mask.view(-1)[torch.topk(w.abs().flatten(), max(k, 1), largest=False).indices] = 0
        return mask
    _fails("magnitude_mask", no_k0_guard, "sparsity 0 keeps everything", hidden=True)


def test_check_kd_loss_names_mistakes():
    def no_t2(s, t, y, T=4.0, alpha=0.9):
        return alpha * check._kl(s, t, T) + (1 - alpha) * F.cross_entropy(s, y)

    def reversed_kl(s, t, y, T=4.0, alpha=0.9):
        kl = F.kl_div(F.log_softmax(t / T, 1), F.softmax(s / T, 1), reduction="batchmean")
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    def teacher_plain(s, t, y, T=4.0, alpha=0.9):
        kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t, 1), reduction="batchmean")
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    def detached(s, t, y, T=4.0, alpha=0.9):
        return D.kd_loss(s.detach(), t, y, T, alpha)

    _fails("kd_loss", no_t2, "T**2")
    _fails("kd_loss", reversed_kl, "wrong way round")
    _fails("kd_loss", teacher_plain, "soften the teacher")
    _fails("kd_loss", lambda s, t, y, T=4.0, alpha=0.9: D.kd_loss(s, t, y, T, 1 - alpha), "alpha weighs")
    _fails("kd_loss", detached, "not differentiable", hidden=True)


def test_check_onnx_parity_names_mistakes(capfd):
    def forgot_eval(model, session, x, atol=1e-4):
        with torch.no_grad():
            ref = model(x).numpy()
        d = float(np.abs(session.run(None, {"x": x.numpy()})[0] - ref).max())
        return d, d <= atol

    def mean_diff(model, session, x, atol=1e-4):
        model.eval()
        with torch.no_grad():
            ref = model(x).numpy()
        d = float(np.abs(session.run(None, {"x": x.numpy()})[0] - ref).mean())
        return d, d <= atol

    def always_ok(model, session, x, atol=1e-4):
        return D.onnx_parity(model, session, x, atol)[0], True

    def hard_coded_name(model, session, x, atol=1e-4):
        model.eval()
        with torch.no_grad():
            ref = model(x).numpy()
        d = float(np.abs(session.run(None, {"x": x.numpy()})[0] - ref).max())
        return d, d <= atol

    _fails("onnx_parity", forgot_eval, "evaluation mode")
    _fails("onnx_parity", mean_diff, "*mean* absolute difference")
    _fails("onnx_parity", always_ok, "half-precision", "ok is True, expected False")
    _fails("onnx_parity", hard_coded_name, "input.1", hidden=True)
    _fails("onnx_parity", lambda m, s, x, atol=1e-4: 0.0, "expected a pair")
    assert capfd.readouterr().err == ""
