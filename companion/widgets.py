"""Interactive explorers built on ipywidgets (imported on first use)."""
from __future__ import annotations


def activation_explorer():
    """Pick an activation, a range and Leaky ReLU's slope; see f, f' and PyTorch's own f overlaid.

    Returns the ``ipywidgets`` container: leave it as a cell's last expression to show it.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    import torch

    from .activations import ACTIVATIONS, leaky_relu, leaky_relu_grad

    name = w.Dropdown(options=list(ACTIVATIONS), value="GELU", description="activation")
    span = w.FloatSlider(value=5.0, min=1.0, max=20.0, step=0.5, description="x range ±")
    alpha = w.FloatSlider(value=0.01, min=0.0, max=0.5, step=0.01, description="leaky α")
    show_grad = w.Checkbox(value=True, description="show derivative")
    out = w.Output()

    def draw(*_):
        f, df, torch_f = ACTIVATIONS[name.value]
        if name.value == "Leaky ReLU":
            a = alpha.value
            f, df = (lambda x: leaky_relu(x, a)), (lambda x: leaky_relu_grad(x, a))
            torch_f = lambda x: torch.nn.functional.leaky_relu(x, a)  # noqa: E731
        x = torch.linspace(-span.value, span.value, 801)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(x, f(x), lw=2, label=f"{name.value} (companion)")
            ax.plot(x, torch_f(x), ":", color="k", label="PyTorch's own")
            if show_grad.value:
                ax.plot(x, df(x), "--", label="derivative")
            ax.axhline(0, color="grey", lw=0.5)
            ax.axvline(0, color="grey", lw=0.5)
            ax.legend()
            ax.set_title(name.value)
            plt.show()

    for control in (name, span, alpha, show_grad):
        control.observe(draw, names="value")
    box = w.VBox([w.HBox([name, show_grad]), w.HBox([span, alpha]), out])
    draw()
    return box
