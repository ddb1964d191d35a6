"""The GPU paths: the chapter checks and the training loop on CUDA (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from companion import activations as A
from companion import backprop as B
from companion import models, perceptron as P, training
from companion.checks import CheckFailed
from companion.checks import ch02 as check

pytestmark = pytest.mark.cuda


def test_automatic_device_is_cuda(monkeypatch):
    import companion

    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert companion.get_device().type == "cuda"


@pytest.mark.parametrize("hidden", [False, True])
def test_chapter2_references_pass_their_checks_on_cuda(hidden):
    cuda = torch.device("cuda")
    check.relu(A.relu, A.relu_grad, hidden=hidden, device=cuda)
    check.leaky_relu(A.leaky_relu, A.leaky_relu_grad, hidden=hidden, device=cuda)
    check.sigmoid(A.sigmoid, A.sigmoid_grad, hidden=hidden, device=cuda)
    check.tanh(A.tanh, A.tanh_grad, hidden=hidden, device=cuda)
    check.gelu(A.gelu, A.gelu_grad, hidden=hidden, device=cuda)
    check.softmax(A.softmax, hidden=hidden, device=cuda)
    check.build_mlp(models.guide_mlp, hidden=hidden, device=cuda)
    # NumPy exercises ignore the device but must still pass alongside
    check.perceptron_update(P.perceptron_update, hidden=hidden)
    check.backward(B.backward, hidden=hidden)


def test_a_result_left_on_the_cpu_is_explained():
    with pytest.raises(CheckFailed, match="on cpu, expected cuda"):
        check.relu(lambda x: A.relu(x).cpu(), A.relu_grad, device="cuda")


def test_fit_trains_on_cuda():
    torch.manual_seed(0)
    X = torch.randn(256, 784)
    y = (X[:, 0] > 0).long()
    model = models.guide_mlp()
    history = training.fit(model, (X, y), (X, y), epochs=5, device=torch.device("cuda"), progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert history["val_acc"][-1] > 0.9
