"""Text-to-image diffusion: images + captions -> caption tokenizer -> batches -> text-conditioned UNet ->
DenoiseTask (ε-prediction, condition dropout, EMA) with sample grids as a callback; the Diffuser handle
samples (DDPM / DDIM, classifier-free guidance) and evaluates (prompt accuracy and Fréchet / kernel
distances with a dlforge classifier); `noise` shows the forward process on an image.

The run directory holds config.json, captions.json (the caption tokenizer), checkpoints/{best,last}.safetensors
(weights, optimiser and the EMA as task.ema.*), metrics.jsonl, samples/step-N.png, samples.png, report.json and
learning_curves.png. Images with captions given in memory are kept in the run directory (captions.csv, images/).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.data import captions as C
from dlforge.data import images
from dlforge.data.imagecache import take, to_gray
from dlforge.diffusion import pipeline as P
from dlforge.diffusion.conditioning import Conditioner, external_encoder
from dlforge.diffusion.schedulers import DDPMScheduler, make_betas, make_scheduler
from dlforge.errors import DlforgeError
from dlforge.evaluate import plots
from dlforge.recipes.base import Handle, Recipe
from dlforge.runs import Run, RunConfig, atomic_write_bytes, atomic_write_json
from dlforge.train import checkpoint as ckpt
from dlforge.train.callbacks import Callback
from dlforge.train.tasks import DenoiseTask
from dlforge.train.trainer import TrainConfig, check_field_types, check_seed, is_int, is_number

VAL_IMAGES = 1000     # validation loss on this many held-out images, with fixed t and ε
GRID_PER_PROMPT = 4   # sample grids during training: every class prompt (at most 10) × 4


@dataclass
class DiffusionDataConfig:
    name: str = "fashion-mnist"     # a labelled dataset (dlforge data list) or a captions CSV (image_path,caption)
    data_dir: str | None = None
    img_size: int | None = None     # default: 28 for the MNIST family, 16 for digits, 32 for others
    val_fraction: float = 0.1
    text_encoder: str = "own"       # own: a Transformer trained jointly; else a local sentence-transformers folder
    skip_bad_images: bool = False   # leave out undecodable image files (counted) instead of refusing them all

    def __post_init__(self) -> None:
        check_field_types(self)  # from Python, a str for a number was a TypeError from a comparison
        if self.is_csv:
            self.name = str(Path(self.name).expanduser().resolve())
        elif self.name not in images.DATASETS:
            raise DlforgeError(f"--data: unknown dataset {self.name!r}; expected one of: {', '.join(images.DATASETS)} "
                               f"or a captions CSV file (image_path,caption)")
        if self.img_size is None:
            self.img_size = {"digits": 16, "mnist": 28, "fashion-mnist": 28}.get(self.name, 32)
        if not 4 <= self.img_size <= 256:
            raise DlforgeError(f"--img-size: expected 4..256 pixels, got {self.img_size}")
        if not 0 < self.val_fraction < 0.5:
            raise DlforgeError(f"--val-fraction: expected 0 < f < 0.5, got {self.val_fraction}")
        if self.text_encoder != "own":
            external_encoder(self.text_encoder, check_only=True)

    @property
    def is_csv(self) -> bool:
        return self.name.lower().endswith(".csv")


@dataclass
class DiffusionData:
    tok: C.CaptionTokenizer
    table: C.CaptionTable             # every training caption, by owner (class, or CSV row)
    train_x: torch.Tensor             # uint8 (N, C, H, W)
    train_owner: torch.Tensor
    val_x: torch.Tensor
    val_owner: torch.Tensor
    classes: list[str] | None = None  # labelled data only
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)  # one per class (or a few CSV captions): sample grids
    cond_fn: "Conditioner | None" = None             # captions -> the denoiser's condition


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, int(round(n * fraction)))
    return perm[k:], perm[:k]


def prepare(dc: DiffusionDataConfig, seed: int, tok: C.CaptionTokenizer | None = None) -> DiffusionData:
    """Images (uint8), owners (class or row), the caption table and the tokenizer (fitted unless given)."""
    if dc.is_csv:
        x, caps = C.read_captions_images(dc.name, dc.img_size, dc.skip_bad_images)
        per_owner, owner, classes, test = [[c] for c in caps], torch.arange(len(caps)), None, (None, None)
        prompts = list(dict.fromkeys(caps))[:10]  # the first 10 distinct captions
    else:
        d = images.load_dataset(dc.name, dc.data_dir, dc.img_size, dc.skip_bad_images)
        if d.channels != 1:
            d.train_x, d.test_x = to_gray(d.train_x), to_gray(d.test_x)
        x, owner, classes, test = d.train_x, d.train_y, d.classes, (d.test_x, d.test_y)
        per_owner, prompts = C.class_captions(dc.name, classes), C.canonical_prompts(dc.name, classes)
    tok = tok or C.CaptionTokenizer.fit([c for caps in per_owner for c in caps])
    train, val = _split(len(x), dc.val_fraction, seed)
    return DiffusionData(tok, C.CaptionTable(tok, per_owner), take(x, train), owner[train], take(x, val), owner[val], classes,
                         *test, prompts)


# ---------------------------------------------------------------- sampling
def make_sampler(cfg: RunConfig, sampler: str = "ddim", steps: int | None = None) -> DDPMScheduler:
    """The sampler for a run's noise schedule: ddim (default 50 steps) or ddpm (default all T steps)."""
    T, sched = cfg.task_options["num_train_timesteps"], cfg.task_options["beta_schedule"]
    s = make_scheduler(sampler, T, sched)
    s.set_timesteps(steps if steps is not None else (min(50, T) if sampler == "ddim" else T))
    return s


def generate(model: torch.nn.Module, cfg: RunConfig, cond: torch.Tensor, null: torch.Tensor, sampler: str = "ddim",
             steps: int | None = None, guidance: float = 3.0, eta: float | None = None, seed: int = 0,
             batch_size: int = 64, frames: int = 0, callback=None) -> tuple[torch.Tensor, list]:
    """len(cond) images as uint8 (N, C, S, S), in batches (64: with guidance a forward pass of 128, the
    fastest size measured on 2 CPU cores); the trajectory of the first batch. callback(i) after each step
    (an exception it raises stops the sampling)."""
    for opt, v, ok, want in (("--steps", steps, steps is None or is_int(steps), "an integer"),
                             ("--guidance", guidance, is_number(guidance), "a number"),
                             ("--eta", eta, eta is None or is_number(eta), "a number")):
        if not ok:  # from Python, steps="5" or guidance="x" was a TypeError
            raise DlforgeError(f"{opt}: expected {want}, got {v!r}")
    if eta is not None and not 0 <= eta <= 1:
        raise DlforgeError(f"--eta: expected a number in [0, 1] (0: deterministic DDIM), got {eta}")
    P.check_guidance(guidance)
    sched = make_sampler(cfg, sampler, steps)
    k = cfg.model_kwargs
    g = torch.Generator().manual_seed(check_seed(seed))
    dev = next(model.parameters()).device
    out, traj = [], []
    for i in range(0, len(cond), batch_size):
        c, u = cond[i:i + batch_size].to(dev), null[i:i + batch_size].to(dev)
        shape = (len(c), k.get("in_channels", 1), k["img_size"], k["img_size"])
        x, tr = P.sample(model, sched, c, u, shape, guidance, eta, g, frames if i == 0 else 0, callback)
        out.append(P.to_uint8(x))
        traj = traj or tr
    return torch.cat(out), traj


def sample_grid(model, cfg: RunConfig, cond_fn: Conditioner, prompts: list[str], path: Path, title: str, n: int = 4,
                steps: int = 25, guidance: float = 3.0, seed: int = 0) -> Path:
    """n images for each prompt, one row per prompt."""
    cond = cond_fn.encode([p for p in prompts for _ in range(n)])
    steps = min(steps, cfg.task_options["num_train_timesteps"])
    imgs, _ = generate(model, cfg, cond, cond_fn.null(len(cond), cond), "ddim", steps, guidance, seed=seed)
    titles = [plots.shorten(p, 18) if j == 0 else "" for p in prompts for j in range(n)]
    return plots.plot_image_grid(imgs.numpy(), titles, path, title, cols=n)


def trajectory_strip(traj: list, path: Path, title: str, rows: int = 4) -> Path:
    """Frames [(t, x_t (B, C, H, W))] -> one row per image (at most `rows`), one column per frame."""
    k = min(rows, traj[0][1].shape[0])
    imgs = np.stack([P.to_uint8(x[i]).numpy() for i in range(k) for _, x in traj])
    titles = [f"t={t}" if i == 0 else "" for i in range(k) for t, _ in traj]
    return plots.plot_image_grid(imgs, titles, path, title, cols=len(traj))


def noise(image: str, out: str, frames: int = 8, timesteps: int = 1000, beta_schedule: str = "linear",
          size: int = 64, seed: int = 0) -> dict:
    """The forward process on a real image: x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε at `frames` evenly spaced t."""
    if not 2 <= frames <= 32:
        raise DlforgeError(f"--frames: expected 2..32, got {frames}")
    if not 4 <= size <= 512:
        raise DlforgeError(f"--size: expected 4..512 pixels, got {size}")
    if frames > timesteps:  # the evenly spaced t repeated: --timesteps 5 --frames 8 drew t = 1, 2 and 3 twice
        raise DlforgeError(f"--frames {frames}: more than the {timesteps} --timesteps; at most one frame per step")
    if plots.figure_path(out).resolve() == Path(image).resolve():  # the strip replaced the photo it was made from
        raise DlforgeError(f"--out {out}: the input image itself; give the strip another file")
    mode = images.image_mode(Path(image))  # the file's own: grey stays one channel
    x0 = C.to_unit(torch.from_numpy(images.decode_image(Path(image), size, mode).copy())[None], size)
    abar = torch.cumprod(1 - make_betas(beta_schedule, timesteps), 0)
    ts = torch.linspace(0, timesteps - 1, frames).round().long().tolist()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))    # one ε for every frame
    xs = [abar[t].sqrt().float() * x0 + (1 - abar[t]).sqrt().float() * eps for t in ts]
    imgs = P.to_uint8(torch.cat(xs)).numpy()
    titles = [f"t={t}\n√ᾱ={abar[t].sqrt():.2f}" for t in ts]
    plots.plot_image_grid(imgs, titles, Path(out), f"forward process q(x_t | x_0), {beta_schedule} schedule, "
                                                   f"T={timesteps}", cols=frames)
    return {"image": image, "out": out, "timesteps": ts, "sqrt_alphas_cumprod": [float(abar[t].sqrt()) for t in ts]}


# ---------------------------------------------------------------- evaluation
def _classifier(path: str, classes: list[str], device: torch.device):
    """A dlforge classification run on the same classes -> (classify(uint8 images) -> (logits, features))."""
    from dlforge.data.transforms import ImageTransform, TransformConfig
    from dlforge.evaluate.frechet import PenultimateFeatures
    from dlforge.recipes.classify import Classifier
    clf = Classifier(Run.open(path, "classify"), device=str(device))
    task = clf.task
    if clf.config.facts["num_classes"] != len(classes) or task.loss != "cross-entropy":
        raise DlforgeError(f"--classifier {path}: expected a cross-entropy classifier of the same "
                           f"{len(classes)} classes, got {clf.config.facts['num_classes']} ({task.loss})")
    model = clf.model
    tf, hook = ImageTransform(TransformConfig(**clf.config.facts["transform"]), train=False), PenultimateFeatures(model)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = [], []
        for i in range(0, len(x), 500):
            logits.append(model(tf(x[i:i + 500]).to(device)).float().cpu())
            feats.append(hook.value.float().cpu())
        return torch.cat(logits), torch.cat(feats)
    return run


def eval_prompts(dc: DiffusionDataConfig, classes: list[str], n: int) -> tuple[list[str], torch.Tensor]:
    """n prompts cycling through the classes and, for each class, through its caption templates."""
    caps = C.class_captions(Path(dc.name).name, classes)
    labels = torch.arange(n) % len(classes)
    return [caps[c][(i // len(classes)) % len(caps[c])] for i, c in enumerate(labels.tolist())], labels


def _quality(classify_fn, fake: torch.Tensor, labels: torch.Tensor, data: DiffusionData, dc: DiffusionDataConfig,
             n: int, seed: int, classes: list[str]) -> dict:
    from dlforge.evaluate.frechet import frechet_distance, kernel_distance
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(len(data.test_x), generator=g)[:n]
    test, test_y = data.test_x[pick], data.test_y[pick]
    held = data.val_x[torch.randperm(len(data.val_x), generator=g)[:n]]
    same = lambda x: P.to_uint8(C.to_unit(x, dc.img_size))  # noqa: E731  real images at the sampled size
    noise = P.to_uint8(torch.randn(fake.shape, generator=g).clamp(-1, 1))
    (fl, ff), (tl, ft), (_, fh), (_, fn) = (classify_fn(x) for x in (fake, same(test), same(held), noise))
    pred = fl.argmax(1)
    (kid, kid_std), (kid_real, _), (kid_noise, _) = (kernel_distance(f, ft, seed=seed) for f in (ff, fh, fn))
    per_class = {classes[c]: float((pred[labels == c] == c).float().mean()) for c in range(len(classes))}
    return {"prompt_accuracy": float((pred == labels).float().mean()), "per_class_accuracy": per_class,
            "frechet": frechet_distance(ff, ft), "frechet_real": frechet_distance(fh, ft),
            "frechet_noise": frechet_distance(fn, ft), "kid": kid, "kid_std": kid_std, "kid_real": kid_real,
            "kid_noise": kid_noise, "real_images": len(test), "held_out_images": len(held),
            "classifier_accuracy_real": float((tl.argmax(1) == test_y).float().mean())}


class SampleGrid(Callback):
    """At each validation: a grid of every class prompt (at most 10) × 4, drawn with the EMA weights
    (DDIM 25 steps, guidance 3), as samples/step-N.png and samples.png."""

    def __init__(self, cfg: RunConfig, task: DenoiseTask, cond_fn: Conditioner, prompts: list[str], run: Run):
        self.cfg, self.task, self.cond_fn, self.prompts, self.run = cfg, task, cond_fn, prompts[:10], run

    def on_evaluate(self, trainer, record: dict) -> None:
        if not trainer.world.main:
            return
        with self.task.averaged(trainer.model):
            path = sample_grid(trainer.model, self.cfg, self.cond_fn, self.prompts,
                               self.run.path / "samples" / f"step-{trainer.step:06d}.png",
                               f"step {trainer.step}: EMA weights, DDIM 25 steps, guidance 3")
            atomic_write_bytes(self.run.path / "samples.png", path.read_bytes())


class DenoiseRecipe(Recipe):
    task = "denoise"
    DataConfig = DiffusionDataConfig
    default_data = "fashion-mnist"
    data_options = ("data_dir", "img_size", "val_fraction", "text_encoder", "skip_bad_images")
    model_options = {"width": "ch", "heads": "n_head", "layers": "num_res_blocks", "dropout": "dropout"}
    task_options = {"timesteps": "num_train_timesteps", "beta_schedule": "beta_schedule", "cond_drop": "cond_drop",
                    "ema_decay": "ema_decay", "snr_gamma": "snr_gamma"}
    train_defaults = {"eval_every": 500}  # validation loss and a sample grid every 500 steps
    artifacts = ("captions.json",)

    def data_label(self, data, options: dict) -> str:
        return super().data_label(data if isinstance(data, (str, Path)) or data is None else None, options) \
            if data is None or isinstance(data, (str, Path)) else "memory"

    def data_config(self, model: str, data, options: dict, out: Path) -> DiffusionDataConfig:
        """data: a labelled dataset name, a captions CSV (image_path,caption), or (image, caption) pairs in
        memory (image: a file, a PIL image or an array), written to the run directory as captions.csv and
        images/."""
        if isinstance(data, (list, tuple)) and data and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in data):
            data = C.write_captions(Path(out), data)
        return DiffusionDataConfig(**({"name": str(data)} if data is not None else {}), **options)

    def prepare(self, dc: DiffusionDataConfig, seed: int, artifacts=None) -> DiffusionData:
        data = prepare(dc, seed, artifacts)
        data.cond_fn = Conditioner(data.tok, None if dc.text_encoder == "own" else dc.text_encoder)
        if data.cond_fn.st is not None:  # the frozen encoder's states replace the token ids, once per caption
            data.table.ids = data.cond_fn.encode(data.table.texts)
        return data

    def facts(self, data: DiffusionData, dc: DiffusionDataConfig) -> dict:
        return {"classes": data.classes, "train_images": len(data.train_x), "val_images": len(data.val_x),
                "vocab_size": data.tok.vocab_size}

    def check_task_options(self, options: dict) -> None:
        DenoiseTask(**options)  # before the data is loaded

    def full_task_options(self, options: dict) -> dict:
        return {k: v for k, v in DenoiseTask(**options).to_dict().items() if k != "name"}

    def model_kwargs(self, data: DiffusionData, dc: DiffusionDataConfig, overrides: dict, task_options: dict) -> dict:
        kwargs = {"vocab_size": data.tok.vocab_size, "img_size": dc.img_size, "max_len": data.tok.max_len,
                  "in_channels": 1, **overrides}
        if data.cond_fn.st is not None:  # newer sentence-transformers renamed the method
            st = data.cond_fn.st
            kwargs["context_dim"] = (getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()
        return kwargs

    def save_artifacts(self, run: Run, data: DiffusionData) -> None:
        data.tok.save(run.path / "captions.json")

    def load_artifacts(self, run: Run) -> C.CaptionTokenizer:
        return C.CaptionTokenizer.load(run.path / "captions.json")

    def ready_model(self, model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
        """Channels-last memory, for training and sampling: the unet-fast training step 1.065x faster at batch 256
        (benchmarks.peak_ceiling --ab-switch channels-last), sampling 1.1-1.5x."""
        return model.to(memory_format=torch.channels_last)

    def make_task(self, cfg: RunConfig, model: torch.nn.Module) -> DenoiseTask:
        return DenoiseTask(**cfg.task_options)

    def loader(self, cfg: RunConfig, data: DiffusionData, tcfg: TrainConfig, task: DenoiseTask) -> C.CaptionBatches:
        return C.CaptionBatches(data.train_x, data.train_owner, data.table, tcfg.batch_size, cfg.data["img_size"],
                                tcfg.seed)

    def validator(self, cfg: RunConfig, data: DiffusionData, task: DenoiseTask, tcfg: TrainConfig):
        """The plain ε MSE (no Min-SNR weight: comparable across recipes) of the EMA weights on fixed held-out
        images, t and ε."""
        g = torch.Generator().manual_seed(1234)
        n = min(VAL_IMAGES, len(data.val_x))
        x0 = C.to_unit(data.val_x[:n], cfg.data["img_size"])
        cond = data.table.sample(data.val_owner[:n], g)
        if data.cond_fn.st is not None:
            cond = data.cond_fn.encode([data.table.texts[int(data.table.start[o])] for o in data.val_owner[:n]])
        t = torch.randint(0, task.num_train_timesteps, (n,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = task.scheduler.add_noise(x0, eps, t)

        def evaluate(model: torch.nn.Module) -> dict:
            with task.averaged(model):
                model.eval()
                dev = next(model.parameters()).device
                with torch.inference_mode():
                    se = sum(((model(x_t[i:i + 250].to(dev), t[i:i + 250].to(dev), cond[i:i + 250].to(dev)).float()
                               .cpu() - eps[i:i + 250]) ** 2).sum().item() for i in range(0, n, 250))
            return {"loss": se / x0.numel()}
        return evaluate

    def callbacks(self, cfg: RunConfig, data: DiffusionData, task: DenoiseTask, run: Run) -> list[Callback]:
        return [SampleGrid(cfg, task, data.cond_fn, data.prompts, run)]

    def describe(self, cfg: RunConfig, data: DiffusionData, loader, dc: DiffusionDataConfig) -> str:
        return (f"{Path(dc.name).name} at {dc.img_size}×{dc.img_size} ({len(data.train_x):,} train / {len(data.val_x):,} "
                f"val images, {data.tok.vocab_size} caption words; {len(loader)} batches of {cfg.train['batch_size']} per "
                f"epoch)")

    def after_training(self, handle: "Diffuser", data: DiffusionData) -> dict:
        """report.json (best validation loss, time), learning curves; the sample grid of the last validation."""
        run = handle.run
        records = run.metrics()
        vals = [r["val_loss"] for r in records if "val_loss" in r]
        report = {"run": str(run.path), "best_val_loss": min(vals) if vals else None,
                  "steps": max((r.get("step", 0) for r in records), default=0),
                  "train_seconds": max((r.get("time", 0.0) for r in records), default=0.0)}
        atomic_write_json(run.path / "report.json", report)
        if records:
            plots.plot_lm_curves(records, run.path / "learning_curves.png", ylabel="ε MSE")
        said = [f"best validation loss {report['best_val_loss']:.4f}" if vals else "no validation yet (raise "
                f"--max-steps past --eval-every {handle.config.train['eval_every']})"]
        if (run.path / "samples.png").is_file():
            said.append(f"samples: {run.path / 'samples.png'}")
        print(f"dlforge: {'; '.join(said)}; sample with: dlforge sample {run.path} --prompt \"...\"", file=sys.stderr)
        return report


class Diffuser(Handle):
    """A trained text-to-image model: sample(prompts), sample_grid(...), evaluate(classifier=...). The EMA
    weights are loaded (ema=False: the raw ones)."""

    def __init__(self, run, device: str = "auto", which: str = "best", ema: bool = True):
        super().__init__(run, device, which, ema)
        text_encoder = self.config.data.get("text_encoder", "own")
        self.cond_fn = Conditioner(self.artifacts, None if text_encoder == "own" else text_encoder)

    def generate(self, prompts: str | list[str], n: int = 1, sampler: str = "ddim", steps: int | None = None,
                 guidance: float = 3.0, eta: float | None = None, seed: int = 0,
                 frames: int = 0, callback=None) -> tuple[torch.Tensor, list]:
        """n images per prompt as uint8 (N, C, H, W), prompt by prompt; and the reverse process of the first
        images at `frames` steps [(t, x_t)]."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not is_int(n) or not 1 <= n <= 4096:  # 1.5 was a TypeError
            raise DlforgeError(f"--n: expected 1..4096 images per prompt, got {n!r}")
        if not prompts:
            raise DlforgeError("--prompt: give at least one prompt")
        other = next((p for p in prompts if not isinstance(p, str)), "")
        if not isinstance(other, str):  # None was an AttributeError
            raise DlforgeError(f"--prompt: expected text, got {type(other).__name__}")
        cond = self.cond_fn.encode(list(dict.fromkeys(prompts)), warn=True)  # each prompt checked once
        index = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        cond = cond[[index[p] for p in prompts for _ in range(n)]]
        return generate(self.model, self.config, cond, self.cond_fn.null(len(cond), cond), sampler, steps, guidance,
                        eta, seed, frames=frames, callback=callback)

    def sample(self, prompts: str | list[str], n: int = 1, sampler: str = "ddim", steps: int | None = None,
               guidance: float = 3.0, eta: float | None = None, seed: int = 0, trajectory: bool = False,
               frames: int = 10, callback=None):
        """-> PIL images, n per prompt (with trajectory=True also the reverse process at `frames` steps, noise
        first: [(t, [PIL images])]). callback(i) after each denoising step; an exception it raises stops."""
        from PIL import Image
        if trajectory and not 2 <= frames <= 1000:
            raise DlforgeError(f"frames: expected 2..1000, got {frames}")
        imgs, traj = self.generate(prompts, n, sampler, steps, guidance, eta, seed, frames if trajectory else 0,
                                   callback)
        pil = lambda x: [Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))  # noqa: E731
                         for a in x.numpy()]
        out = pil(imgs)
        return (out, [(t, pil(P.to_uint8(x))) for t, x in traj]) if trajectory else out

    def sample_grid(self, prompts: list[str], n: int = 16, sampler: str = "ddim", steps: int | None = None,
                    guidance: float = 3.0, eta: float | None = None, seed: int = 0, out: str | Path | None = None,
                    trajectory: str | Path | None = None) -> dict:
        """n images per prompt -> a grid PNG (one row block per prompt); trajectory: the reverse process of the
        first images, step by step from noise to image, to this PNG."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out_path = plots.figure_path(out or self.path / "sample.png")  # before sampling, not after
        if trajectory:
            trajectory = plots.figure_path(trajectory)
            if trajectory.resolve() == out_path.resolve():  # the strip was written over the grid
                raise DlforgeError(f"--trajectory {trajectory}: the same file as --out; give each its own")
        t0 = time.perf_counter()
        imgs, traj = self.generate(prompts, n, sampler, steps, guidance, eta, seed, frames=10 if trajectory else 0)
        seconds = time.perf_counter() - t0
        cols = min(n, 8)
        titles = [(plots.shorten(p, 18) if j % cols == 0 else "") for p in prompts for j in range(n)]
        what = f"{sampler.upper()} {len(make_sampler(self.config, sampler, steps).timesteps)} steps, guidance {guidance:g}"
        plots.plot_image_grid(imgs.numpy(), titles, out_path, what, cols=cols)
        result = {"prompts": prompts, "n": n, "images": len(imgs), "sampler": sampler, "guidance": guidance,
                  "seconds": seconds, "out": str(out_path)}
        if trajectory:
            result["trajectory"] = str(trajectory_strip(traj, trajectory, f"reverse process, {what}: "
                                                                                  f"{plots.shorten(prompts[0], 40)!r}"))
        return result

    def _training_figures(self) -> dict:
        """What after_training wrote to report.json and an evaluation does not measure again."""
        try:
            old = json.loads((self.path / "report.json").read_text())
        except (OSError, ValueError):
            return {}
        return {k: old[k] for k in ("best_val_loss", "train_seconds") if isinstance(old, dict) and k in old}

    def evaluate(self, classifier: str | None = None, n: int = 1000, sampler: str = "ddim", steps: int | None = None,
                 guidance: float = 3.0, eta: float | None = None, seed: int = 0, quiet: bool = True,
                 batch_size: int = 64) -> dict:
        """Sample quality of the EMA weights: prompt accuracy (a dlforge classifier labels the generated images),
        the Fréchet and kernel distances of its penultimate features between n generated and n real test images,
        with the same figures for n held-out real images (floor) and for noise (ceiling); sampling speed."""
        if not 10 <= n <= 20000:
            raise DlforgeError(f"--n: expected 10..20000 evaluation images, got {n}")
        self.check_current()
        cfg, model, cond_fn = self.config, self.model, self.cond_fn
        dc = DiffusionDataConfig(**cfg.data)
        report = {"run": str(self.path), "checkpoint": str(self.checkpoint), "sampler": sampler, "guidance": guidance,
                  "eta": eta, "steps": len(make_sampler(cfg, sampler, steps).timesteps), "images": n, "seed": seed}
        data = prepare(dc, cfg.facts.get("data_seed", 0), cond_fn.tok)
        if dc.is_csv or not classifier:
            if not quiet:
                print("dlforge: note: prompt accuracy and Fréchet distance need a labelled dataset and --classifier "
                      "RUN (a dlforge cnn trained on it); writing a sample grid only (report.json unchanged)",
                      file=sys.stderr)
            sample_grid(model, cfg, cond_fn, data.prompts[:10], self.path / "eval_samples.png", "evaluation samples")
            return report  # nothing measured: report.json keeps the training's figures and any earlier evaluation's
        classify_fn = _classifier(classifier, data.classes, self.device)
        prompts, labels = eval_prompts(dc, data.classes, n)
        cond = cond_fn.encode(prompts)
        t0 = time.perf_counter()
        fake, _ = generate(model, cfg, cond, cond_fn.null(n, cond), sampler, steps, guidance, eta, seed, batch_size)
        seconds = time.perf_counter() - t0
        report.update(_quality(classify_fn, fake, labels, data, dc, n, seed, data.classes))
        report.update({"sampling_seconds": seconds, "images_per_s": n / seconds, "classifier": classifier,
                       "train_steps": ckpt.read_meta(Path(self.checkpoint)).get("step")})
        show = torch.cat([torch.nonzero(labels == c)[:4, 0] for c in range(len(data.classes))])
        plots.plot_image_grid(fake[show].numpy(), [plots.shorten(prompts[i], 18) for i in show.tolist()],
                              self.path / "eval_samples.png", f"{sampler.upper()} {report['steps']} steps, guidance "
                              f"{guidance:g}: prompt accuracy {100 * report['prompt_accuracy']:.1f}%", cols=8)
        report = {**self._training_figures(), **report}  # an evaluation replaced the training's, and lost them
        path = self.report_path()
        atomic_write_json(path, report)
        if not quiet:
            print(f"{sampler.upper()} {report['steps']} steps, guidance {guidance:g}, {n} images: prompt accuracy "
                  f"{100 * report['prompt_accuracy']:.2f}% | Fréchet distance {report['frechet']:.3f} (real held-out "
                  f"{report['frechet_real']:.3f}, noise {report['frechet_noise']:.3f}) | kernel distance "
                  f"{report['kid']:.4f} (real {report['kid_real']:.4f}, noise {report['kid_noise']:.4f}) | "
                  f"{report['images_per_s']:.1f} images/s\nreport: {path}; samples: eval_samples.png")
        return report


RECIPE = DenoiseRecipe()
DenoiseRecipe.handle = Diffuser
