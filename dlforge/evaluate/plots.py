"""Figures written as PNG into the run directory (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.runs import write_error  # noqa: E402


FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp", ".tif", ".tiff")


def figure_path(path: str | Path) -> Path:
    """A figure's file, checked before any work: its name ends in a format matplotlib writes (.png, or .pdf,
    .svg, ...), and it is not a folder. Unchecked, matplotlib wrote `grid` as grid.png while the command
    printed `grid`, wrote `outdir.png` beside an existing folder `outdir`, and raised a ValueError traceback
    for `grid.txt`."""
    path = Path(path)
    if path.is_dir():
        raise DlforgeError(f"{path}: is a folder; expected an image file name, e.g. {path / 'figure.png'}")
    if path.suffix.lower() not in FORMATS:
        raise DlforgeError(f"{path}: expected an image file name ending in {', '.join(FORMATS)}")
    return path


def save_figure(fig, path: Path, **savefig: object) -> Path:
    """Write a figure (PNG, or the format its name ends in; creating its folder) and close it -> path. The one
    place figures are written: a file that cannot be written is one DlforgeError naming it, never an OSError."""
    try:
        path = figure_path(path)
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


def shorten(text: str, n: int) -> str:
    """text cut to at most n characters, an ellipsis marking the cut."""
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def token_label(token: str, n: int = 8) -> str:
    """A token as a tick label: whitespace drawn visibly (␣ ⏎ ⇥), other control characters escaped, shortened."""
    text = "".join(VISIBLE.get(c, c if c.isprintable() else repr(c)[1:-1]) for c in token)
    return shorten(text, n) or "∅"


def _series(records: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(steps, values) of every record holding `key`, in step order. Training figures are means over the steps
    since the previous record (an evaluation window or the epoch); where two records share a step (an
    evaluation at an epoch's end), the first logged is kept."""
    at: dict[int, float] = {}
    for r in records:
        if r.get(key) is not None and "step" in r and r["step"] not in at:
            at[r["step"]] = scale * r[key]
    steps = sorted(at)
    return steps, [at[s] for s in steps]


def _curves(records: list[dict], panels: list[tuple[str, str, float]], title: str = "Learning curves"):
    """One panel per (key, y label, scale): the training figure and its val_ twin against the optimizer step.
    -> the Figure, or None when no record holds any of them (nothing to draw)."""
    if not any(_series(records, p + key)[0] for key, _, _ in panels for p in ("", "val_")):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label, scale) in zip(axes.flat, panels):
        for prefix, style, name in (("", "o-", "train"), ("val_", "s--", "validation")):
            steps, ys = _series(records, prefix + key, scale)
            if steps:
                ax.plot(steps, ys, style, ms=3, label=name if key != "lr" else None)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if any(line.get_label()[:1] != "_" for line in ax.lines):
            ax.legend()
    fig.subplots_adjust(wspace=0.3)
    fig.suptitle(title)
    return fig


def learning_curves_figure(records: list[dict]):
    """Classification: loss and accuracy (%), training and validation, per optimizer step, from every
    metrics.jsonl record that holds them (epoch ends and --eval-every evaluations). None: no records."""
    return _curves(records, [("loss", "loss", 1.0), ("accuracy", "accuracy (%)", 100.0)])


def plot_learning_curves(records: list[dict], path: Path) -> Path | None:
    """learning_curves_figure written to path -> path, or None (nothing written) when there is nothing to draw."""
    fig = learning_curves_figure(records)
    return None if fig is None else save_figure(fig, path)


def lm_curves_figure(records: list[dict], ylabel: str = "loss (nats / token)"):
    """Language models (and any run whose loss is not a classification loss: pass its name as ylabel):
    training and validation loss and the learning rate, per optimizer step. None: no records."""
    return _curves(records, [("loss", ylabel, 1.0), ("lr", "learning rate", 1.0)])


def plot_lm_curves(records: list[dict], path: Path, ylabel: str = "loss (nats / token)") -> Path | None:
    """lm_curves_figure written to path -> path, or None (nothing written) when there is nothing to draw."""
    fig = lm_curves_figure(records, ylabel)
    return None if fig is None else save_figure(fig, path)


def image_grid_figure(images: np.ndarray, titles: list[str], title: str, cols: int = 8,
                      colors: list[str] | None = None, stretch: bool = False):
    """images: (N, C, H, W) uint8 or float in [0,1]; colors: one per title (e.g. red for a wrong prediction).
    Every image on one fixed scale (uint8 0..255, float 0..1: a flat grey image is drawn flat grey);
    stretch=True maps each image's own min..max to black..white instead. -> the Figure."""
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
        lo, hi = (None, None) if stretch else (0, 255 if img.dtype == np.uint8 else 1)
        if img.shape[2] == 1:  # imshow stretches a one-channel image to its own min..max unless told the scale
            ax.imshow(img[..., 0], cmap="gray", vmin=lo, vmax=hi)
        else:  # RGB: drawn as given (uint8 0..255, float 0..1)
            ax.imshow(img if not stretch else (img - img.min()) / max(np.ptp(img), 1e-12))
        ax.set_title(t, fontsize=7, color=c)
    fig.suptitle(title, y=1 - 0.1 / height, va="top")
    return fig


def plot_image_grid(images: np.ndarray, titles: list[str], path: Path, title: str, cols: int = 8,
                    colors: list[str] | None = None, stretch: bool = False) -> Path:
    """image_grid_figure written to path -> path."""
    return save_figure(image_grid_figure(images, titles, title, cols, colors, stretch), path)


MAX_TICKS = 48  # labelled tokens per attention axis (half as many for words): more is unreadable at 7-8 pt


def plot_attention(maps: list, tokens: list[str], path: Path, max_heads: int = 4) -> Path:
    """maps: per layer (heads, T, T) attention probabilities; rows: queries, columns: keys. Whitespace drawn
    visibly; every token labelled when they are single characters (upright, the text reads along the axis),
    else every k-th of at most MAX_TICKS / 2, rotated."""
    layers, heads = len(maps), min(max_heads, maps[0].shape[0])
    labels = [token_label(t, 6) for t in tokens]
    upright = max(map(len, labels), default=0) == 1
    every = -(-len(labels) // (MAX_TICKS if upright else MAX_TICKS // 2))
    ticks = list(range(0, len(labels), every))
    side = max(4.2, 0.14 * len(ticks) + 0.6)  # inches per panel: ~10 pt per labelled token
    fig, axes = plt.subplots(layers, heads, figsize=(side * heads, side * layers), squeeze=False)
    for i in range(layers):
        for h in range(heads):
            ax = axes[i, h]
            ax.imshow(np.asarray(maps[i][h]), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {i + 1}, head {h + 1}", fontsize=9)
            ax.set_xticks(ticks, [labels[j] for j in ticks], rotation=0 if upright else 90, fontsize=7.5)
            ax.set_yticks(ticks, [labels[j] for j in ticks], fontsize=7.5)
    fig.suptitle("Causal self-attention (rows: query token, columns: key token)"
                 + (f"; one token in {every} labelled" if every > 1 else ""))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_cross_attention(maps: list, src_tokens: list[str], out_tokens: list[str], path: Path) -> Path:
    """maps: per decoder layer (heads, T, S) cross-attention; rows: the token being generated,
    columns: the source token it looks at. Every layer and head."""
    layers, heads = len(maps), maps[0].shape[0]
    T, S = maps[0].shape[1:]
    w, h = max(2.2, 0.28 * S + 1.0), max(2.0, 0.22 * T + 1.0)
    fig, axes = plt.subplots(layers, heads, figsize=(w * heads, h * layers), squeeze=False)
    xs = [token_label(t, 10) for t in src_tokens]
    ys = [token_label(t, 10) for t in out_tokens]
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


def plot_ctc_alignment(feats: np.ndarray, best: list[int], labels: list[str], subsampling: int, title: str,
                       path: Path) -> Path:
    """feats (T, n_mels) log-mel above; beneath, on the same time axis (10 ms frames), the frame-wise best CTC
    label of each output frame (subsampling input frames each): blanks as a grey band, labels as letters."""
    T = feats.shape[0]
    fig, (ax, lab) = plt.subplots(2, 1, figsize=(max(6.0, T / 45), 4.2), sharex=True,
                                  gridspec_kw={"height_ratios": [4, 1]})
    ax.imshow(feats.T, origin="lower", aspect="auto", cmap="magma", extent=(0, T / 100, 0, feats.shape[1]))
    ax.set_ylabel("mel band")
    ax.set_title(shorten(title, 150), fontsize=9)
    step = subsampling / 100  # seconds per output frame
    lab.set_ylim(0, 1)
    lab.set_yticks([])
    for k, b in enumerate(best):
        x = k * step
        if b == 0:
            lab.axvspan(x, x + step, color="0.88", lw=0)
        else:
            lab.axvspan(x, x + step, color="tab:blue", alpha=0.25, lw=0)
            lab.text(x + step / 2, 0.5, "␣" if labels[b] == " " else labels[b], ha="center", va="center", fontsize=7)
    lab.set_xlabel("time (s)  —  below: the best label of each CTC frame (grey: blank)")
    fig.tight_layout()
    return save_figure(fig, path)
