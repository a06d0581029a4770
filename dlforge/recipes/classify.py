"""Image classification end to end: data -> batched transforms -> model -> Trainer -> report.

Everything is rebuilt from the run directory's config.json, so `eval` and `predict` need nothing
but the run. Used by the CLI commands train / eval / predict for models whose task is 'classify'.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dlforge.data import images
from dlforge.data.loader import BatchLoader
from dlforge.data.transforms import ImageTransform, TransformConfig
from dlforge.errors import DlforgeError
from dlforge.evaluate import metrics, plots
from dlforge.recipes.base import fit, load_model
from dlforge.registry import create_model, get_entry
from dlforge.runs import Run, atomic_write_json
from dlforge.train.tasks import ClassifyTask
from dlforge.train.trainer import Trainer, TrainConfig, autocast, pick_device


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    grayscale: bool = False  # RGB datasets: convert to gray first (the reference does this for every dataset)
    skip_bad_images: bool = False  # leave out undecodable image files (counted) instead of refusing them all

    def __post_init__(self) -> None:
        if self.name not in images.DATASETS:
            raise DlforgeError(f"--data: unknown dataset {self.name!r}; expected one of: {', '.join(images.DATASETS)}")
        if not 0 <= self.val_fraction < 1:
            raise DlforgeError(f"--val-fraction: expected 0 <= f < 1, got {self.val_fraction}")


def prepare_data(dc: DataConfig, img_size: int, seed: int, splits: tuple[str, ...] = images.SPLITS) -> images.ImageData:
    """Load (only `splits`), carve the validation split, and (with --grayscale) turn RGB images gray."""
    data = images.load_dataset(dc.name, dc.data_dir, img_size, dc.skip_bad_images, splits)
    data = images.split_validation(data, dc.val_fraction, seed)
    if dc.grayscale and data.channels == 3:
        data.train_x, data.test_x = _grayscale(data.train_x), _grayscale(data.test_x)
        data.val_x = None if data.val_x is None else _grayscale(data.val_x)
        data.mean, data.std = (sum(data.mean) / 3,), (sum(data.std) / 3,)
    return data


def transform_config(data: images.ImageData, img_size: int, channels_last: bool) -> TransformConfig:
    """Grayscale is repeated to 3 channels, as in the reference; RGB stays RGB."""
    return TransformConfig(img_size=img_size, channels=3, mean=data.mean, std=data.std, channels_last=channels_last)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def build(cfg: dict) -> tuple[ClassifyTask, torch.nn.Module, TransformConfig]:
    """Task, model (seeded initial weights) and transforms from a run config (as saved in config.json)."""
    tc = TransformConfig(**cfg["transform"])
    task = ClassifyTask(num_classes=cfg["data"]["num_classes"], **cfg["task_options"])
    torch.manual_seed(cfg["train"]["seed"])
    model = create_model(cfg["model"]["name"], **cfg["model"]["kwargs"])
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return task, model, tc


def check_classes(data: images.ImageData, cfg: dict) -> None:
    if len(data.classes) != cfg["data"]["num_classes"]:
        raise DlforgeError(f"--data {data.name}: the data has {len(data.classes)} classes, but the run's model "
                           f"predicts {cfg['data']['num_classes']}")


def new_config(model: str, dc: DataConfig, tcfg: TrainConfig, img_size: int, loss: str, positive_class: int,
               channels_last: bool, model_kwargs: dict) -> tuple[dict, images.ImageData]:
    if get_entry(model).task != "classify":
        raise DlforgeError(f"model {model!r} is not an image classifier")
    data = prepare_data(dc, img_size, tcfg.seed)
    tc = transform_config(data, img_size, channels_last)
    task = ClassifyTask(num_classes=len(data.classes), loss=loss, positive_class=positive_class)
    kwargs = {"in_channels": tc.channels, "img_size": img_size, "num_classes": task.out_features, **model_kwargs}
    cfg = {"task": {"name": "classify"}, "model": {"name": model, "kwargs": kwargs},
           "data": {**asdict(dc), "num_classes": len(data.classes), "classes": data.classes,
                    "native_size": list(data.train_x.shape[1:])},
           "transform": tc.to_dict(), "task_options": {"loss": loss, "positive_class": positive_class},
           "train": asdict(tcfg)}
    return cfg, data


def predict_batches(model: torch.nn.Module, task: ClassifyTask, x: torch.Tensor, tf: ImageTransform,
                    device: torch.device, precision: str, batch_size: int = 256) -> torch.Tensor:
    """Raw outputs for uint8 images x, in batches, eval mode."""
    model.eval()
    outs = []
    with torch.inference_mode(), autocast(precision, device):
        for i in range(0, len(x), batch_size):
            outs.append(model(tf(x[i:i + batch_size]).to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, task.out_features)


def val_callback(task: ClassifyTask, data: images.ImageData, tc: TransformConfig, tcfg: TrainConfig):
    if data.val_x is None:
        return None
    tf = ImageTransform(tc, train=False)

    def evaluate(model: torch.nn.Module) -> dict:
        dev = next(model.parameters()).device
        out = predict_batches(model, task, data.val_x, tf, dev, tcfg.precision, tcfg.eval_batch_size)
        acc = (task.predictions(out) == task.targets(data.val_y)).float().mean().item()
        return {"loss": task.per_sample_loss(out, data.val_y).mean().item(), "accuracy": acc}
    return evaluate


def train(cfg: dict, data: images.ImageData, out: str) -> dict:
    """A new run in `out` from a config made by new_config."""
    return _fit(Run.create(out, cfg), cfg, data, resume=False)


def resume(out: str, tcfg: TrainConfig, model: str) -> dict:
    """Continue the run in `out` exactly where its last checkpoint stopped, on the data it was trained on."""
    run = Run.open(out, "classify")
    cfg = {**run.config, "train": asdict(tcfg)}
    if cfg["model"]["name"] != model:
        raise DlforgeError(f"--resume {out}: this run trains {cfg['model']['name']!r}, not {model!r}")
    saved = {k: cfg["data"][k] for k in ("name", "data_dir", "val_fraction", "grayscale")}
    saved["skip_bad_images"] = cfg["data"].get("skip_bad_images", False)  # absent in older runs
    data = prepare_data(DataConfig(**saved), cfg["transform"]["img_size"], tcfg.seed)
    Run.create(out, cfg)
    return _fit(run, cfg, data, resume=True)


def _fit(run: Run, cfg: dict, data: images.ImageData, resume: bool) -> dict:
    out = run.path
    check_classes(data, cfg)
    task, model, tc = build(cfg)
    tcfg = TrainConfig(**cfg["train"])
    loader = BatchLoader(data.train_x, data.train_y, tcfg.batch_size, shuffle=True, seed=tcfg.seed,
                         transform=ImageTransform(tc, train=True))
    trainer = Trainer(task, model, loader, tcfg, run, val_callback(task, data, tc, tcfg),
                      meta={"model": cfg["model"], "task": cfg["task"]})
    if not fit(trainer, resume, out, cfg["model"]["name"], f"{data.name} ({len(data.train_y)} train / "
               f"{0 if data.val_y is None else len(data.val_y)} val / {len(data.test_y)} test images)",
               show_params=False):
        return {}  # torchrun: rank 0 reports
    return evaluate(run, data=data)


def load_run_model(run: Run, which: str = "best") -> tuple[dict, ClassifyTask, torch.nn.Module, TransformConfig, Path]:
    cfg = run.config
    model, _, path = load_model(run, which)
    task = ClassifyTask(num_classes=cfg["data"]["num_classes"], **cfg["task_options"])
    tc = TransformConfig(**cfg["transform"])
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return cfg, task, model, tc, path


def evaluate(run: Run, data: images.ImageData | None = None, data_name: str | None = None,
             data_dir: str | None = None, quiet: bool = False, device: str = "auto") -> dict:
    """Test loss/accuracy, per-class report, confusion matrix of the best checkpoint; report.json and
    PNGs in the run directory. data_name/data_dir evaluate the run's model on other data."""
    cfg, task, model, tc, path = load_run_model(run)
    if data is None:
        saved = {k: cfg["data"][k] for k in ("name", "data_dir", "val_fraction", "grayscale")}
        saved["skip_bad_images"] = cfg["data"].get("skip_bad_images", False)  # absent in older runs
        if data_name:
            saved.update(name=data_name, data_dir=data_dir)
        elif data_dir:
            saved.update(data_dir=data_dir)
        data = prepare_data(DataConfig(**saved), tc.img_size, cfg["train"]["seed"], splits=("test",))
    check_classes(data, cfg)
    dev = pick_device(device)
    model = model.to(dev)
    t0 = time.perf_counter()
    out = predict_batches(model, task, data.test_x, ImageTransform(tc, train=False), dev, cfg["train"]["precision"],
                          cfg["train"].get("eval_batch_size", 256))
    seconds = time.perf_counter() - t0
    y_true, y_pred = task.targets(data.test_y).numpy(), task.predictions(out).numpy()
    names = task.label_names(cfg["data"]["classes"])
    figs = metrics.classification_figures(y_true, y_pred, names)
    losses = task.per_sample_loss(out, data.test_y)
    report = {"run": str(run.path), "checkpoint": str(path), "data": data.name, "test_images": len(y_true),
              "loss": losses.mean().item(), "accuracy": figs["accuracy"], "eval_images_per_s": len(y_true) / seconds,
              "per_class": figs["per_class"], "confusion_matrix": figs["confusion_matrix"], "classes": names}
    if task.loss == "mse":
        report["mae"] = (out[:, 0] - data.test_y.float()).abs().mean().item()
    atomic_write_json(run.path / "report.json", report)
    _plots(run, report, data, losses, y_pred, names, task)
    if not quiet:
        print(f"\ntest loss = {report['loss']:.4f} | test accuracy = {100 * report['accuracy']:.2f}% "
              f"({len(y_true)} images, {report['eval_images_per_s']:.0f} images/s)\n")
        print(figs["report_text"])
        print(metrics.format_confusion(figs["confusion_matrix"], names))
        print(f"\nreport: {run.path / 'report.json'}; plots: confusion_matrix.png, learning_curves.png, worst_test_images.png")
    return report


def _plots(run: Run, report: dict, data: images.ImageData, losses: torch.Tensor, y_pred: np.ndarray,
           names: list[str], task: ClassifyTask) -> None:
    plots.plot_confusion(report["confusion_matrix"], names, run.path / "confusion_matrix.png",
                         f"Confusion matrix — test accuracy {100 * report['accuracy']:.2f}%")
    plots.plot_learning_curves(run.metrics(), run.path / "learning_curves.png")
    worst = losses.argsort(descending=True)[:24].tolist()
    y_true = task.targets(data.test_y)
    titles = [f"true {names[y_true[i]][:10]}\npred {names[y_pred[i]][:10]}" for i in worst]
    colors = ["crimson" if y_pred[i] != y_true[i] else "black" for i in worst]
    plots.plot_image_grid(data.test_x[worst].numpy(), titles, run.path / "worst_test_images.png",
                          "Test images with the highest loss (red: misclassified)", colors=colors)


def predict(run: Run, paths: list[str], top_k: int = 3, device: str = "auto") -> list[dict]:
    """Any image file, any size or colour mode -> top-k classes, preprocessed exactly like the test data."""
    cfg, task, model, tc, _ = load_run_model(run)
    c, h, w = cfg["data"]["native_size"]
    mode = "L" if c == 1 else "RGB"
    x = torch.from_numpy(np.stack([images.decode_image(Path(p), h, mode) for p in paths]))
    if cfg["data"].get("grayscale") and c == 3:
        x = _grayscale(x)
    dev = pick_device(device)
    out = predict_batches(model.to(dev), task, x, ImageTransform(tc, train=False), dev, "fp32")
    probs = task.probabilities(out)
    names = task.label_names(cfg["data"]["classes"])
    k = min(top_k, probs.shape[1])
    results = []
    for p, row in zip(paths, probs):
        top = row.topk(k)
        results.append({"image": p, "top": [{"class": names[i], "index": i, "probability": float(v)}
                                            for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    return results


def summary(model: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[list[tuple[str, str, tuple, int]], int]:
    """Per leaf layer: (name, type, output shape, parameters); and the total parameter count."""
    rows: list[tuple[str, str, tuple, int]] = []
    hooks = []
    for name, m in model.named_modules():
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: rows.append(
                    (name, type(mod).__name__, tuple(out.shape), sum(p.numel() for p in mod.parameters(recurse=False))))))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return rows, sum(p.numel() for p in model.parameters())

