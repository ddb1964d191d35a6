"""The course's numbers beside its anchors, and what running it costs: ``make bench``.

    python tests/bench/run.py [--sections fast,full,ops,grade,grading] [--chapters ch02-ann,...]

Sections (each measured on this machine, one thing at a time so times mean something):
- ``fast``, ``full``: every solution notebook executed in fast and in full mode, wall time;
  from the full-mode run, every line the notebook printed with a number is kept, and the
  ones beside an anchor (a paper's figure, a target, a baseline) go into the report as printed;
- ``ops``: each reference op against PyTorch's built-in: time ratio and max error (float64);
- ``grade``: autograde time of one (solution) submission per chapter, through grade.py;
- ``grading``: 50 generated submissions, grade.py's workers vs nbgrader's serial autograde.

Measurements are kept in tests/bench/results.json (a section run again replaces its
own rows), and tests/bench/REPORT.md and tests/bench/chapter-times.png are written
from it, so nothing in the report is typed by hand.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _course import (CHAPTERS, COURSE_FAST_BUDGET_S, SOLUTIONS, error_cells, execute, make_course_copy,  # noqa: E402
                     notebook_path, run)
from _course import DEFAULT_FAST_BUDGET_S as FAST_BUDGET_S  # noqa: E402  (the suite's budgets, one place)

RESULTS = HERE / "results.json"
REPORT = HERE / "REPORT.md"
PLOT = HERE / "chapter-times.png"
#: A printed line that reports a result or the figure it should reach goes into the report.
ANCHOR = re.compile(r"accura|RMSE|AUC|paper|target|published|baseline|VADER|anchor|guide|Zachary|smaller|faster"
                    r"|ratio|exact match|persistence|ARIMA|ppm|sunspots|report it as|per seed|diverged|nats|ONNX"
                    r"|chapter\)|chapter \d+\)|before|after", re.IGNORECASE)
#: ... unless it is a check's verdict, a tensor or an array printed whole.
NOT_A_RESULT = re.compile(r"^(\u2714|\(|tensor|\[)")
FULL_BUDGET_S = 300  # full mode is measured only here


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import torch

    return {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


# ------------------------------------------------------------------ notebooks

def run_notebook(chapter: str, fast: bool) -> dict:
    os.environ["COURSE_FAST"] = "1" if fast else "0"
    os.environ["MPLBACKEND"] = "Agg"
    try:
        nb, seconds = execute(notebook_path(SOLUTIONS, chapter), allow_errors=True, timeout=900)
    except Exception as err:  # a notebook that could not run is a row of the report too
        return {"seconds": None, "errors": [f"{type(err).__name__}: {str(err)[:200]}"], "lines": []}
    errors = [f"cell {i}" for i in error_cells(nb)]
    lines = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                lines += [ln.strip() for ln in out["text"].splitlines() if re.search(r"\d", ln)]
    return {"seconds": round(seconds, 1), "errors": errors, "lines": lines[:1000]}  # filtered by ANCHOR in the report


# ------------------------------------------------------------------ reference ops

def ops() -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.utils.benchmark import Timer

    from companion import attention, cnn, optim, rnn

    torch.manual_seed(0)
    rows = []

    def bench(name: str, shape: str, ours, theirs, err) -> None:
        t_ours = Timer("f()", globals={"f": ours}).blocked_autorange(min_run_time=0.5).median
        t_theirs = Timer("f()", globals={"f": theirs}).blocked_autorange(min_run_time=0.5).median
        rows.append({"op": name, "shape": shape, "ours_ms": t_ours * 1e3, "torch_ms": t_theirs * 1e3,
                     "ratio": t_ours / t_theirs, "max_error": float(torch.as_tensor(err).detach())})

    x, w, b = torch.randn(32, 16, 28, 28), torch.randn(32, 16, 3, 3), torch.randn(32)
    err = (cnn.conv2d(x.double(), w.double(), b.double(), padding=1)
           - F.conv2d(x.double(), w.double(), b.double(), padding=1)).abs().max()
    bench("conv2d (unfold + matmul)", "x 32x16x28x28, w 32x16x3x3, pad 1",
          lambda: cnn.conv2d(x, w, b, padding=1), lambda: F.conv2d(x, w, b, padding=1), err)
    err = (cnn.max_pool2d(x.double(), 2) - F.max_pool2d(x.double(), 2)).abs().max()
    bench("max_pool2d", "x 32x16x28x28, kernel 2", lambda: cnn.max_pool2d(x, 2), lambda: F.max_pool2d(x, 2), err)

    for kind, module, ours in (("LSTM", torch.nn.LSTMCell, rnn.lstm_cell), ("GRU", torch.nn.GRUCell, rnn.gru_cell)):
        cell = module(64, 128)
        xs, h = torch.randn(64, 64), torch.randn(64, 128)
        state = (h, torch.randn(64, 128)) if kind == "LSTM" else h
        weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        with torch.no_grad():
            cell64 = module(64, 128).double()
            cell64.load_state_dict(cell.state_dict())
            state64 = tuple(t.double() for t in state) if kind == "LSTM" else state.double()
            mine = ours(xs.double(), state64, *(w.double() for w in weights))
            ref = cell64(xs.double(), state64)
            mine = mine[0] if kind == "LSTM" else mine
            ref = ref[0] if kind == "LSTM" else ref
            err = (mine - ref).abs().max()
            bench(f"{kind} cell step", "batch 64, input 64, hidden 128",
                  lambda ours=ours, state=state, weights=weights: ours(xs, state, *weights),
                  lambda cell=cell, state=state: cell(xs, state), err)

    q, k, v = (torch.randn(8, 4, 128, 64) for _ in range(3))
    mask = torch.ones(128, 128, dtype=torch.bool).tril()
    err = (attention.scaled_dot_product_attention(q.double(), k.double(), v.double(), mask=mask)
           - F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)).abs().max()
    bench("scaled dot-product attention, causal", "8x4 heads, 128 tokens, d 64",
          lambda: attention.scaled_dot_product_attention(q, k, v, mask=mask),
          lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), err)

    module = torch.nn.MultiheadAttention(256, 8, batch_first=True)
    params = dict(module.named_parameters())  # in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias
    xq = torch.randn(16, 64, 256)
    with torch.no_grad():
        err = (attention.multi_head_attention(xq.double(), xq.double(), xq.double(),
                                              {k: p.double() for k, p in params.items()}, 8)
               - module.double()(xq.double(), xq.double(), xq.double(), need_weights=False)[0]).abs().max()
        module.float()
        bench("multi-head attention", "batch 16, 64 tokens, 256 wide, 8 heads",
              lambda: attention.multi_head_attention(xq, xq, xq, params, 8),
              lambda: module(xq, xq, xq, need_weights=False), err)

    def adam_pair(dtype):
        """Two identical sets of 4 parameters with gradients: one for ours, one for torch.optim."""
        g = torch.Generator().manual_seed(0)
        sets = []
        for _ in range(2):
            params = [torch.randn(512, 512, generator=g.manual_seed(i), dtype=dtype).requires_grad_()
                      for i in range(4)]
            for i, p in enumerate(params):
                p.grad = torch.randn(512, 512, generator=g.manual_seed(100 + i), dtype=dtype)
            sets.append(params)
        return sets

    ours_p, theirs_p = adam_pair(torch.float64)  # the error after 3 steps, in float64
    ours_opt, theirs_opt = optim.Adam(ours_p, lr=1e-3), torch.optim.Adam(theirs_p, lr=1e-3, foreach=False)
    for _ in range(3):
        ours_opt.step()
        theirs_opt.step()
    err = max((a - b_).abs().max() for a, b_ in zip(ours_p, theirs_p))
    ours_p, theirs_p = adam_pair(torch.float32)  # the time, in float32 like the others
    ours_opt, theirs_opt = optim.Adam(ours_p, lr=1e-3), torch.optim.Adam(theirs_p, lr=1e-3, foreach=False)
    bench("Adam step", "4 tensors of 512x512", ours_opt.step, theirs_opt.step, err)
    return rows


# ------------------------------------------------------------------ grading

def autograde_times(chapters: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_course_copy(Path(tmp))
        for chapter in chapters:
            folder = root / "autograder" / "submitted" / "bench" / chapter
            folder.mkdir(parents=True)
            (folder / f"{chapter}.ipynb").write_text(notebook_path(SOLUTIONS, chapter).read_text())
        proc = run([sys.executable, "autograder/grade.py", "--jobs", "1", "--quiet"], cwd=root, timeout=3600)
        out = {}
        for chapter in chapters:
            status = root / "autograder" / ".grading" / "parts" / chapter / "bench.json"
            data = json.loads(status.read_text()) if status.exists() else {}
            out[chapter] = {"seconds": round(data.get("seconds", float("nan")), 1),
                            "score": f"{data.get('score')} / {data.get('max_score')}"}
        if proc.returncode:
            print(proc.stdout[-2000:])
        return out


def grading_comparison(n: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        proc = subprocess.run([sys.executable, str(HERE / "grading.py"), "--n", str(n), "--json", fh.name],
                              capture_output=True, text=True)
        print(proc.stdout)
        return json.loads(Path(fh.name).read_text()) if proc.returncode == 0 else {"error": proc.stdout[-500:]}


# ------------------------------------------------------------------ report

def write_report(store: dict) -> None:
    m = store.get("machine", {})
    lines = [f"# Benchmarks: the course's numbers beside its anchors",
             "",
             f"Generated by `make bench` (`python tests/bench/run.py`) on {m.get('date')}: "
             f"{m.get('cores')} cores ({m.get('cpu')}), GPU: {m.get('gpu')}, Python {m.get('python')}, "
             f"torch {m.get('torch')}. Every number below comes from that run; rerun to refresh.",
             ""]
    nbs = store.get("notebooks", {})
    if nbs:
        lines += ["## Chapter run times", "",
                  f"Budgets: fast mode {FAST_BUDGET_S} s a chapter and {COURSE_FAST_BUDGET_S // 60} min in all;"
                  f" full mode {FULL_BUDGET_S // 60} min a chapter.", "",
                  "| chapter | fast mode | full mode | errors |", "|---|---:|---:|---|"]
        total = {"fast": 0.0, "full": 0.0}
        for chapter in sorted(nbs):
            row = nbs[chapter]
            cells = []
            for mode, budget in (("fast", FAST_BUDGET_S), ("full", FULL_BUDGET_S)):
                s = row.get(mode, {}).get("seconds")
                if s is None:
                    cells.append("not run")
                else:
                    total[mode] += s
                    cells.append(f"{s:.1f} s" + ("" if s <= budget else " **over budget**"))
            errs = sorted(set(row.get("fast", {}).get("errors", []) + row.get("full", {}).get("errors", [])))
            lines.append(f"| {chapter} | {cells[0]} | {cells[1]} | {', '.join(errs) or 'none'} |")
        lines += [f"| **all chapters** | **{total['fast']:.0f} s** | **{total['full'] / 60:.1f} min** | |", "",
                  f"![chapter times]({PLOT.name})", ""]
        lines += ["## Results beside their anchors (full mode, as each notebook printed them)", ""]
        for chapter in sorted(nbs):
            printed = [ln for ln in nbs[chapter].get("full", {}).get("lines", [])
                       if ANCHOR.search(ln) and not NOT_A_RESULT.search(ln)][:40]
            if printed:
                lines += [f"### {chapter}", "", "```", *printed, "```", ""]
    if store.get("ops"):
        lines += ["## Reference ops against PyTorch's own (CPU, median time in float32; error in float64)", "",
                  "| op | shape | ours | PyTorch | ratio | max error (float64) |", "|---|---|---:|---:|---:|---:|"]
        for r in store["ops"]:
            lines.append(f"| {r['op']} | {r['shape']} | {r['ours_ms']:.3f} ms | {r['torch_ms']:.3f} ms | "
                         f"{r['ratio']:.2f}x | {r['max_error']:.1e} |")
        lines.append("")
    if store.get("autograde"):
        lines += ["## Autograde time of one submission (the solution), through grade.py", "",
                  "| chapter | seconds | score |", "|---|---:|---|"]
        for chapter, r in sorted(store["autograde"].items()):
            lines.append(f"| {chapter} | {r['seconds']} | {r['score']} |")
        lines.append("")
    g = store.get("grading")
    if g and "ratio" in g:
        lines += ["## A class at once", "",
                  f"{g['n']} generated submissions of {g['chapter']}: nbgrader's serial autograde "
                  f"{g['serial']:.0f} s; `grade.py --jobs {g['jobs']}` {g['parallel']:.0f} s "
                  f"(feedback and CSV included): **{g['ratio']:.2f}x** faster; identical scores: {g['agree']}.", ""]
    REPORT.write_text("\n".join(lines))
    if nbs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = sorted(nbs)
        fig, ax = plt.subplots(figsize=(10, 4))
        xs = range(len(names))
        for offset, mode in ((-0.2, "fast"), (0.2, "full")):
            ax.bar([x + offset for x in xs], [nbs[c].get(mode, {}).get("seconds") or 0 for c in names], 0.4,
                   label=f"{mode} mode")
        ax.axhline(FAST_BUDGET_S, ls="--", color="C0", lw=1, label="fast budget")
        ax.axhline(FULL_BUDGET_S, ls="--", color="C1", lw=1, label="full budget")
        ax.set_xticks(list(xs), [n.split("-")[0] for n in names])
        ax.set_ylabel("seconds")
        ax.set_title(f"Chapter run times on {m.get('cores')} cores ({m.get('date')})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(PLOT, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="fast,full,ops,grade,grading",
                        help="what to measure; 'report' alone rewrites REPORT.md from results.json")
    parser.add_argument("--chapters", default=",".join(CHAPTERS))
    parser.add_argument("--n", type=int, default=50, help="submissions for the grading comparison")
    args = parser.parse_args()
    sections, chapters = args.sections.split(","), args.chapters.split(",")
    store = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if set(sections) & {"fast", "full", "ops", "grade", "grading"}:
        store["machine"] = machine()
    for mode in ("fast", "full"):
        if mode in sections:
            for chapter in chapters:
                print(f"{chapter}: {mode} mode ...", flush=True)
                store.setdefault("notebooks", {}).setdefault(chapter, {})[mode] = run_notebook(chapter, mode == "fast")
                print(f"  {store['notebooks'][chapter][mode]['seconds']} s", flush=True)
                RESULTS.write_text(json.dumps(store, indent=1))
    if "ops" in sections:
        store["ops"] = ops()
    if "grade" in sections:
        store.setdefault("autograde", {}).update(autograde_times(chapters))
    if "grading" in sections:
        store["grading"] = grading_comparison(args.n)
    RESULTS.write_text(json.dumps(store, indent=1))
    write_report(store)
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
