"""Figures written as PNG into the run directory (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dlforge.runs import write_error  # noqa: E402


def save_figure(fig, path: Path, **savefig: object) -> Path:
    """Write a figure as PNG (creating its folder) and close it -> path. The one place figures are
    written: a file that cannot be written is one DlforgeError naming it, never an OSError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, **{"dpi": 110, "bbox_inches": "tight", **savefig})
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        plt.close(fig)
    return path


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # row-normalised: recall on the diagonal
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * k, 1.0 + 0.5 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_learning_curves(records: list[dict], path: Path) -> Path | None:
    """Loss and accuracy per epoch, training and validation."""
    recs = [r for r in records if "epoch" in r]
    if not recs:
        return None
    ep = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy (%)")):
        scale = 100 if key == "accuracy" else 1
        for prefix, style in (("", "o-"), ("val_", "s--")):
            ys = [r.get(prefix + key) for r in recs]
            if all(y is not None for y in ys):
                ax.plot(ep, [scale * y for y in ys], style, label=(prefix or "train_").rstrip("_"))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Learning curves")
    return save_figure(fig, path)


def plot_image_grid(images: np.ndarray, titles: list[str], path: Path, title: str, cols: int = 8,
                    colors: list[str] | None = None) -> Path:
    """images: (N, C, H, W) uint8 or float in [0,1]; colors: one per title (e.g. red for a wrong prediction)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    height = 1.75 * rows + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, height), squeeze=False)
    # margins in inches, not matplotlib's fractions (top=0.88 leaves a tall grid a band of blank inches)
    fig.subplots_adjust(top=1 - 0.6 / height, bottom=0.05 / height, left=0.02, right=0.98)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, c in zip(axes.flat, images, titles, colors or ["black"] * len(titles)):
        img = np.asarray(img).transpose(1, 2, 0)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        ax.set_title(t, fontsize=7, color=c)
    fig.suptitle(title, y=1 - 0.1 / height, va="top")
    return save_figure(fig, path)


def plot_lm_curves(records: list[dict], path: Path) -> Path | None:
    """Language models: training and validation loss (nats per token) and the learning rate, per step."""
    evals = [r for r in records if "val_loss" in r]
    if not records:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    train = [r for r in records if "loss" in r and ("val_loss" in r or not evals)]  # one kind of record
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], "o-", ms=3, label="train")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s--", ms=3, label="validation")
    axes[0].set_ylabel("loss (nats / token)")
    axes[1].plot([r["step"] for r in records if "lr" in r], [r["lr"] for r in records if "lr" in r], ".-")
    axes[1].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.subplots_adjust(wspace=0.3)
    fig.suptitle("Learning curves")
    return save_figure(fig, path)


def plot_attention(maps: list, tokens: list[str], path: Path, max_heads: int = 4) -> Path:
    """maps: per layer (heads, T, T) attention probabilities; rows: queries, columns: keys."""
    layers, heads = len(maps), min(max_heads, maps[0].shape[0])
    fig, axes = plt.subplots(layers, heads, figsize=(3.2 * heads, 3.2 * layers), squeeze=False)
    labels = [repr(t)[1:-1][:6] for t in tokens]
    for i in range(layers):
        for h in range(heads):
            ax = axes[i, h]
            ax.imshow(np.asarray(maps[i][h]), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {i + 1}, head {h + 1}", fontsize=8)
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(labels)), labels, fontsize=5)
    fig.suptitle("Causal self-attention (rows: query token, columns: key token)")
    return save_figure(fig, path)


def plot_cross_attention(maps: list, src_tokens: list[str], out_tokens: list[str], path: Path) -> Path:
    """maps: per decoder layer (heads, T, S) cross-attention; rows: the token being generated,
    columns: the source token it looks at. Every layer and head."""
    layers, heads = len(maps), maps[0].shape[0]
    T, S = maps[0].shape[1:]
    w, h = max(2.2, 0.28 * S + 1.0), max(2.0, 0.22 * T + 1.0)
    fig, axes = plt.subplots(layers, heads, figsize=(w * heads, h * layers), squeeze=False)
    xs = [repr(t)[1:-1][:10] for t in src_tokens]
    ys = [repr(t)[1:-1][:10] for t in out_tokens]
    for i in range(layers):
        for j in range(heads):
            ax = axes[i, j]
            ax.imshow(np.asarray(maps[i][j]), cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"layer {i + 1}, head {j + 1}", fontsize=8)
            ax.set_xticks(range(len(xs)), xs, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ys)), ys, fontsize=6)
    fig.suptitle("Cross-attention (rows: generated token, columns: source token)")
    fig.tight_layout()
    return save_figure(fig, path)
