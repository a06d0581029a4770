"""The recipe contract, and the one generic path that trains, resumes and loads a run of any task.

A recipe is the whole difference between two families: its data config, how it prepares data, the model
keyword arguments the data decides (vocabulary size, classes, image size), its task, validation and
callbacks, the files it keeps beside the checkpoints (tokenizers, caption vocabulary), its evaluation
and its handle (predict / generate / translate / sample). Everything else is here, once.
"""
from __future__ import annotations

import inspect
import math
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import torch

from dlforge.errors import DlforgeError
from dlforge.registry import canonical, create_model, get_entry
from dlforge.runs import Run, RunConfig, training_lock
from dlforge.train import checkpoint as ckpt
from dlforge.train.callbacks import Callback
from dlforge.train.tasks import Task
from dlforge.train.trainer import Trainer, TrainConfig, check_applies, is_int, is_number, pick_device

TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
BUDGET = ("epochs", "max_steps", "max_time")  # on --resume: given together or kept together


NEGATIVE_FLAGS = {"channels_last": "--no-channels-last", "tie_weights": "--no-tie-weights", "bias": "--no-bias",
                  "progress": "--no-progress"}  # options whose flag turns them off


def flag(option: str) -> str:
    """block_size -> --block-size: how the command line spells an option."""
    return NEGATIVE_FLAGS.get(option, "--" + option.replace("_", "-"))


def option_argv(options: dict) -> list[str]:
    """Options as the command line takes them: {"block_size": 64, "lr": 0.002, "bias": False} ->
    ['--block-size', '64', '--lr', '0.002', '--no-bias'] (a switch is its flag alone)."""
    argv = []
    for k, v in options.items():
        argv += [flag(k)] if isinstance(v, bool) else [flag(k), f"{v:g}" if isinstance(v, float) else str(v)]
    return argv


class Handle:
    """A trained run, loaded once: `.model` (eval mode, on `.device`), `.config` (RunConfig), `.path`, and the
    family's methods. What `dlforge.load(path)` returns; the CLI, the server and the exporter all use it.
    Where the checkpoint keeps a moving average of the weights (task.ema.*: classifiers, language models,
    diffusion), the model holds it (ema=False: the raw weights)."""

    def __init__(self, run: Run | str | Path, device: str = "auto", which: str = "best", ema: bool = True):
        self.run = run if isinstance(run, Run) else Run.open(run)
        self.config: RunConfig = self.run.config
        self.recipe = recipe_for(self.config.task)
        self.device = pick_device(device)
        self.artifacts = self.recipe.load_artifacts(self.run)
        model, self.tensors, self.checkpoint, meta = load_model(self.run, which)
        averaged = {k[len("task.ema."):]: v for k, v in self.tensors.items() if k.startswith("task.ema.")}
        if ema and averaged:
            ckpt.restore_averaged(model, averaged, self.checkpoint)
        self.raw = bool(averaged) and not ema  # the raw weights of a run whose own are the averaged ones
        self.loaded_step = meta.get("step")  # what check_current compares the checkpoint's header with
        self.model = self.recipe.ready_model(model, self.config).to(self.device).eval()
        self.report: dict | None = None  # set by dlforge.train: the evaluation at the end of training

    @property
    def path(self) -> Path:
        return self.run.path

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"<{type(self).__name__} {self.config.model} ({n / 1e6:.2f}M parameters) at {self.path}>"

    def report_path(self, folder: Path | None = None, limit: int | None = None, split: str = "test") -> Path:
        """Where this handle's evaluation writes its report (report_path()); a handle of the raw weights
        (ema=False) reports beside the run's own: report-raw.json. Each evaluate has asked check_current first."""
        path = report_path(folder or self.path, limit, split)
        return path.with_name(path.name.replace("report", "report-raw", 1)) if self.raw else path

    def check_current(self) -> None:
        """The run is where this handle loaded it (a moved or deleted run got a new folder of plots at its old
        place), and its checkpoint the one loaded (a handle loaded before the run trained on wrote an older
        model's figures over the run's report, under the checkpoint's name): each family's evaluate asks first,
        before it reads the run's data or computes anything."""
        if not (self.path / "config.json").is_file():
            raise DlforgeError(f"{self.path}: no run there any more (moved or deleted since it was loaded); "
                               f"dlforge.load it from where it is now")
        now = (ckpt.read_meta(self.checkpoint) or {}).get("step")
        if now != self.loaded_step:
            raise DlforgeError(f"{self.checkpoint}: the run has trained on since this handle loaded it (step "
                               f"{self.loaded_step} then, {now} now); dlforge.load it again to evaluate it")

    def export(self, out: str | Path | None = None, format: str = "onnx", int8: bool = False) -> dict:
        """The run as ONNX graphs + model.json in `out` (default RUN/onnx), checked with ONNX Runtime."""
        from dlforge.export import export
        return export(self, out, format, int8)

    def evaluate(self, **options) -> dict:
        """The family's evaluation of the best checkpoint (report.json and plots in the run directory)."""
        raise NotImplementedError


class Recipe:
    """One task's recipe: override what the task needs (see each method)."""
    task: str = ""
    DataConfig: type = object
    handle: type = Handle
    data_options: tuple[str, ...] = ()       # options that fill the DataConfig's fields of the same names
    model_options: dict[str, str | tuple[str, ...]] = {}  # option -> model keyword argument(s) (--layers -> n_layer)
    task_options: dict[str, str] = {}        # option -> the task's field (--timesteps -> num_train_timesteps)
    train_defaults: dict = {}                # TrainConfig values this task prefers when not given
    artifacts: tuple[str, ...] = ()          # files beside the checkpoints (tokenizers, caption vocabulary)

    # ---------------------------------------------------------------- data
    def data_label(self, data: Any, options: dict) -> str:
        """The data's part of the default run directory name, runs/MODEL-DATA."""
        if isinstance(data, str) and (len(data) > 200 or any(c.isspace() for c in data)):
            return "text"  # text given in memory
        if isinstance(data, (str, Path)):
            return Path(str(data)).stem if os.sep in str(data) or "." in str(data) else str(data)
        if options.get("data_file"):
            return Path(options["data_file"]).stem
        return "memory" if data is not None else self.default_data

    default_data: str = "data"

    def data_config(self, model: str, data: Any, options: dict, out: Path):
        """The DataConfig for the API's `data` (a dataset name, a file, or data in memory, which is written
        into the run directory `out` so that the run rebuilds from its own files) and the data options."""
        if data is not None and not isinstance(data, (str, Path)):
            raise DlforgeError(f"data: expected a dataset name or a file for {self.task}, got {type(data).__name__}")
        return self.DataConfig(**({"name": str(data)} if data is not None else {}), **options)

    def prepare(self, dc, seed: int, artifacts: Any = None):
        """Load the data (artifacts: the tokenizers of a run being resumed, to encode exactly as before)."""
        raise NotImplementedError

    def facts(self, data, dc) -> dict:
        """What the data told, kept in the run config (classes, sizes, checksums)."""
        return {}

    def model_kwargs(self, data, dc, overrides: dict, task_options: dict) -> dict:
        """The model's keyword arguments: what the data decides (vocabulary, classes, sizes), then the options."""
        return dict(overrides)

    def save_artifacts(self, run: Run, data) -> None:
        pass

    def load_artifacts(self, run: Run) -> Any:
        return None

    def check_task_options(self, options: dict) -> None:
        """Refuse bad task options before any data is loaded (default: building the task checks them)."""

    def full_task_options(self, options: dict) -> dict:
        """The task options kept in the run config: those given, with the task's defaults."""
        return dict(options)

    # ---------------------------------------------------------------- training
    def make_task(self, cfg: RunConfig, model: torch.nn.Module) -> Task:
        raise NotImplementedError

    def ready_model(self, model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
        """A freshly created model made ready to run (e.g. channels-last memory)."""
        return model

    def loader(self, cfg: RunConfig, data, tcfg: TrainConfig, task: Task):
        raise NotImplementedError

    def validator(self, cfg: RunConfig, data, task: Task, tcfg: TrainConfig) -> Callable[[torch.nn.Module], dict] | None:
        """model -> validation figures ({"loss": ..., ...}: lower loss is better), or None without validation."""
        return None

    def callbacks(self, cfg: RunConfig, data, task: Task, run: Run) -> list[Callback]:
        return []

    def describe(self, cfg: RunConfig, data, loader, dc) -> str:
        """The banner's 'on what' part: the data, its sizes and the batches."""
        return ""

    def after_training(self, handle: Handle, data) -> dict:
        """The report at the end of training (default: the family's evaluation)."""
        return handle.evaluate(quiet=False)

    # ---------------------------------------------------------------- options
    def budget_options(self, model: str, options: dict) -> dict:
        """A new run's options, completed for its budget where the task sizes models by time (default: as given)."""
        return options

    def split_options(self, model: str, options: dict) -> tuple[dict, dict, dict, dict]:
        """-> (train, data, model kwargs, task) options. An option that does not apply to this model is an
        error that names it (before, `train cnn --layers 4` was silently ignored)."""
        train, data, model_kw, task = {}, {}, {}, {}
        accepted = _kwargs_of(model)
        for k, v in options.items():
            if k in TRAIN_OPTIONS:
                train[k] = v
            elif k in self.data_options:
                data[k] = v
            elif k in self.model_options and _takes(accepted, self.model_options[k]):
                if k in MODEL_RANGES and not MODEL_RANGES[k][0](v):  # was a ValueError or RuntimeError from torch
                    raise DlforgeError(f"{flag(k)}: expected {MODEL_RANGES[k][1]}, got {v!r}")
                for name in _names(self.model_options[k]):
                    model_kw[name] = v
            elif k in self.task_options:
                task[self.task_options[k]] = v
            else:
                raise DlforgeError(f"{flag(k)}: does not apply to {model} (task {self.task}); its own options are: "
                                   f"{', '.join(flag(o) for o in self.own_options(model))}")
        return train, data, model_kw, task

    def own_options(self, model: str) -> list[str]:
        accepted = _kwargs_of(model)
        return [*self.data_options, *(k for k, v in self.model_options.items() if _takes(accepted, v)),
                *self.task_options]


# the shared model options' ranges (each family's own limits, e.g. a width divisible by --heads, are the model's)
MODEL_RANGES = {"dropout": (lambda v: is_number(v) and 0 <= v < 1, "a probability in [0, 1)"),
                **{k: (lambda v: is_int(v) and v >= 1, "an integer, at least 1") for k in ("width", "layers", "heads")},
                # mlp: [-1] was torch's RuntimeError, [0] a layer of no units, "64" torch's words for another option
                "hidden": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(is_int(x) and x >= 1 for x in v),
                           "positive integers such as [256, 128]")}


def is_file(path, folders: bool = False) -> bool:
    """Path(path).is_file() (or, with folders, is_dir()) for any string: text given in memory may be too long
    to be a file name, or hold a NUL."""
    try:
        p = Path(path)
        return len(str(path)) < 4096 and "\n" not in str(path) and (p.is_file() or folders and p.is_dir())
    except (OSError, ValueError):
        return False


def _names(kwargs: str | tuple[str, ...]) -> tuple[str, ...]:
    return (kwargs,) if isinstance(kwargs, str) else kwargs


def _takes(accepted: set[str] | None, kwargs: str | tuple[str, ...]) -> bool:
    return accepted is None or all(k in accepted for k in _names(kwargs))


def _kwargs_of(model: str) -> set[str] | None:
    """The keyword arguments a registered model takes: its function's, and where it passes **kw on, those of
    the class it returns (its return annotation). None: any."""
    import typing
    fn = get_entry(model).fn
    names, open_ = set(), False
    for target in (fn, typing.get_type_hints(fn).get("return")):
        if target is None:
            return None
        params = inspect.signature(target).parameters.values()
        names |= {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        open_ = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        if not open_:
            return names
    return None


RECIPES: dict[str, str] = {"classify": "classify", "language-model": "language_model", "seq2seq": "seq2seq",
                           "denoise": "denoise", "speech": "transcribe"}


def recipe_for(task: str) -> Recipe:
    import importlib
    if task not in RECIPES:
        raise DlforgeError(f"unknown task {task!r}; expected one of: {', '.join(RECIPES)}")
    return importlib.import_module(f"dlforge.recipes.{RECIPES[task]}").RECIPE


def report_path(run_path: Path, limit: int | None = None, split: str = "test") -> Path:
    """report.json holds the run's own evaluation (the test split; the built-in numbers translator's end of
    training: 200 test numbers per direction); one a user asks of part of it (--limit N) or of the validation
    split is written beside it (report-limit50.json, report-val.json), never over it: a quick
    `eval --limit 50` replaced the full report."""
    parts = [p for p in ("val" if split == "val" else "", f"limit{limit}" if limit is not None else "") if p]
    return Path(run_path) / (f"report-{'-'.join(parts)}.json" if parts else "report.json")


def load_model(run: Run, which: str = "best") -> tuple[torch.nn.Module, dict[str, torch.Tensor], Path, dict]:
    """The run's model (name and keyword arguments from config.json) with the weights of checkpoint
    `which` (the last one where there is no such file). -> (model, every tensor of the checkpoint, path, its
    metadata)."""
    cfg = run.config
    if which not in ("best", "last"):  # any other name read the last checkpoint without a word
        raise DlforgeError(f"which: expected 'best' or 'last', got {which!r}")
    path = run.checkpoint(which) if run.checkpoint(which).is_file() else run.checkpoint("last")
    if not path.is_file() and (trained := run.trained_without_last()):  # said "stopped before its first one"
        raise DlforgeError(f"{path}: missing, but this run has trained ({trained}); restore {run.checkpoints}")
    if not path.is_file():
        raise DlforgeError(f"{run.path}: no checkpoint yet (the run stopped before its first one); "
                           f"continue it with: dlforge train {cfg.model} --out {run.path} --resume")
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("model", {}).get("name") != cfg.model:
        raise DlforgeError(f"{path}: holds model {meta.get('model', {}).get('name')!r}, the run says {cfg.model!r}")
    model = create_model(cfg.model, **cfg.model_kwargs)
    ckpt.restore_model(model, tensors, path)
    return model, tensors, path, meta


def out_dir(model: str, out: str | Path | None, resume: bool, data_label: str) -> Path:
    """--out, or runs/MODEL-DATA numbered so that an existing run is never overwritten."""
    if out:
        p = Path(out)
        if not resume and (p / "checkpoints" / "last.safetensors").is_file():
            raise DlforgeError(f"--out {p}: already holds a run; pass --resume to continue it or choose another --out")
        return p
    if not resume and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would number its own
        raise DlforgeError("--out: required under torchrun, so that every process writes the same run directory")
    base = Path("runs") / f"{model}-{data_label}"
    if resume:
        return base
    p, n = base, 1
    while p.exists():
        n += 1
        p = base.with_name(f"{base.name}-{n}")
    return p


def _check_callbacks(callbacks) -> list:
    """Callbacks, checked before anything is written: a bad one ([object()], "x") was an AttributeError at the
    first step, and left a run with a config and no checkpoint. None: none."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise DlforgeError(f"callbacks: expected a list of Callback objects (dlforge.train.callbacks), got "
                           f"{type(callbacks).__name__}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if isinstance(cb, type):  # its hooks are functions wanting `self`: a TypeError at the start of training
            raise DlforgeError(f"callbacks[{i}]: {cb.__name__} is a class; pass an instance, {cb.__name__}()")
        missing = [m for m in HOOKS if not callable(getattr(cb, m, None))]
        if missing:
            raise DlforgeError(f"callbacks[{i}]: expected a Callback (subclass dlforge.train.callbacks.Callback), got "
                               f"{type(cb).__name__}, which has no {missing[0]}()")
    return callbacks


HOOKS = tuple(n for n in vars(Callback) if n.startswith("on_"))  # what the trainer calls on each callback


def check_conflicts(recipe: Recipe, data: Any, options: dict) -> None:
    """Options that contradict each other, refused rather than one silently winning: --data with --data-file
    (the file was trained on), and --vocab-size with the char tokenizer (whose vocabulary is every character of
    the text, whatever the size given)."""
    if data is not None and options.get("data_file") is not None:
        given = data if isinstance(data, (str, Path)) else "…"
        raise DlforgeError(f"--data-file {options['data_file']}: --data {given} was given too; give the data once, as "
                           f"one or the other")
    if options.get("vocab_size") is None:
        return
    default = next((f.default for f in fields(recipe.DataConfig) if f.name == "tokenizer"), None)
    if options.get("tokenizer", default) == "char":
        raise DlforgeError(f"--vocab-size {options['vocab_size']}: sizes the bpe and word tokenizers; the char "
                           f"tokenizer{'' if 'tokenizer' in options else ' (the default here)'} takes every "
                           f"character of the text")


def _check_unchanged(recipe: Recipe, cfg: RunConfig, data: dict, model_kw: dict, task: dict, out: Path) -> None:
    """A resumed run keeps its data, model and task: options that would change them are refused, by the names
    the user gave them (width, not the model's d_model). A model option the run left to its model's default is
    compared with what that default built: gpt-tiny's own width is 64, and `--resume --width 64` changes nothing
    (before, it was refused as "made with d_model = None")."""
    names = {**{kw: opt for opt, kws in recipe.model_options.items() for kw in _names(kws)},
             **{kw: opt for opt, kw in recipe.task_options.items()}}
    saved = {**{k: cfg.data.get(k) for k in data}, **{k: cfg.task_options.get(k) for k in task}}
    given = {**{k: getattr(recipe.DataConfig(**{**cfg.data, k: v}), k) for k, v in data.items()}, **task}
    for k, v in model_kw.items():
        if k in cfg.model_kwargs:
            saved[k], given[k] = cfg.model_kwargs[k], v
        elif _builds_another_model(cfg, k, v):
            raise DlforgeError(f"--resume {out}: this run was made with {cfg.model}'s default {names.get(k, k)}, not "
                               f"{v!r}; a resumed run keeps its data, model and task (only the training options may "
                               f"change)")
    for k, v in given.items():
        if _norm(v) != _norm(saved[k]):
            raise DlforgeError(f"--resume {out}: this run was made with {names.get(k, k)} = {saved[k]!r}, not {v!r}; "
                               f"a resumed run keeps its data, model and task (only the training options may change)")


def _builds_another_model(cfg: RunConfig, name: str, value: Any) -> bool:
    """Does the run's model, built again with name=value, differ from the one it was made with: in its tensors'
    names and shapes, or in a module's settings (a dropout's p, attention's head count)?"""
    def anatomy(kwargs: dict) -> list:
        with torch.random.fork_rng():  # the caller's random state stays as it was
            m = create_model(cfg.model, **kwargs)
        return [[(n, type(x).__name__, sorted((a, v) for a, v in vars(x).items()
                                              if not a.startswith("_") and isinstance(v, (bool, int, float, str, tuple))))
                 for n, x in m.named_modules()], [(n, tuple(t.shape)) for n, t in m.state_dict().items()]]
    return anatomy(cfg.model_kwargs) != anatomy({**cfg.model_kwargs, name: value})


def _same_data(recipe: Recipe, model: str, data: Any, options: dict, cfg: RunConfig, out: Path) -> bool:
    """Is `data`, given again on resume, the run's own? Its DataConfig names the same dataset or file; data in
    memory is written as on the first run (into a scratch folder) and must match the run's copy byte for byte.
    (Before, only str(data) == the saved name passed: the same file or text in memory was refused.)"""
    import filecmp
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        dc = asdict(recipe.data_config(model, data, options, Path(tmp)))
        scratch = Path(tmp).resolve()
        for k in ("name", "data_file", "data_dir"):
            v = dc.get(k)
            if v is not None and Path(str(v)).resolve().is_relative_to(scratch):  # a copy of data in memory
                kept = [f for f in scratch.rglob("*") if f.is_file()]
                return bool(kept) and all((out / f.relative_to(scratch)).is_file() and
                                          filecmp.cmp(f, out / f.relative_to(scratch), shallow=False) for f in kept)
            if k != "data_dir" and v != cfg.data.get(k):
                return False
    return True


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def train(model: str, data: Any = None, *, out: str | Path | None = None, resume: bool = False,
          callbacks: list[Callback] | tuple = (), **options) -> Handle | None:
    """Train `model` (a registered name) on `data` into a run directory, or continue it (resume=True).
    options: the command line's, without dashes (epochs=3, lr=1e-3, block_size=64, ...).
    -> the run's handle with `.report` (None on a torchrun process other than rank 0)."""
    model = canonical(model)  # `dlforge train diffusion`: unet (config.json keeps the registered name)
    callbacks = _check_callbacks(callbacks)
    if not isinstance(resume, bool):  # "yes" (or "no") resumed
        raise DlforgeError(f"resume: expected True or False, got {resume!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):  # 5 was pathlib's TypeError
        raise DlforgeError(f"out: expected a run directory (str or Path), got {out!r}")
    recipe = recipe_for(get_entry(model).task)
    given = set(options)  # the user's, not the budget table's (check_applies)
    if not resume:  # a resumed run keeps the recipe it was made with
        options = recipe.budget_options(model, options)
    train_opts, data_opts, model_kw, task_opts = recipe.split_options(model, options)
    check_conflicts(recipe, data, data_opts)
    label = recipe.data_label(data, data_opts)
    out = out_dir(model, out, resume, label)
    with training_lock(out):  # one training process per run directory
        if resume:
            run = Run.open(out, recipe.task)
            cfg = run.config
            if cfg.model != model:
                raise DlforgeError(f"--resume {out}: this run trains {cfg.model!r}, not {model!r}")
            if data is not None and not _same_data(recipe, model, data, data_opts, cfg, out):
                given = repr(str(data)) if isinstance(data, (str, Path)) and len(str(data)) < 200 else "other data"
                raise DlforgeError(f"--resume {out}: this run was made with data = "
                                   f"{cfg.data.get('name') or cfg.data.get('data_file')!r}, not {given}; a resumed run "
                                   f"keeps its data, model and task")
            _check_unchanged(recipe, cfg, data_opts, model_kw, task_opts, out)
            saved = dict(cfg.train)
            old_budget = {k: saved.get(k) for k in BUDGET} if any(k in train_opts for k in BUDGET) else None
            if old_budget:  # a new budget replaces the whole old one
                saved.update({k: None for k in BUDGET})
            tcfg = TrainConfig(**{**saved, **train_opts})  # the run's recipe, and what this call changes
            cfg.train = asdict(tcfg)
            dc = recipe.DataConfig(**cfg.data)
            prepared = recipe.prepare(dc, cfg.facts.get("data_seed", tcfg.seed), recipe.load_artifacts(run))
            was, now = cfg.facts.get("sha256"), getattr(prepared, "sha256", None)
            if was and now and was != now:  # it resumed on other text or pairs without a word
                source = cfg.data.get("data_file") or cfg.data.get("name")  # the file, however it was given
                raise DlforgeError(f"--resume {out}: {source} has changed since the run began (its sha256 "
                                   f"differs); a resumed run reads the same data: restore it, or train a new run")
        else:
            tcfg, old_budget = TrainConfig(**{**recipe.train_defaults, **train_opts}), None
            dc = recipe.data_config(model, data, data_opts, out)
            recipe.check_task_options(task_opts)
            prepared = recipe.prepare(dc, tcfg.seed)
            cfg = RunConfig(task=recipe.task, model=model,
                            model_kwargs=recipe.model_kwargs(prepared, dc, model_kw, task_opts), data=asdict(dc),
                            train=asdict(tcfg), task_options=recipe.full_task_options(task_opts),
                            facts={**recipe.facts(prepared, dc), "data_seed": tcfg.seed})
            run = Run(out)  # written (config.json, tokenizers) once the model, loader and trainer are built
        check_applies(tcfg, given & set(train_opts))
        torch.manual_seed(tcfg.seed)
        net = recipe.ready_model(create_model(cfg.model, **cfg.model_kwargs), cfg)
        task = recipe.make_task(cfg, net)
        loader = recipe.loader(cfg, prepared, tcfg, task)
        trainer = Trainer(task, net, loader, tcfg, run, recipe.validator(cfg, prepared, task, tcfg), meta=cfg.meta(),
                          callbacks=[*recipe.callbacks(cfg, prepared, task, run), *callbacks])
        if not resume:  # before, a loader or model that refused the options (a --batch-size larger than the text
            # makes streams) left a run with a config and no checkpoint, and the next try went to runs/NAME-2
            Run.create(out, cfg)
            recipe.save_artifacts(run, prepared)
        if not fit(trainer, resume, out, cfg, recipe.describe(cfg, prepared, loader, dc), old_budget):
            return None  # torchrun: rank 0 reports
        handle = recipe.handle(run, device=tcfg.device)
        handle.report = recipe.after_training(handle, prepared)
        return handle


def fit(trainer: Trainer, resume: bool, out: Path, cfg: RunConfig, what: str, old_budget: dict | None = None
        ) -> bool:
    """Resume the trainer from its run's last checkpoint when asked, say what trains on what and what will
    stop it, train. -> whether this process reports (under torchrun only rank 0 does). A resumed run's
    config.json takes the changed options only once the checkpoint has taken them: a refused --resume (another
    --optimizer, ...) leaves the run as it was, resumable as before."""
    say = trainer.world.main  # under torchrun, rank 0 alone says it (every rank printed both lines)
    if resume:
        trainer.resume()
        if old_budget is not None:
            _check_budget_left(trainer, old_budget, out)
        Run.create(out, cfg)
        if say:
            print(f"dlforge: resuming {out} at epoch {trainer.epoch + 1}, step {trainer.step}", file=sys.stderr)
    params = sum(p.numel() for p in trainer.model.parameters())
    if say:
        print(f"dlforge: training {cfg.model} ({params / 1e6:.2f}M parameters) on {what} on {trainer.device}; "
              f"{_budget(trainer)}", file=sys.stderr)
    trainer.fit()
    return trainer.world.main


def _check_budget_left(trainer: Trainer, old: dict, out: Path) -> None:
    """A budget given to --resume counts from the run's start: one below what the run has already trained (and
    not its own) is refused, before config.json takes it. Before, `--resume --max-steps 10` on a run at step 20
    trained nothing and rewrote the run's budget to 10."""
    def refuse(option: str, done: str, more: str) -> None:
        raise DlforgeError(f"{option}: counts from the run's start, and {out} {done}; to train on, give more "
                           f"(e.g. {more})")
    cfg, step = trainer.cfg, trainer.step
    if cfg.max_steps is not None and cfg.max_steps < step and cfg.max_steps != old["max_steps"]:
        refuse(f"--max-steps {cfg.max_steps}", f"is already at step {step:,}", f"--max-steps {step + cfg.max_steps}")
    per_epoch = max(len(trainer.train), 1)  # in steps: a run part-way through an epoch has passed the one before
    if cfg.epochs is not None and cfg.epochs * per_epoch < step and cfg.epochs != old["epochs"]:
        done = step / per_epoch
        refuse(f"--epochs {cfg.epochs}", f"has already trained {done:.3g} epochs ({step:,} steps)",
               f"--epochs {math.ceil(done) + cfg.epochs}")
    if cfg.max_time is not None and cfg.max_time * 60 < trainer.elapsed and cfg.max_time != old["max_time"]:
        refuse(f"--max-time {cfg.max_time:g}", f"has already trained {trainer.elapsed / 60:.2f} minutes",
               f"--max-time {trainer.elapsed / 60 + cfg.max_time:.3g}")


def _budget(trainer: Trainer) -> str:
    """Which limit will stop the run: the banner says it, so that --max-steps is never silently capped."""
    cfg, per_epoch = trainer.cfg, len(trainer.train)
    limits = []
    if cfg.epochs is not None or cfg.max_steps is None and cfg.max_time is None:
        limits.append((trainer.epochs * per_epoch, f"{trainer.epochs} epochs of {per_epoch} steps"))
    if cfg.max_steps is not None:
        limits.append((cfg.max_steps, f"--max-steps {cfg.max_steps}"))
    steps = min(s for s, _ in limits) if limits else math.inf
    first = [w for s, w in limits if s == steps]
    clock = f"--max-time {cfg.max_time:g} min" if cfg.max_time is not None else None
    if not first:
        return f"stops at {clock}"
    stop = f"stops after step {steps:,} ({first[0]})"
    return stop + (f" or at {clock}, whichever comes first" if clock else "")
