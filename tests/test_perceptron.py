"""companion.perceptron: the step unit, the update rule, and what it can and cannot learn."""
from __future__ import annotations

import numpy as np
import pytest

from companion.perceptron import GATE_INPUTS, GATES, perceptron_update, predict, train_perceptron


def test_gate_tables():
    np.testing.assert_array_equal(GATE_INPUTS, [[0, 0], [0, 1], [1, 0], [1, 1]])
    a, b = GATE_INPUTS[:, 0].astype(int), GATE_INPUTS[:, 1].astype(int)
    np.testing.assert_array_equal(GATES["AND"], a & b)
    np.testing.assert_array_equal(GATES["OR"], a | b)
    np.testing.assert_array_equal(GATES["XOR"], a ^ b)


def test_predict_is_a_strict_step():
    w = np.array([1.0, 1.0])
    np.testing.assert_array_equal(predict(w, -1.5, GATE_INPUTS), [0, 0, 0, 1])  # AND
    np.testing.assert_array_equal(predict(w, -0.5, GATE_INPUTS), [0, 1, 1, 1])  # OR
    assert predict(w, -1.0, np.array([0.5, 0.5])) == 0  # w.x + b == 0 -> 0 (strictly > 0)
    assert predict(w, -1.0, np.array([0.5, 0.6])) == 1
    assert predict(w, 0.0, GATE_INPUTS).dtype == np.int64


@pytest.mark.parametrize("x, y, b", [
    ([1.0, 0.0], 1, -0.5),   # predicted 1, target 1: no change
    ([1.0, 1.0], 0, 0.3),    # predicted 1, target 0: error -1
    ([0.0, 1.0], 1, -2.0),   # predicted 0, target 1: error +1
    ([0.0, 0.0], 0, -0.1),   # predicted 0, target 0: no change
    ([2.0, -3.0], 1, 0.0),   # predicted 0 (2*0.4 - 3*0.7 < 0), target 1
])
@pytest.mark.parametrize("lr", [0.1, 0.5, 1.0])
def test_update_matches_the_rule_by_hand(x, y, b, lr):
    w = np.array([0.4, 0.7])
    x = np.array(x)
    prediction = 1 if float(w @ x + b) > 0 else 0
    error = y - prediction
    new_w, new_b = perceptron_update(w, b, x, y, lr)
    np.testing.assert_allclose(new_w, w + lr * error * x, rtol=0, atol=0)
    assert new_b == pytest.approx(b + lr * error, abs=0)
    assert isinstance(new_b, float)
    assert new_w.shape == w.shape


def test_update_does_not_mutate_inputs():
    w = np.array([0.2, -0.3])
    x = np.array([1.0, 1.0])
    w0, x0 = w.copy(), x.copy()
    new_w, _ = perceptron_update(w, 0.5, x, 0, lr=0.1)  # a mistake: an update happens
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(x, x0)
    assert new_w is not w
    assert not np.shares_memory(new_w, w)


def test_update_with_no_error_changes_nothing():
    w = np.array([1.0, 1.0])
    new_w, new_b = perceptron_update(w, -1.5, np.array([1.0, 1.0]), 1, lr=0.1)
    np.testing.assert_array_equal(new_w, w)
    assert new_b == -1.5


@pytest.mark.parametrize("gate", ["AND", "OR"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_linearly_separable_gates_with_defaults(gate, seed):
    w, b, acc = train_perceptron(GATE_INPUTS, GATES[gate], seed=seed)
    assert len(acc) == 50
    assert acc[-1] == 1.0
    np.testing.assert_array_equal(predict(w, b, GATE_INPUTS), GATES[gate])


@pytest.mark.parametrize("gate", ["AND", "OR"])
@pytest.mark.parametrize("seed", range(10))
def test_learns_linearly_separable_gates_given_enough_epochs(gate, seed):
    w, b, acc = train_perceptron(GATE_INPUTS, GATES[gate], epochs=60, seed=seed)
    assert acc[-1] == 1.0
    first = acc.index(1.0)
    assert all(a == 1.0 for a in acc[first:])  # once right, no more updates happen


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("lr", [0.1, 1.0])
def test_never_learns_xor(seed, lr):
    _, _, acc = train_perceptron(GATE_INPUTS, GATES["XOR"], lr=lr, epochs=50, seed=seed)
    assert max(acc) <= 0.75
    assert all(a in (0.0, 0.25, 0.5, 0.75) for a in acc)


def test_training_is_deterministic_and_does_not_touch_data():
    X, y = GATE_INPUTS.copy(), GATES["AND"].copy()
    a = train_perceptron(X, y, seed=5)
    b = train_perceptron(X, y, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[2] == b[2]
    np.testing.assert_array_equal(X, GATE_INPUTS)
    np.testing.assert_array_equal(y, GATES["AND"])


def test_default_epochs_suffice_for_every_seed():
    for seed in range(10):
        for gate in ("AND", "OR"):
            _, _, acc = train_perceptron(GATE_INPUTS, GATES[gate], seed=seed)
            assert acc[-1] == 1.0, (gate, seed)
