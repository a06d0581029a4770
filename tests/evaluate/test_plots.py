"""Pictures that tell the truth: one fixed grey scale for image grids, the y label of the curve that is drawn,
curves over every record by optimizer step (none at all: no file), cut labels marked, distinct caption prompts,
legible attention ticks. Figures are captured where they are saved (plots.save_figure)."""
import json
from pathlib import Path

import dlforge
import numpy as np
import pytest
from PIL import Image

from dlforge.evaluate import plots
from tests.conftest import format1_run
from dlforge.recipes import denoise



@pytest.fixture
def saved(monkeypatch) -> list:
    """The figures the code under test saves, in order, instead of writing them."""
    figs: list = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figs.append(fig) or Path(path))
    return figs


def _drawn_pixels(fig, ax_index: int, path: Path) -> np.ndarray:
    """The grey levels of one panel's image as written to the PNG (cropped to the image's own extent)."""
    fig.canvas.draw()
    box = fig.axes[ax_index].get_images()[0].get_window_extent()  # display pixels, origin bottom left
    plots.save_figure(fig, path, bbox_inches=None, dpi=fig.dpi)
    png = np.asarray(Image.open(path).convert("L"), dtype=float)
    top = png.shape[0] - int(box.y1)
    return png[top + 2: png.shape[0] - int(box.y0) - 2, int(box.x0) + 2: int(box.x1) - 2]


@pytest.mark.parametrize("stretch", [False, True])
def test_a_flat_grey_frame_is_drawn_flat(stretch, tmp_path):
    # the forward process at t = 0 on a flat grey image: 128 with ±2 grey levels of noise (√(1 - ᾱ_0) = 0.01)
    frame = (128 + np.random.default_rng(0).integers(-2, 3, (1, 16, 16))).astype(np.uint8)
    noisy = np.random.default_rng(1).integers(0, 256, (1, 16, 16)).astype(np.uint8)
    fig = plots.image_grid_figure(np.stack([frame, noisy]), ["t=0", "t=999"], "forward process", cols=2,
                                  stretch=stretch)
    px = _drawn_pixels(fig, 0, tmp_path / "grid.png")
    if stretch:  # each image to its own min..max: ±2 levels become black and white
        assert px.std() > 40
    else:
        assert px.std() < 2.5 and abs(px.mean() - 128) < 3


RECORDS = [  # --eval-every 15 over two epochs of 21 steps: evaluations and epoch ends interleaved
    {"step": 15, "epoch": 1, "loss": 0.97, "accuracy": 0.71, "lr": 1e-3, "val_loss": 0.30, "val_accuracy": 0.89},
    {"epoch": 1, "step": 21, "loss": 0.78, "accuracy": 0.77, "lr": 1e-3},
    {"step": 30, "epoch": 2, "loss": 0.22, "accuracy": 0.93, "lr": 1e-3, "val_loss": 0.23, "val_accuracy": 0.90},
    {"epoch": 2, "step": 42, "loss": 0.22, "accuracy": 0.93, "lr": 1e-3},
]


def _lines(ax) -> dict:
    return {line.get_label(): list(line.get_xdata()) for line in ax.lines}


def test_curves_plot_every_record_by_optimizer_step():
    for fig, ylabels in ((plots.learning_curves_figure(RECORDS), ["loss", "accuracy (%)"]),
                         (plots.lm_curves_figure(RECORDS), ["loss (nats / token)", "learning rate"])):
        assert [ax.get_ylabel() for ax in fig.axes] == ylabels
        assert _lines(fig.axes[0]) == {"train": [15, 21, 30, 42], "validation": [15, 30]}
        fig.canvas.draw()
        for ax in fig.axes:
            assert ax.get_xlabel() == "optimizer step"
            assert all(float(t).is_integer() for t in ax.get_xticks())
    assert max(plots.learning_curves_figure(RECORDS).axes[1].lines[0].get_ydata()) == pytest.approx(93)  # percent


def test_no_records_no_picture(tmp_path):
    for records in ([], [{"epoch": 1, "step": 0}]):  # a run stopped before its first epoch / evaluation
        assert plots.plot_learning_curves(records, tmp_path / "a.png") is None
        assert plots.plot_lm_curves(records, tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())


def test_the_diffusion_curve_is_labelled_eps_mse(tmp_path, saved):
    format1_run("denoise", tmp_path / "run")
    run = dlforge.load(tmp_path / "run", device="cpu")
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    denoise.RECIPE.after_training(run, None)
    assert saved[0].axes[0].get_ylabel() == "ε MSE"
    assert plots.lm_curves_figure(RECORDS, "ε MSE").axes[0].get_ylabel() == "ε MSE"


def test_shorten_marks_the_cut():
    assert plots.shorten("a handwritten seven", 18) == "a handwritten sev…"
    assert len(plots.shorten("x" * 40, 18)) == 18 and plots.shorten("the digit 3", 18) == "the digit 3"


def test_sample_grid_row_labels_end_in_an_ellipsis(tmp_path, saved, one_thread):
    format1_run("denoise", tmp_path / "run")
    dlforge.load(tmp_path / "run", device="cpu").sample_grid(["zero zero zero zero zero zero", "zero"], n=1,
                                                              steps=1, out=str(tmp_path / "s.png"))
    assert [ax.get_title() for ax in saved[0].axes[:2]] == ["zero zero zero ze…", "zero"]


def test_a_captions_run_prompts_distinct_captions(tmp_path):
    rows = ["image_path,caption"]
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{['a dark square', 'a bright square', 'a grey square'][i % 3]}")
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    data = denoise.prepare(denoise.DiffusionDataConfig(name=str(tmp_path / "caps.csv"), img_size=8), seed=0)
    assert data.prompts == ["a dark square", "a bright square", "a grey square"]


def test_attention_ticks_are_legible(tmp_path, saved):
    def attention(tokens: list[str]):
        T = len(tokens)
        maps = [np.tril(np.ones((2, T, T))) / np.arange(1, T + 1)[:, None]]
        plots.plot_attention(maps, tokens, tmp_path / "a.png")
        ax = saved[-1].axes[0]
        return [t.get_text() for t in ax.get_xticklabels()], min(t.get_fontsize() for t in ax.get_xticklabels())

    chars, size = attention(list("ANNA:\nmy friend ate the red apple.\n\nBEN:\nthe dog"))  # 46 characters
    assert "".join(chars) == "ANNA:⏎my␣friend␣ate␣the␣red␣apple.⏎⏎BEN:⏎the␣dog"  # every one, whitespace visible
    assert size >= 7
    words, size = attention([" the", " cat", "\n", " extraordinarily"] * 25)  # 100 word tokens: every 5th labelled
    assert len(words) <= 24 and words[:3] == ["␣the", "␣cat", "⏎"] and size >= 7
    assert plots.token_label(" extraordinarily", 6) == "␣extr…" and plots.token_label("\x00") == "\\x00"
