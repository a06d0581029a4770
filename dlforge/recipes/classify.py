"""Image classification: images -> batched transforms -> cnn / mlp -> report (accuracy, per-class report,
confusion matrix, worst test images); the Classifier handle predicts any image, file or array.

Everything is rebuilt from the run directory's config.json, so evaluation and prediction need nothing but
the run. A dataset given in memory is kept in the run directory (data.safetensors).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlforge.data import arrays, images
from dlforge.data.imagecache import to_gray
from dlforge.data.loader import BatchLoader
from dlforge.data.transforms import ImageTransform, TransformConfig, resize
from dlforge.errors import DlforgeError
from dlforge.evaluate import metrics, plots
from dlforge.recipes.base import Handle, Recipe
from dlforge.runs import RunConfig, atomic_write_json
from dlforge.train.tasks import ClassifyTask
from dlforge.train.trainer import TrainConfig, autocast, check_field_types, is_int


# The moving average of the weights that new classifier runs validate and load (--ema-decay; 0: none). Training
# is unchanged. Its decay min(d, (1 + n) / (10 + n)) averages about the last tenth of a run of a few thousand
# steps (the reference recipe's 5 epochs), the last ~1/(1 - d) steps of a longer one, and generalises better than
# the last step's weights: see the README's "Quality of the reference recipe". Runs made before it have none.
EMA_DECAY = 0.999


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    grayscale: bool = False     # RGB datasets: convert to gray first (the reference does this for every dataset)
    img_size: int = 48          # the reference's size
    channels_last: bool = True  # NHWC tensors: 1.4x faster CNN evaluation on CPU
    skip_bad_images: bool = False  # leave out undecodable image files (counted) instead of refusing them all

    def __post_init__(self) -> None:
        check_field_types(self)  # from Python, a str for a number was a TypeError from a comparison
        if self.name not in images.DATASETS:
            raise DlforgeError(f"--data: unknown dataset {self.name!r}; expected one of: {', '.join(images.DATASETS)}")
        if not 0 <= self.val_fraction < 1:
            raise DlforgeError(f"--val-fraction: expected 0 <= f < 1, got {self.val_fraction}")
        if self.name == "digits" and self.data_dir:  # was ignored, and kept in config.json as if it had been read
            raise DlforgeError("--data-dir: the digits dataset is bundled with scikit-learn; it takes no --data-dir")
        if not 1 <= self.img_size <= 1024:
            raise DlforgeError(f"--img-size: expected 1..1024 pixels, got {self.img_size}")
        if self.data_dir:  # absolute, so that the run evaluates and resumes from any folder (a relative one did not)
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())


def prepare_data(dc: DataConfig, seed: int, splits: tuple[str, ...] = images.SPLITS) -> images.ImageData:
    """Load (only `splits`), carve the validation split, and (with --grayscale) turn RGB images gray."""
    data = images.load_dataset(dc.name, dc.data_dir, dc.img_size, dc.skip_bad_images, splits)
    n = len(data.train_y)
    data = images.split_validation(data, dc.val_fraction, seed)
    if "train" in splits and not len(data.train_y):  # before: "trained" 0 steps, and wrote a report of a random model
        where = f"--data-dir {dc.data_dir}" if dc.data_dir else f"--data {dc.name}"
        raise DlforgeError(f"{where}: no images left to train on ({n} after the test split, "
                           f"{n - len(data.train_y)} of them for validation by --val-fraction {dc.val_fraction}); "
                           f"give more images or a smaller --val-fraction")
    if dc.grayscale and data.channels == 3:
        data.train_x, data.test_x = to_gray(data.train_x), to_gray(data.test_x)
        data.val_x = None if data.val_x is None else to_gray(data.val_x)
        data.mean, data.std = (sum(data.mean) / 3,), (sum(data.std) / 3,)
    return data


def predict_batches(model: torch.nn.Module, task: ClassifyTask, x: torch.Tensor, tf: ImageTransform,
                    device: torch.device, precision: str, batch_size: int = 256) -> torch.Tensor:
    """Raw outputs for uint8 images x, in batches, eval mode."""
    model.eval()
    outs = []
    with torch.inference_mode(), autocast(precision, device):
        for i in range(0, len(x), batch_size):
            outs.append(model(tf(x[i:i + batch_size]).to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, task.out_features)


class ClassifyRecipe(Recipe):
    task = "classify"
    DataConfig = DataConfig
    default_data = "digits"
    data_options = ("data_dir", "val_fraction", "grayscale", "img_size", "channels_last", "skip_bad_images")
    model_options = {"hidden": "hidden", "activation": "activation"}
    task_options = {"loss": "loss", "positive_class": "positive_class", "ema_decay": "ema_decay"}

    def data_config(self, model: str, data: Any, options: dict, out: Path) -> DataConfig:
        if data is None or isinstance(data, (str, Path)):
            return super().data_config(model, data, options, out)
        path = arrays.write(Path(out) / arrays.FILE, data)  # in memory: kept in the run directory
        return DataConfig(name="arrays", data_dir=str(path.resolve()), **options)

    def prepare(self, dc: DataConfig, seed: int, artifacts: Any = None) -> images.ImageData:
        return prepare_data(dc, seed)

    def facts(self, data: images.ImageData, dc: DataConfig) -> dict:
        tc = TransformConfig(img_size=dc.img_size, channels=3, mean=data.mean, std=data.std,
                             channels_last=dc.channels_last)  # gray is repeated to 3 channels, as in the reference
        return {"num_classes": len(data.classes), "classes": data.classes, "native_size": list(data.train_x.shape[1:]),
                "transform": tc.to_dict()}

    def check_task_options(self, options: dict) -> None:
        if "positive_class" in options and options.get("loss") != "bce":  # was ignored without a word
            raise DlforgeError("--positive-class: applies to --loss bce only (one class against the rest)")
        ClassifyTask(num_classes=10 ** 6, **options)

    def full_task_options(self, options: dict) -> dict:
        return {"loss": "cross-entropy", "positive_class": 0, "ema_decay": EMA_DECAY, **options}

    def model_kwargs(self, data: images.ImageData, dc: DataConfig, overrides: dict, task_options: dict) -> dict:
        task = ClassifyTask(num_classes=len(data.classes), **task_options)  # checks --positive-class too
        return {"in_channels": 3, "img_size": dc.img_size, "num_classes": task.out_features, **overrides}

    def make_task(self, cfg: RunConfig, model: torch.nn.Module) -> ClassifyTask:
        return ClassifyTask(num_classes=cfg.facts["num_classes"], **cfg.task_options)

    def ready_model(self, model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if cfg.facts["transform"]["channels_last"] else model

    def loader(self, cfg: RunConfig, data: images.ImageData, tcfg: TrainConfig, task: ClassifyTask) -> BatchLoader:
        check_classes(data, cfg)
        return BatchLoader(data.train_x, data.train_y, tcfg.batch_size, shuffle=True, seed=tcfg.seed,
                           transform=ImageTransform(TransformConfig(**cfg.facts["transform"]), train=True))

    def validator(self, cfg: RunConfig, data: images.ImageData, task: ClassifyTask, tcfg: TrainConfig):
        if data.val_x is None:
            return None
        tf = ImageTransform(TransformConfig(**cfg.facts["transform"]), train=False)

        def evaluate(model: torch.nn.Module) -> dict:
            dev = next(model.parameters()).device
            with task.averaged(model):
                out = predict_batches(model, task, data.val_x, tf, dev, tcfg.precision, tcfg.eval_batch_size)
            acc = (task.predictions(out) == task.targets(data.val_y)).float().mean().item()
            return {"loss": task.per_sample_loss(out, data.val_y).mean().item(), "accuracy": acc}
        return evaluate

    def describe(self, cfg: RunConfig, data: images.ImageData, loader: BatchLoader, dc: DataConfig) -> str:
        return (f"{data.name} ({len(data.train_y)} train / {0 if data.val_y is None else len(data.val_y)} val / "
                f"{len(data.test_y)} test images, {len(data.classes)} classes)")

    def after_training(self, handle: "Classifier", data: images.ImageData) -> dict:
        return handle.evaluate(quiet=False, _data=data)


def check_classes(data: images.ImageData, cfg: RunConfig) -> None:
    if len(data.classes) != cfg.facts["num_classes"]:
        raise DlforgeError(f"--data {data.name}: the data has {len(data.classes)} classes, but the run's model "
                           f"predicts {cfg.facts['num_classes']}")


class Classifier(Handle):
    """A trained image classifier: predict(images) and evaluate()."""

    @property
    def task(self) -> ClassifyTask:
        return ClassifyTask(num_classes=self.config.facts["num_classes"], **self.config.task_options)

    @property
    def classes(self) -> list[str]:
        """The names of what the model predicts (bce: 'not X' / 'X')."""
        return self.task.label_names(self.config.facts["classes"])

    def _transform(self) -> ImageTransform:
        return ImageTransform(TransformConfig(**self.config.facts["transform"]), train=False)

    def _is_batch(self, items: Any) -> bool:
        """An array or tensor of several images: (N, C, H, W) / (N, H, W, C), or (N, H, W) gray — for a gray
        dataset at its own size (the form dlforge.train takes), else when no axis at either end is a channel
        count (a (3, H, W) or (H, W, 3) array is one RGB image, an (H, W, 4) one RGBA image)."""
        if not isinstance(items, (torch.Tensor, np.ndarray)):
            return False
        c, h, w = self.config.facts["native_size"]
        shape = tuple(items.shape)
        return len(shape) == 4 or len(shape) == 3 and (c == 1 and shape[1:] == (h, w) or
                                                       shape[0] not in (1, 3) and shape[-1] not in (1, 3, 4))

    def as_batch(self, items: Any) -> torch.Tensor:
        """Image files, PIL images, arrays or tensors (one or a batch) -> uint8 (N, C, H, W) at the dataset's
        own size and channels, before the test transform."""
        c, h, _ = self.config.facts["native_size"]
        mode = "L" if c == 1 else "RGB"
        if self._is_batch(items):
            items = list(items)
        elif not isinstance(items, (list, tuple)):
            items = [items]
        if not items:
            raise DlforgeError("images: give at least one image")
        rows = [_one_image(it, h, mode) for it in items]
        x = torch.stack([r if r.shape[0] == c else (to_gray(r[None])[0] if c == 1 else r.expand(3, -1, -1))
                         for r in rows])
        if self.config.data.get("grayscale") and c == 3:
            x = to_gray(x)
        return x

    def predict(self, images_: Any, top_k: int = 3) -> list[dict]:
        """Any image (a file of any size or colour mode, a PIL image, an array or tensor), one or a batch (a list,
        or an array of images: see _is_batch) ->
        [{"image", "top": [{"class", "index", "probability"}]}], preprocessed exactly like the test data."""
        if not is_int(top_k) or top_k < 1:  # 2.5 or "3" was a TypeError
            raise DlforgeError(f"--top-k: expected an integer, at least 1 (at most {len(self.classes)} classes), got "
                               f"{top_k!r}")
        batch = images_ if isinstance(images_, (list, tuple)) or self._is_batch(images_) else [images_]
        results = self.top_classes(self.probabilities(self.as_batch(batch)), top_k)
        for j, r in enumerate(results):
            item = batch[j] if isinstance(batch, (list, tuple)) else j
            r["image"] = str(item) if isinstance(item, (str, Path)) else j
        return results

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) images at the dataset's size (as_batch) -> (N, classes) probabilities; one forward
        pass per 256 images (the server batches concurrent requests into one call)."""
        out = predict_batches(self.model, self.task, x, self._transform(), self.device, "fp32")
        return self.task.probabilities(out)

    def top_classes(self, probs: torch.Tensor, top_k: int = 3) -> list[dict]:
        """(N, classes) probabilities -> [{"image": j, "top": [{"class", "index", "probability"}]}], best first."""
        names, k = self.classes, min(top_k, probs.shape[1])
        results = []
        for j, row in enumerate(probs):
            top = row.topk(k)
            results.append({"image": j, "top": [{"class": names[i], "index": i, "probability": round(float(v), 6)}
                                                for v, i in zip(top.values.tolist(), top.indices.tolist())]})
        return results

    @torch.inference_mode()
    def feature_maps(self, image: Any, limit: int = 16) -> dict:
        """What the first convolution sees in one image: its first `limit` output channels after the ReLU, each
        scaled to [0, 1] on its own -> {"layer", "maps": float (limit, H', W')}. A model without a convolution
        (an mlp) is an error that says so."""
        conv = next(((n, m) for n, m in self.model.named_modules() if isinstance(m, torch.nn.Conv2d)), None)
        if conv is None:
            raise DlforgeError(f"feature maps: {self.config.model} has no convolution")
        seen: list[torch.Tensor] = []
        hook = conv[1].register_forward_hook(lambda mod, inp, out: seen.append(out[0, :limit].float().relu().cpu()))
        try:
            x = self.as_batch([image])
            self.model(self._transform()(x).to(self.device))
        finally:
            hook.remove()
        maps = seen[0]                                                          # (limit, H', W')
        lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
        return {"layer": conv[0], "maps": (maps - lo) / (hi - lo).clamp_min(1e-8)}

    def evaluate(self, data: str | None = None, data_dir: str | None = None, quiet: bool = True,
                 _data: images.ImageData | None = None) -> dict:
        """Test loss/accuracy, per-class report and confusion matrix of the best checkpoint; report.json and
        plots in the run directory. On other data (data= another dataset with the same classes, or
        data_dir= other files) the report goes to RUN/eval-<data>/, never over the run's own."""
        self.check_current()
        cfg, task = self.config, self.task
        dest = self.path
        if _data is None:
            own = {k: cfg.data[k] for k in ("name", "data_dir", "val_fraction", "grayscale", "img_size", "channels_last")}
            own["skip_bad_images"] = cfg.data.get("skip_bad_images", False)
            other = {**own, **({"name": data} if data else {}), **({"data_dir": data_dir} if data_dir else {})}
            if data and not data_dir and data != own["name"]:
                other["data_dir"] = None
            dc = DataConfig(**other)  # data_dir made absolute: `--data-dir .` was RUN/eval-/, and "other data"
            _data = prepare_data(dc, cfg.facts.get("data_seed", cfg.train["seed"]), ("test",))
            if (dc.name, dc.data_dir) != (own["name"], own["data_dir"] and DataConfig(**own).data_dir):
                check_classes(_data, cfg)
                self._check_same_classes(_data)
                dest = self.path / f"eval-{Path(dc.data_dir).name if data_dir else dc.name}"
        check_classes(_data, cfg)
        t0 = time.perf_counter()
        out = predict_batches(self.model, task, _data.test_x, self._transform(), self.device, cfg.train["precision"],
                              cfg.train.get("eval_batch_size", 256))
        seconds = time.perf_counter() - t0
        y_true, y_pred = task.targets(_data.test_y).numpy(), task.predictions(out).numpy()
        names = self.classes
        figs = metrics.classification_figures(y_true, y_pred, names)
        losses = task.per_sample_loss(out, _data.test_y)
        report = {"run": str(self.path), "checkpoint": str(self.checkpoint), "data": _data.name,
                  "data_source": _data.source, "test_images": len(y_true), "loss": losses.mean().item(),
                  "accuracy": figs["accuracy"], "eval_images_per_s": len(y_true) / max(seconds, 1e-9),
                  "per_class": figs["per_class"], "confusion_matrix": figs["confusion_matrix"], "classes": names}
        if task.loss == "mse":
            report["mae"] = (out[:, 0] - _data.test_y.float()).abs().mean().item()
        path = self.report_path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, report)
        written = self._plots(dest, report, _data, losses, y_pred, names)
        if not quiet:
            print(f"\ntest loss = {report['loss']:.4f} | test accuracy = {100 * report['accuracy']:.2f}% "
                  f"({len(y_true)} images, {report['eval_images_per_s']:.0f} images/s)\n")
            print(figs["report_text"])
            print(metrics.format_confusion(figs["confusion_matrix"], names))
            print(f"\nreport: {path}; plots: {', '.join(written)}")
        return report

    def _check_same_classes(self, data: images.ImageData) -> None:
        own = self.config.facts["classes"]
        if list(data.classes) != list(own):
            show = lambda c: ", ".join(map(str, c[:4])) + (", …" if len(c) > 4 else "")  # noqa: E731
            raise DlforgeError(f"--data {data.name}: its classes ({show(data.classes)}) are not the run's "
                               f"({show(own)}); a classifier is evaluated on data of its own classes only")

    def _plots(self, dest: Path, report: dict, data: images.ImageData, losses: torch.Tensor, y_pred: np.ndarray,
               names: list[str]) -> list[str]:
        """-> the names of the files written (learning curves only when there are metrics to draw)."""
        written = []
        plots.plot_confusion(report["confusion_matrix"], names, dest / "confusion_matrix.png",
                             f"Confusion matrix — test accuracy {100 * report['accuracy']:.2f}%")
        written.append("confusion_matrix.png")
        records = self.run.metrics()
        if dest == self.path and records and plots.plot_learning_curves(records, dest / "learning_curves.png"):
            written.append("learning_curves.png")
        worst = losses.argsort(descending=True)[:24].tolist()
        y_true = self.task.targets(data.test_y)
        titles = [f"true {names[y_true[i]][:10]}\npred {names[y_pred[i]][:10]}" for i in worst]
        colors = ["crimson" if y_pred[i] != y_true[i] else "black" for i in worst]
        plots.plot_image_grid(data.test_x[worst].numpy(), titles, dest / "worst_test_images.png",
                              "Test images with the highest loss (red: misclassified)", colors=colors)
        return written + ["worst_test_images.png"]


def _one_image(item: Any, size: int, mode: str) -> torch.Tensor:
    """One image -> uint8 (C, size, size) in `mode`'s channels (arrays keep theirs; the caller converts)."""
    if item is None:
        raise DlforgeError("image: expected an image file, a PIL image or an array, got None")
    if isinstance(item, (str, Path)):
        return torch.from_numpy(images.decode_image(Path(item), size, mode).copy())
    if hasattr(item, "convert") and hasattr(item, "resize"):  # a PIL image (PIL is imported only if used)
        from PIL import Image
        a = np.asarray(images.as_mode(item, mode, "image").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        return torch.from_numpy((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).copy())
    x = arrays.as_uint8_images(np.asarray(item)[None] if not isinstance(item, torch.Tensor) else item[None], "image")
    return resize(x.float(), size).round().clamp(0, 255).to(torch.uint8)[0] if x.shape[-2:] != (size, size) else x[0]


def summary(model: torch.nn.Module, input_shape: tuple[int, ...] | None
            ) -> tuple[list[tuple[str, str, tuple | None, int]], int]:
    """Per leaf layer: (name, type, output shape, parameters); and the total parameter count. Without an
    input_shape, no forward pass: the leaf layers in order of definition, with no shapes. A parameter shared
    by two layers (a GPT's head tied to its embedding) counts once, at its first layer: the second's type reads
    "Linear (tied)", so that the rows add up to the total."""
    owner = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owner.setdefault(id(p), name)

    def row(name: str, m: torch.nn.Module, shape: tuple | None) -> tuple[str, str, tuple | None, int]:
        ps = list(m.parameters(recurse=False))
        own = [p for p in ps if owner[id(p)] == name]
        return name, type(m).__name__ + (" (tied)" if len(own) < len(ps) else ""), shape, sum(p.numel() for p in own)

    leaves = [(name, m) for name, m in model.named_modules() if name and not list(m.children())]
    if input_shape is None:
        return [row(name, m, None) for name, m in leaves], sum(p.numel() for p in model.parameters())
    rows: list[tuple[str, str, tuple | None, int]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: rows.append(row(name, mod, tuple(out.shape))))
             for name, m in leaves]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return rows, sum(p.numel() for p in model.parameters())


RECIPE = ClassifyRecipe()
ClassifyRecipe.handle = Classifier
