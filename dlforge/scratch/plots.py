"""Figure of the four activation functions and their derivatives, computed by the engine."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dlforge.scratch.activations import ReLU, Sigmoid, Softmax, Tanh

TITLES = {  # name -> (f, f') in matplotlib mathtext
    "sigmoid": (r"$\sigma(x) = 1 / (1 + e^{-x})$", r"$\sigma'(x) = \sigma(x)\,(1 - \sigma(x))$"),
    "ReLU": (r"$\mathrm{relu}(x) = \max(x, 0)$", r"$\mathrm{relu}'(x) = 1$ if $x > 0$ else $0$"),
    "tanh": (r"$\tanh(x)$", r"$\tanh'(x) = 1 - \tanh^2(x)$"),
    "softmax": (r"$s_0 = \mathrm{softmax}([x, 0])_0 = e^{x} / (e^{x} + e^{0})$",
                r"$\partial s_0 / \partial x = s_0\,(1 - s_0)$  (row 0 of the Jacobian)"),
}


def _softmax_curves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s_0 of softmax([x, 0]) and ds_0/dx from the engine's vector-Jacobian product."""
    act = Softmax()
    z = np.stack([x, np.zeros_like(x)], axis=1)                    # (N, 2)
    s = act.forward(z)
    upstream = np.zeros_like(z)
    upstream[:, 0] = 1.0                                           # pick output s_0
    return s[:, 0], act.backward(upstream)[:, 0]                   # J^T e_0 = (ds_0/dz_0, ...)


def plot_activations(path: str | Path) -> None:
    """Write a 2x2 PNG: sigmoid, ReLU, tanh, softmax, each with its derivative."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.linspace(-6.0, 6.0, 1201)
    curves = {name: (act.forward(x), act.derivative(x))
              for name, act in (("sigmoid", Sigmoid()), ("ReLU", ReLU()), ("tanh", Tanh()))}
    curves["softmax"] = _softmax_curves(x)
    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for ax, (name, (f, df)) in zip(axes.flat, curves.items()):
        f_label, df_label = TITLES[name]
        ax.plot(x, f, lw=2.4, color="tab:blue", label=f_label)
        ax.plot(x, df, lw=2.0, ls="--", color="tab:orange", label=df_label)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_title(name, fontsize=13, fontweight="bold")
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
    axes[1, 0].set_ylim(-1.15, 1.6)       # room for the legend above tanh's curve
    fig.suptitle("Activation functions (solid) and their derivatives (dashed), "
                 "computed by dlforge.scratch", fontsize=13)
    from dlforge.evaluate.plots import save_figure
    save_figure(fig, Path(path), bbox_inches=None)
