"""The interactive explorers build, redraw on every control, and show PyTorch's curve."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as w  # noqa: E402

from companion import widgets  # noqa: E402


def _controls(box):
    found = []
    stack = [box]
    while stack:
        widget = stack.pop()
        found.append(widget)
        stack.extend(getattr(widget, "children", ()))
    return found


def test_activation_explorer_redraws_for_every_activation():
    import matplotlib.pyplot as plt

    plt.close("all")
    box = widgets.activation_explorer()
    assert isinstance(box, w.VBox)
    controls = _controls(box)
    dropdown = next(c for c in controls if isinstance(c, w.Dropdown))
    alpha = next(c for c in controls if isinstance(c, w.FloatSlider) and "α" in c.description)
    drawn = len(plt.get_fignums())
    assert drawn == 1, "the explorer should draw once when it is built"
    for name in dropdown.options:
        if name != dropdown.value:
            dropdown.value = name  # each change redraws; an exception would surface here
            drawn += 1
            assert len(plt.get_fignums()) == drawn
            assert plt.gcf().axes[0].get_title() == name


def test_leaky_slope_slider_changes_the_curve():
    import matplotlib.pyplot as plt

    box = widgets.activation_explorer()
    controls = _controls(box)
    next(c for c in controls if isinstance(c, w.Dropdown)).value = "Leaky ReLU"
    next(c for c in controls if isinstance(c, w.FloatSlider) and "α" in c.description).value = 0.3
    mine, torch_line = plt.gcf().axes[0].get_lines()[:2]
    x, y = mine.get_data()
    assert abs(y[0] - 0.3 * x[0]) < 1e-5, "the companion's curve should use the slider's slope"
    assert abs(torch_line.get_data()[1][0] - 0.3 * x[0]) < 1e-5, "PyTorch's curve should use it too"
    plt.close("all")
