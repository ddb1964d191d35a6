"""companion.data: offline loaders, the checksummed cache, and the stratified splits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from companion import data
from companion.data import (
    CACHE_VERSION,
    Dataset,
    cached_arrays,
    load_digits,
    load_mnist1d,
    load_mnist5k,
    mnist1d_split,
    split,
    stratified_split,
)


def _check_dataset(ds: Dataset, n: int, d: int, unit_range: bool) -> None:
    assert isinstance(ds, Dataset)
    assert ds.X.shape == (n, d)
    assert ds.X.dtype == np.float32
    assert ds.y.shape == (n,)
    assert ds.y.dtype == np.int64
    assert len(ds) == n
    assert np.isfinite(ds.X).all()
    if unit_range:
        assert ds.X.min() >= 0.0 and ds.X.max() <= 1.0
        assert ds.X.min() == 0.0 and ds.X.max() == 1.0  # really scaled, not squashed
    assert set(np.unique(ds.y)) == set(range(10))


# ------------------------------------------------------------------ loaders, offline, cold cache

def test_load_digits(tmp_cache, no_network):
    ds = load_digits()
    _check_dataset(ds, 1797, 64, unit_range=True)
    assert ds.image_shape == (8, 8)
    assert ds.images.shape == (1797, 8, 8)


def test_load_mnist5k_offline_cold_then_warm(tmp_cache, no_network, monkeypatch):
    ds = load_mnist5k()
    _check_dataset(ds, 5000, 784, unit_range=True)
    np.testing.assert_array_equal(np.bincount(ds.y), np.full(10, 500))
    assert ds.images.shape == (5000, 28, 28)
    stored = tmp_cache / f"mnist5k-v{CACHE_VERSION}.npz"
    assert stored.is_file() and stored.with_suffix(".sha256").is_file()

    # second load: from the cache, the builder is never called
    def must_not_build():
        raise AssertionError("the cache was ignored and the data rebuilt")

    monkeypatch.setattr(data, "_build_mnist5k", must_not_build)
    again = load_mnist5k()
    np.testing.assert_array_equal(again.X, ds.X)
    np.testing.assert_array_equal(again.y, ds.y)


def test_load_mnist1d_offline_cold_then_warm(tmp_cache, no_network, monkeypatch):
    ds = load_mnist1d()
    _check_dataset(ds, 5000, 40, unit_range=False)
    assert ds.image_shape == (40,)
    assert (tmp_cache / f"mnist1d-v{CACHE_VERSION}.npz").is_file()

    def must_not_build():
        raise AssertionError("the cache was ignored and the data rebuilt")

    monkeypatch.setattr(data, "_build_mnist1d", must_not_build)
    train, test = mnist1d_split()
    assert (len(train), len(test)) == (4000, 1000)
    for part in (train, test):
        assert part.X.dtype == np.float32 and part.y.dtype == np.int64
        assert part.X.shape[1] == 40 and part.image_shape == (40,)
        assert set(np.unique(part.y)) == set(range(10))
    np.testing.assert_array_equal(np.concatenate([train.X, test.X]), ds.X)
    np.testing.assert_array_equal(np.concatenate([train.y, test.y]), ds.y)


def test_dataset_without_image_shape_has_no_images():
    ds = Dataset(np.zeros((2, 3), np.float32), np.zeros(2, np.int64), "plain")
    with pytest.raises(ValueError, match="no image shape"):
        ds.images


# ------------------------------------------------------------------ the cache

def _tiny_builder(calls: list):
    def build():
        calls.append(1)
        return {"X": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.array([0, 1, 2], np.int64)}
    return build


def _assert_tiny(arrays):
    np.testing.assert_array_equal(arrays["X"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert arrays["X"].dtype == np.float32
    np.testing.assert_array_equal(arrays["y"], [0, 1, 2])
    assert arrays["y"].dtype == np.int64


def test_cache_builds_once(tmp_cache):
    calls = []
    _assert_tiny(cached_arrays("tiny", _tiny_builder(calls)))
    _assert_tiny(cached_arrays("tiny", _tiny_builder(calls)))
    assert len(calls) == 1
    assert not list(tmp_cache.glob("*.tmp"))  # no leftover temporary file


def _flip_bytes(path):
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid] ^= 0xFF
    raw[mid + 1] ^= 0x55
    path.write_bytes(bytes(raw))


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(b"this is not a zip file at all")


def _bad_checksum(path):
    path.with_suffix(".sha256").write_text("0" * 64 + "\n")


def _checksum_binary(path):
    path.with_suffix(".sha256").write_bytes(b"\xff\xfe\x00garbage")


def _no_checksum(path):
    path.with_suffix(".sha256").unlink()


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate, _empty, _garbage, _bad_checksum,
                                    _checksum_binary, _no_checksum])
def test_corrupted_cache_is_detected_and_rebuilt(tmp_cache, damage, capsys):
    calls = []
    cached_arrays("tiny", _tiny_builder(calls))
    path = tmp_cache / f"tiny-v{CACHE_VERSION}.npz"
    damage(path)
    arrays = cached_arrays("tiny", _tiny_builder(calls))
    assert len(calls) == 2, "the damaged cache was not rebuilt"
    _assert_tiny(arrays)
    # the rebuilt entry is good again: a third load does not rebuild
    _assert_tiny(cached_arrays("tiny", _tiny_builder(calls)))
    assert len(calls) == 2


def test_corruption_is_reported(tmp_cache, capsys):
    calls = []
    cached_arrays("tiny", _tiny_builder(calls))
    _flip_bytes(tmp_cache / f"tiny-v{CACHE_VERSION}.npz")
    capsys.readouterr()
    cached_arrays("tiny", _tiny_builder(calls))
    assert "rebuilding" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate])
def test_corrupted_mnist5k_cache_still_loads_correct_data(tmp_cache, no_network, damage):
    good = load_mnist5k()
    damage(tmp_cache / f"mnist5k-v{CACHE_VERSION}.npz")
    again = load_mnist5k()
    np.testing.assert_array_equal(again.X, good.X)
    np.testing.assert_array_equal(again.y, good.y)
    np.testing.assert_array_equal(np.bincount(again.y), np.full(10, 500))


def test_corrupted_mnist1d_cache_rebuilds_identical_data(tmp_cache, no_network):
    good = load_mnist1d()
    _truncate(tmp_cache / f"mnist1d-v{CACHE_VERSION}.npz")
    again = load_mnist1d()  # generation is seeded: the rebuild is bit-identical
    np.testing.assert_array_equal(again.X, good.X)
    np.testing.assert_array_equal(again.y, good.y)


# ------------------------------------------------------------------ stratified_split

labels = hnp.arrays(np.int64, st.integers(1, 200), elements=st.integers(0, 6))
fractions = st.floats(0.05, 0.95)


@settings(max_examples=30, deadline=None)
@given(y=labels, test_fraction=fractions, seed=st.integers(0, 2**32 - 1))
def test_stratified_split_keeps_class_shares(y, test_fraction, seed):
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    # disjoint, covering, sorted, integer indices
    assert np.intersect1d(train_idx, test_idx).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(len(y)))
    assert np.all(np.diff(test_idx) > 0) and np.all(np.diff(train_idx) > 0)
    assert train_idx.dtype.kind == "i" and test_idx.dtype.kind == "i"
    # each class: exactly round(n_c * f) rows in test (within one row of its share)
    for cls in np.unique(y):
        n_c = int((y == cls).sum())
        n_test = int((y[test_idx] == cls).sum())
        assert n_test == int(round(n_c * test_fraction))
        assert abs(n_test - n_c * test_fraction) <= 0.5 + 1e-9
        assert n_test + int((y[train_idx] == cls).sum()) == n_c


@settings(max_examples=30, deadline=None)
@given(y=labels, test_fraction=fractions, seed=st.integers(0, 1000))
def test_stratified_split_is_deterministic(y, test_fraction, seed):
    a = stratified_split(y, test_fraction, seed)
    b = stratified_split(y, test_fraction, seed)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_stratified_split_balanced_example():
    y = np.repeat(np.arange(4), 50)  # 4 classes x 50
    train_idx, test_idx = stratified_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(np.bincount(y[test_idx]), [10, 10, 10, 10])
    np.testing.assert_array_equal(np.bincount(y[train_idx]), [40, 40, 40, 40])


def test_stratified_split_seed_changes_the_draw():
    y = np.repeat(np.arange(3), 100)
    assert not np.array_equal(stratified_split(y, 0.3, 0)[1], stratified_split(y, 0.3, 1)[1])


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_stratified_split_bad_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.array([0, 1, 0, 1]), bad)


# ------------------------------------------------------------------ split

def test_split_sizes_and_stratification():
    y = np.repeat(np.arange(10), 100)
    X = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    ds = Dataset(X, y, "toy", None)
    s = split(ds, test_fraction=0.2, val_fraction=0.25, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (600, 200, 200)
    for part, per_class in ((s.train, 60), (s.val, 20), (s.test, 20)):
        np.testing.assert_array_equal(np.bincount(part.y, minlength=10), np.full(10, per_class))
        assert part.X.dtype == np.float32 and part.y.dtype == y.dtype
    # rows stay paired with their labels and no row is used twice
    rows = np.concatenate([s.train.X[:, 0], s.val.X[:, 0], s.test.X[:, 0]]) // 3
    np.testing.assert_array_equal(np.sort(rows), np.arange(1000))
    for part in (s.train, s.val, s.test):
        np.testing.assert_array_equal(y[(part.X[:, 0] // 3).astype(int)], part.y)
    assert s.train.name == "toy train" and s.val.name == "toy val" and s.test.name == "toy test"


def test_split_digits_sizes_and_tensors():
    import torch

    s = split(load_digits())
    n_test = sum(int(round(c * 0.2)) for c in np.bincount(load_digits().y))
    assert len(s.test) == n_test
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert abs(len(s.val) - 0.2 * (1797 - n_test)) <= 10  # one rounding per class at most
    X, y = s.tensors("train")
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    assert X.shape == (len(s.train), 64)
    assert s.train.image_shape == (8, 8)
