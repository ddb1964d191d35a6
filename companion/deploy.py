"""Chapter 10: getting a trained model out of the notebook and into service.

- int8 quantization from scratch (:func:`int8_scale`, :func:`quantize`, :func:`dequantize`)
  and PyTorch's dynamic quantization (:func:`dynamic_quantize`);
- magnitude pruning (:func:`magnitude_mask`, :func:`global_magnitude_masks`);
- knowledge distillation (:func:`kd_loss`, :class:`DistillationLoss`);
- export: ``torch.export`` (:func:`export_program`), ONNX (:func:`export_onnx`, and
  :func:`sequential_to_onnx`, a hand-written exporter for small MLPs), ONNX Runtime
  (:func:`ort_session`) and the parity check (:func:`onnx_parity`);
- measuring: :func:`state_dict_bytes`, :func:`latency_ms`, :func:`torch_threads`;
- serving: a JSON-over-HTTP model server (``python -m companion.deploy serve model.onnx``)
  on the loopback interface, :func:`model_server` to run it in a child process that is
  always stopped, and a client (:func:`predict_http`, :func:`get_json`);
- processes: :func:`managed_process` (start, wait until ready, always stop the whole
  process group) and :func:`run_torchrun` (``torchrun --standalone``, bounded in time).

PyTorch is imported inside the functions that use it, not at the top: the model server
runs this module in a fresh process and needs only NumPy and ONNX Runtime, so it starts
in a fraction of a second instead of paying PyTorch's import.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

LOOPBACK = "127.0.0.1"
QMAX = 127  # symmetric int8: the grid is -127 .. 127; -128 is never used, so the grid is symmetric about 0


# ---------------------------------------------------------------- models

def mlp(sizes: Sequence[int] = (784, 256, 128, 10), dropout: float = 0.1):
    """``nn.Sequential`` MLP: Linear-ReLU-Dropout blocks, a plain Linear at the end.

    Input (B, sizes[0]) flattened images; output (B, sizes[-1]) logits.
    """
    from torch import nn

    layers: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout else [nn.ReLU()]
    return nn.Sequential(*layers)


def linear_layers(model) -> list:
    """The ``nn.Linear`` modules of ``model``, in order."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------- int8 quantization

def int8_scale(w, dim: int | None = None):
    """Symmetric int8 scale from the largest magnitude: ``max|w| / 127``.

    dim None: one scale for the whole tensor, a 0-d tensor. dim = d: one scale per index
    along d (per channel), shaped to broadcast against ``w`` (size 1 on every other
    dimension; e.g. (out, 1) for a (out, in) weight with dim = 0). A tensor or channel
    that is all zeros gets scale 1 (any positive scale represents it exactly).
    """
    import torch

    if dim is None:
        amax = w.abs().amax()
    else:
        dim = dim % w.dim()
        others = [d for d in range(w.dim()) if d != dim]
        amax = w.abs().amax(dim=others, keepdim=True) if others else w.abs()
    scale = amax / QMAX
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def quantize(x, scale):
    """Round ``x / scale`` to the nearest integer (ties to even) and clamp to [-127, 127].

    x: float tensor; scale: positive tensor broadcastable to x. Returns int8, x's shape.
    """
    import torch

    return torch.clamp(torch.round(x / scale), -QMAX, QMAX).to(torch.int8)


def dequantize(q, scale):
    """Back to floats: ``q * scale`` in scale's dtype. q: int8 tensor; scale broadcastable."""
    return q.to(scale.dtype) * scale


def quantize_weights(model, per_channel: bool = False):
    """A copy of ``model`` whose Linear weights went through int8 and back, and the int8 state.

    Returns ``(model_copy, state)`` where ``state`` maps ``"<layer>.weight"`` to the int8
    tensor and ``"<layer>.scale"`` to its scale (biases stay float32, as in most int8
    schemes). The copy computes in float32 with the rounded weights ("fake quantization"):
    its accuracy is that of the int8 model.
    """
    import copy

    import torch

    model = copy.deepcopy(model)
    state: dict = {}
    names = {m: n for n, m in model.named_modules()}
    with torch.no_grad():
        for layer in linear_layers(model):
            scale = int8_scale(layer.weight, dim=0 if per_channel else None)
            q = quantize(layer.weight, scale)
            layer.weight.copy_(dequantize(q, scale))
            name = names[layer]
            state[f"{name}.weight"], state[f"{name}.scale"] = q, scale
            state[f"{name}.bias"] = layer.bias.detach().clone()
    return model, state


@contextlib.contextmanager
def _torch_ao_deprecations():
    """Silence exactly the two deprecation notices that ``torch.ao.quantization`` gives in torch 2.13.

    ``torch.ao.quantization`` is deprecated in favour of the separate ``torchao`` package,
    which is not a dependency of this course (its CPU int8 path needs ``torch.compile`` to
    be fast); the eager API below still works and uses the fbgemm/x86 int8 kernels. Every
    other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other"
                                " quantized tensor creation functions", category=UserWarning)
        yield


def dynamic_quantize(model):
    """``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (int8 weights, activations
    quantized on the fly per batch). Returns a new model; ``model`` is untouched."""
    import copy

    import torch
    from torch import nn

    with _torch_ao_deprecations():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def state_dict_bytes(obj) -> int:
    """Bytes that ``torch.save`` writes for a module's ``state_dict`` (or for a dict of tensors)."""
    import torch

    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    buffer = io.BytesIO()
    with _torch_ao_deprecations():
        torch.save(state, buffer)
    return buffer.getbuffer().nbytes


# ---------------------------------------------------------------- measuring

@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then put the old number back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_ms(fn: Callable[[], Any], repeats: int = 50, warmup: int = 5) -> float:
    """Median wall-clock time of ``fn()`` in milliseconds, after ``warmup`` untimed calls.

    The median, not the mean: a shared machine adds rare long pauses that would drag the
    mean about. Wrap ``fn`` in ``torch.inference_mode()`` yourself when it runs a model.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


# ---------------------------------------------------------------- pruning

def magnitude_mask(w, sparsity: float):
    """Mask that keeps the largest ``|w|`` and zeroes a fraction ``sparsity`` of the entries.

    ``round(sparsity * w.numel())`` entries with the smallest magnitude get 0, the rest 1.
    Returns a tensor of w's shape and dtype, as ``torch.nn.utils.prune.l1_unstructured``
    stores in ``weight_mask``.
    """
    import torch

    k = round(sparsity * w.numel())
    mask = torch.ones_like(w)
    if k > 0:
        smallest = torch.topk(w.abs().flatten(), k, largest=False).indices
        mask.view(-1)[smallest] = 0
    return mask


def global_magnitude_masks(weights: Sequence, sparsity: float) -> list:
    """One threshold for all tensors: zero the ``round(sparsity * total)`` smallest ``|w|`` overall.

    Layers with many small weights lose more than others (``prune.global_unstructured``).
    """
    import torch

    flat = torch.cat([w.detach().flatten() for w in weights])
    mask = magnitude_mask(flat, sparsity)
    return [m.view_as(w) for m, w in zip(torch.split(mask, [w.numel() for w in weights]), weights)]


def prune_global(model, sparsity: float):
    """Prune every Linear weight of ``model`` in place with ``prune.global_unstructured`` (L1).

    The masks stay attached (``weight_orig`` and ``weight_mask``), so fine-tuning keeps the
    pruned weights at zero. Returns the model.
    """
    from torch.nn.utils import prune

    params = [(layer, "weight") for layer in linear_layers(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    return model


def finalize_pruning(model):
    """Make pruning permanent: fold each mask into its weight and drop the re-parametrisation."""
    from torch.nn.utils import prune

    for layer in linear_layers(model):
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")
    return model


def weight_sparsity(model) -> float:
    """Fraction of the Linear weights that are exactly zero."""
    weights = [layer.weight for layer in linear_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def sparse_bytes(model) -> int:
    """Bytes of the Linear weights in compressed sparse row (CSR) form, plus the biases.

    CSR keeps only the non-zero values (float32), the column of each (int16, enough for
    up to 32,767 inputs) and where each row starts (int32): 6 bytes a kept weight instead
    of 4 bytes for every weight, so it pays off above about 1/3 sparsity.
    """
    total = 0
    for layer in linear_layers(model):
        w = layer.weight.detach().cpu().numpy()
        nonzero = int(np.count_nonzero(w))
        col_bytes = 2 if w.shape[1] < 2**15 else 4
        total += nonzero * (4 + col_bytes) + (w.shape[0] + 1) * 4 + layer.bias.numel() * 4
    return total


# ---------------------------------------------------------------- knowledge distillation

def kd_loss(student_logits, teacher_logits, labels, T: float = 4.0, alpha: float = 0.9):
    """Hinton et al.'s distillation loss (0-d tensor).

    ``alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)``;
    the KL divergence is summed over classes and averaged over the batch ("batchmean").
    student_logits, teacher_logits: (N, C); labels: (N,) class indices. T**2 keeps the
    soft term's gradient the same size whatever the temperature.
    """
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * T * T * soft + (1 - alpha) * hard


def kd_targets(teacher_logits, labels):
    """Pack teacher logits (N, C) and labels (N,) into one (N, C + 1) float target for ``fit``."""
    import torch

    return torch.cat([teacher_logits.float(), labels.float().unsqueeze(1)], dim=1)


@dataclass
class DistillationLoss:
    """A ``loss_fn(out, target)`` for ``companion.training.fit``.

    With a (N, C + 1) target from :func:`kd_targets` it is :func:`kd_loss`; with plain
    (N,) labels (validation) it is the cross-entropy, so validation loss and accuracy stay
    comparable with a model trained without a teacher.
    """

    T: float = 4.0
    alpha: float = 0.9

    def __call__(self, out, target):
        import torch.nn.functional as F

        if target.ndim == 1:
            return F.cross_entropy(out, target)
        return kd_loss(out, target[:, :-1], target[:, -1].long(), self.T, self.alpha)


# ---------------------------------------------------------------- export

def _batch_dim():
    import torch

    return torch.export.Dim("batch", min=1, max=65536)


def export_program(model, example):
    """``torch.export.export`` of ``model`` (put in eval mode) with a dynamic batch dimension.

    example: one input batch (B, ...). Returns the ``ExportedProgram``: a graph of ATen
    operations with the weights, no Python needed to run it (``torch.export.save`` / ``load``).
    """
    import torch

    model.eval()
    example = example.detach().clone()  # a slice would drag its whole parent tensor into the saved sample input
    with _quiet_export():
        return torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))


@contextlib.contextmanager
def _quiet_export():
    """Keep the exporters' progress notes and known harmless notices off the notebook.

    torch 2.13's ONNX exporter logs that torchvision's detection ops cannot be registered
    (the course has no torchvision) and PyTorch's pytree raises a FutureWarning about its
    own internals; neither concerns the exported model. Other warnings still show.
    """
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model, example, path, input_name: str = "x", output_name: str = "logits") -> Path:
    """Export ``model`` to a single ONNX file with ``torch.onnx.export`` (the torch.export-based
    exporter, torch 2.13's default), dynamic batch dimension, weights inside the file."""
    import torch

    path = Path(path)
    model.eval()
    with _quiet_export():
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_shapes=({0: _batch_dim()},), external_data=False, verbose=False)
    return path


def ort_session(model, threads: int = 1):
    """An ONNX Runtime ``InferenceSession`` on the CPU for a path or serialized bytes.

    threads: intra-op threads (1 makes latencies comparable with a 1-thread PyTorch).
    ONNX Runtime's own log is limited to errors.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, (str, Path)) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_parity(model, session, x, atol: float = 1e-4) -> tuple[float, bool]:
    """Largest absolute difference between PyTorch's and ONNX Runtime's outputs, and whether it is <= atol.

    model: the PyTorch module (evaluated in eval mode, without gradients); session: an
    ONNX Runtime session with one input; x: a float32 batch (on any device).
    """
    import torch

    model.eval()
    with torch.no_grad():
        expected = model(x).detach().cpu().numpy()
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    got = session.run(None, feed)[0]
    diff = float(np.abs(got - expected).max())
    return diff, diff <= atol


def sequential_to_onnx(model, input_name: str = "x", output_name: str = "logits", opset: int = 17) -> bytes:
    """A hand-written ONNX exporter for ``nn.Sequential`` MLPs: Linear, ReLU, Dropout, Flatten.

    Each Linear becomes a ``Gemm`` (x @ W.T + b), ReLU a ``Relu``, Flatten a ``Flatten``;
    Dropout is left out (it does nothing at inference). The batch dimension is dynamic.
    Returns the serialized model (``onnxruntime.InferenceSession`` accepts the bytes).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    nodes, inits, current = [], [], input_name
    n_in = None
    for i, layer in enumerate(model):
        out = f"h{i}"
        if isinstance(layer, nn.Linear):
            n_in = n_in or layer.in_features
            w = numpy_helper.from_array(layer.weight.detach().cpu().float().numpy(), f"w{i}")
            b = numpy_helper.from_array(layer.bias.detach().cpu().float().numpy(), f"b{i}")
            inits += [w, b]
            nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], transB=1))
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out]))
        elif isinstance(layer, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [current], [out], axis=1))
        elif isinstance(layer, nn.Dropout):
            continue
        else:
            raise TypeError(f"sequential_to_onnx handles Linear, ReLU, Dropout and Flatten, not {type(layer).__name__}")
        current = out
    nodes.append(helper.make_node("Identity", [current], [output_name]))
    n_out = linear_layers(model)[-1].out_features
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9,
                              producer_name="companion.deploy")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# ---------------------------------------------------------------- processes

@dataclass
class Process:
    """A child process started by :func:`managed_process`.

    ``ready``: the regex match of the line that said it was ready (or None);
    ``lines``: what it printed so far (stdout and stderr together).
    """

    proc: subprocess.Popen
    ready: re.Match | None = None
    lines: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "".join(self.lines)


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop ``proc`` and everything it started: SIGTERM to its own process group, then SIGKILL.

    The child was started in a new session, so its process group id is its own pid and
    the signal reaches only it and its descendants.
    """
    if proc.poll() is None:
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if os.name == "posix":  # also reap grandchildren that outlived their parent
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=grace)


def _child_env(extra: dict | None = None) -> dict:
    """The environment for a child: this one, the companion importable, one thread per process."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@contextlib.contextmanager
def managed_process(cmd: Sequence[str], *, ready: str | None = None, timeout: float = 30.0,
                    env: dict | None = None, cwd: str | Path | None = None, grace: float = 5.0) -> Iterator[Process]:
    """Start ``cmd``, wait for a line matching ``ready`` (at most ``timeout`` s), yield, always stop it.

    Stopping sends SIGTERM to the child's process group and SIGKILL after ``grace`` seconds.

    The child runs in its own session (process group), so stopping it also stops any
    process it started; the ``finally`` clause runs whether the block finished, raised or
    was interrupted, so no orphan is left behind. A child that exits or stays silent
    before it is ready raises ``RuntimeError`` with its output.
    """
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_child_env(env), cwd=cwd, start_new_session=(os.name == "posix"))
    handle = Process(proc)
    seen = threading.Event()
    pattern = re.compile(ready) if ready else None

    def pump():  # read the child's output on a thread, so a full pipe never blocks it
        for line in proc.stdout:
            handle.lines.append(line)
            if pattern and handle.ready is None:
                handle.ready = pattern.search(line)
                if handle.ready:
                    seen.set()
        seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if pattern:
            seen.wait(timeout)
            if handle.ready is None:
                state = "exited" if proc.poll() is not None else f"was not ready after {timeout:g} s"
                raise RuntimeError(f"{cmd[0]} {state}; its output:\n{handle.output()[-2000:]}")
        yield handle
    finally:
        _stop(proc, grace)
        reader.join(timeout=5)


def run_process(cmd: Sequence[str], *, timeout: float = 120.0, env: dict | None = None,
                cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion in its own process group, killing the whole group after ``timeout`` s.

    Returns the ``CompletedProcess`` (stdout and stderr merged in ``stdout``); raises
    ``subprocess.TimeoutExpired`` after stopping everything when it runs too long.
    """
    with managed_process(cmd, env=env, cwd=cwd) as handle:
        try:
            handle.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(cmd, timeout, output=handle.output()) from None
    return subprocess.CompletedProcess(list(cmd), handle.proc.returncode, handle.output(), "")


def _loopback_interface() -> str | None:
    """The name of the loopback network interface ('lo' on Linux, 'lo0' on macOS), if one is found."""
    import socket

    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def torchrun_command(script: str | Path, nproc: int = 2, args: Sequence[str] = ()) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N script args`` through this Python's ``torch.distributed.run``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(script), *map(str, args)]


def run_torchrun(script: str | Path, nproc: int = 2, args: Sequence[str] = (), timeout: float = 120.0):
    """Launch ``script`` on ``nproc`` local processes with torchrun; bounded by ``timeout`` seconds.

    Single machine (``--standalone``: the rendezvous runs on localhost); Gloo is told to use
    the loopback interface, one compute thread per process. Returns the CompletedProcess.
    """
    extra = {"OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": "", "LOGLEVEL": "WARNING"}
    lo = _loopback_interface()
    if lo:
        extra["GLOO_SOCKET_IFNAME"] = lo
    return run_process(torchrun_command(script, nproc, args), timeout=timeout, env=extra)


# ---------------------------------------------------------------- serving

class _Handler(BaseHTTPRequestHandler):
    """``GET /health`` and ``POST /predict`` (JSON in, JSON out) for one ONNX model."""

    server_version = "companion-model-server/1.0"
    max_body = 8 * 2**20  # refuse requests over 8 MiB

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        if self.path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok", "model": self.server.model_name,
                                       "input": self.server.input_shape, "pid": os.getpid()})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}; try /health or POST /predict"})

    def do_POST(self):  # noqa: N802
        if self.path != "/predict":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}; try /predict"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= self.max_body:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"send a JSON body of at most {self.max_body} bytes"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
            x = np.asarray(payload["inputs"], dtype=np.float32)
            if x.ndim == 1:
                x = x[None]
            n_features = self.server.input_shape[-1]
            if x.ndim != 2 or x.shape[1] != n_features:
                raise ValueError(f"inputs must be a list of {n_features}-number rows, got shape {x.shape}")
        except (ValueError, KeyError, TypeError) as err:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {err}"})
            return
        start = time.perf_counter()
        with self.server.lock:  # one inference at a time: the session is shared by the threads
            logits = self.server.session.run(None, {self.server.input_name: x})[0]
        self._send(HTTPStatus.OK, {"predictions": logits.argmax(axis=1).tolist(), "logits": logits.tolist(),
                                   "model": self.server.model_name,
                                   "inference_ms": (time.perf_counter() - start) * 1e3})

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        pass  # no access log: the notebook shows what the client sees


def serve(model_path: str | Path, host: str = LOOPBACK, port: int = 0) -> None:
    """Serve an ONNX model over HTTP until stopped. Prints ``READY http://host:port`` once listening.

    Loopback only: ``host`` must be a loopback address. ``port = 0`` lets the operating
    system pick a free port (no race between choosing a port and binding it).
    """
    if host not in (LOOPBACK, "localhost", "::1"):
        raise ValueError(f"this teaching server listens on the loopback interface only, not {host!r}")
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.session = ort_session(model_path)
    server.input_name = server.session.get_inputs()[0].name
    server.input_shape = server.session.get_inputs()[0].shape
    server.model_name = Path(model_path).name
    server.lock = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"READY http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


@dataclass
class Server:
    """A running model server: its ``url``, its process id and output."""

    url: str
    process: Process

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def model_server(model_path: str | Path, timeout: float = 30.0) -> Iterator[Server]:
    """Run :func:`serve` for ``model_path`` in a child process on a free loopback port.

    Yields a :class:`Server` once it answers; stops it (and waits for it) on exit, also
    when the block raises.
    """
    cmd = [sys.executable, "-m", "companion.deploy", "serve", str(Path(model_path).resolve())]
    with managed_process(cmd, ready=r"READY (http://\S+)", timeout=timeout) as handle:
        yield Server(handle.ready.group(1), handle)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def get_json(url: str, timeout: float = 5.0) -> dict:
    """GET ``url`` and decode its JSON answer."""
    with _OPENER.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, payload: dict, timeout: float = 5.0) -> dict:
    """POST ``payload`` as JSON to ``url`` and decode the JSON answer; an HTTP error raises
    ``RuntimeError`` with the server's message."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"HTTP {err.code}: {json.loads(err.read()).get('error')}") from None


def predict_http(url: str, images, timeout: float = 5.0) -> dict:
    """Send images (N, 784) (array, tensor or lists) to ``url + '/predict'``; return the answer.

    Pixel values are rounded to 4 decimals to keep the JSON short (a difference far below
    what changes a prediction).
    """
    rows = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return post_json(url.rstrip("/") + "/predict", {"inputs": rows.round(4).tolist()}, timeout=timeout)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m companion.deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve an ONNX model over HTTP on the loopback interface")
    s.add_argument("model", help="path of the .onnx file")
    s.add_argument("--port", type=int, default=0, help="0 (default): a free port chosen by the system")
    args = parser.parse_args(argv)
    serve(args.model, port=args.port)


if __name__ == "__main__":
    _main()
