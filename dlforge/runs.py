"""A run directory: config.json, metrics.jsonl, checkpoints/, report.json and plots — enough to
rebuild the model, its data and its tokenizer from the directory alone."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dlforge.errors import DlforgeError

RUN_FORMAT = 2  # 1: each task laid out its own config.json (read through RunConfig.from_dict's migration)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, e: OSError) -> DlforgeError:
    """The one line for a file that cannot be written: the file, and why (a parent that is a file, not a
    folder, is named as such: mkdir says only 'File exists')."""
    why = e.strerror or type(e).__name__
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and Path(e.filename).is_file():
        why = f"{e.filename} is a file, not a folder"
    return DlforgeError(f"{path}: cannot write ({why})")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush, fsync, rename: never a torn file.
    An OSError becomes write_error's one line; the temporary file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the file gets the user's umask like any other
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def atomic_duplicate(src: Path, dst: Path) -> None:
    """Make dst hold exactly src's bytes, atomically: a hard link (no copy) where the filesystem allows.
    A later atomic replace of src leaves dst on the old inode, untouched."""
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FAT filesystems)
            atomic_write_bytes(Path(tmp), src.read_bytes())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


@dataclass
class RunConfig:
    """Everything that rebuilds a run: the task (recipe) and its options, the model's name and keyword
    arguments, the data config, the training config, and the facts the data told when the run began
    (classes, vocabulary sizes, checksums, the seed that split it). Written and read here only."""
    task: str
    model: str
    model_kwargs: dict
    data: dict
    train: dict
    task_options: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    format: int = RUN_FORMAT

    def meta(self) -> dict:
        """What every checkpoint of the run carries about it (the layout format-1 checkpoints have)."""
        return {"model": {"name": self.model, "kwargs": self.model_kwargs},
                "task": {"name": self.task, **self.task_options}}

    def to_dict(self, run_dir: Path | None = None) -> dict:
        """run_dir: the data the run keeps in its own directory (data in memory: corpus.txt, data.safetensors,
        pairs.tsv, captions.csv) is written as "{run}/NAME", relative to it, so that the run can be moved or
        copied (its absolute path read the old place's files, or none). Not "./NAME": runs made before dlforge
        stored --data-dir absolute may hold a user's "./A", relative to where they were trained."""
        data = self.data
        if run_dir is not None:
            home = Path(run_dir).resolve()
            data = {k: f"{RUN_DIR}/{Path(v).relative_to(home).as_posix()}" if k in DATA_PATHS and isinstance(v, str)
                    and Path(v).is_absolute() and Path(v).is_relative_to(home) else v for k, v in data.items()}
        return {"format": RUN_FORMAT, "task": self.task, "model": {"name": self.model, "kwargs": self.model_kwargs},
                "data": data, "task_options": self.task_options, "train": self.train, "facts": self.facts}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json", run_dir: Path | None = None) -> "RunConfig":
        """run_dir: where "{run}/NAME" data paths (to_dict) are, made absolute again."""
        try:
            if d.get("format", 1) == 1:
                d = _from_format_1(d)
            data = d["data"]
            if run_dir is not None and isinstance(data, dict):
                home = Path(run_dir).resolve()
                data = {k: str(home / v[len(RUN_DIR) + 1:]) if k in DATA_PATHS and isinstance(v, str)
                        and v.startswith(RUN_DIR + "/") else v for k, v in data.items()}
            return cls(task=d["task"], model=d["model"]["name"], model_kwargs=d["model"]["kwargs"], data=data,
                       train=d["train"], task_options=d.get("task_options", {}), facts=d.get("facts", {}))
        except (KeyError, TypeError, AttributeError) as e:
            raise DlforgeError(f"{where}: not a dlforge run config (missing {e})") from None


DATA_PATHS = ("name", "data_file", "data_dir")  # the data config's keys that may hold a path
RUN_DIR = "{run}"  # config.json's name for the run's own directory in those paths


def _from_format_1(d: dict) -> dict:
    """Format 1 (dlforge 0.1): classify kept its data config at the top of "data" and its task options
    under "task_options"; the other tasks kept theirs under "data"/"config" and "task", and the seed that
    split the data as "train_seed"."""
    task = d.get("task", {}).get("name", "classify")
    data, train = dict(d["data"]), d["train"]
    if task == "classify":
        tf = d["transform"]
        config = {k: data.pop(k) for k in ("name", "data_dir", "val_fraction", "grayscale") if k in data}
        config.update(img_size=tf["img_size"], channels_last=tf.get("channels_last", True))
        return {"task": task, "model": d["model"], "data": config, "task_options": d.get("task_options", {}),
                "train": train, "facts": {**data, "transform": tf, "data_seed": train["seed"]}}
    config = data.pop("config")
    if "train_per_direction" in config:  # seq2seq's --train-pairs, renamed to match its option
        config["train_pairs"] = config.pop("train_per_direction")
    options = {k: v for k, v in d.get("task", {}).items() if k != "name"}
    return {"task": task, "model": d["model"], "data": config, "task_options": options, "train": train,
            "facts": {**data, "data_seed": d.get("train_seed", train["seed"])}}


@contextmanager
def training_lock(path: Path) -> Iterator[None]:
    """Hold RUN/.lock (an exclusive flock, released by the OS however the process ends) while a run trains:
    a second `dlforge train` into the same run directory is refused at once. Before, two commands started
    together both trained into one directory, and it ended with one model's checkpoints and the other's config.
    Under torchrun, rank 0 holds it for every process. A folder made here for a run that never wrote its
    config.json (bad input, an unknown run) is removed again, as it was never made."""
    if os.environ.get("RANK", "0").strip() != "0":  # another rank (a bad RANK is refused by the trainer)
        yield
        return
    made = [p for p in (path, *path.parents) if not p.exists()]  # the folders made here, deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise DlforgeError(f"--out {path}: cannot write the run directory ({e.strerror})") from None
    held = False  # a process refused here must not remove the lock and folder of the one that holds them (two
    try:          # started together both saw no folder; the loser removed the winner's .lock, and its folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DlforgeError(f"--out {path}: another dlforge process is training this run now; wait for it to "
                               f"end (then --resume), or choose another --out") from None
        except OSError:  # a file system without locks: train unguarded, as before
            pass
        held = True
        yield
    finally:
        if held and made and not (path / "config.json").exists():
            (path / ".lock").unlink(missing_ok=True)
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:  # not empty: what the run wrote before it failed stays
                    break
        os.close(fd)  # after the clean-up: the lock is ours until the folder is gone


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "last") -> Path:
        return self.checkpoints / f"{which}.safetensors"

    @classmethod
    def create(cls, path: str | Path, config: RunConfig) -> "Run":
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run.path / "config.json", config.to_dict(run.path))
        except OSError as e:
            raise DlforgeError(f"--out {path}: cannot write the run directory ({e.strerror})") from None
        return run

    @classmethod
    def open(cls, path: str | Path, task: str | None = None) -> "Run":
        run = cls(path)
        cfg_path = run.path / "config.json"
        if not cfg_path.is_file():
            raise DlforgeError(f"{path}: not a dlforge run directory (no config.json)")
        cfg = run.config
        if task and cfg.task != task:
            raise DlforgeError(f"{path}: this run is a {cfg.task!r} run, expected {task!r}")
        return run

    @property
    def config(self) -> RunConfig:
        p = self.path / "config.json"
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DlforgeError(f"{p}: unreadable run config ({e})") from None
        if not isinstance(d, dict):
            raise DlforgeError(f"{p}: not a dlforge run config (expected a JSON object)")
        return RunConfig.from_dict(d, str(p), self.path)

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (line-buffered; a crash loses at most that line)."""
        try:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise write_error(self.path / "metrics.jsonl", e) from None

    def trained_without_last(self) -> str | None:
        """What shows that a run whose checkpoints/last.safetensors is missing had trained (it was lost, not
        never written), or None. The first metrics line is logged just before the first checkpoint, so one
        line alone can be a kill in between; two cannot."""
        if self.checkpoint("best").is_file():
            return f"{self.checkpoint('best')} is there"
        if (self.path / "report.json").is_file():
            return "its report.json is there"
        records = self.metrics()
        if len(records) >= 2:
            return f"metrics.jsonl records {len(records)} evaluations, the last at step {records[-1].get('step')}"
        return None

    def metrics(self) -> list[dict]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash
        return out

    def truncate_metrics(self, step: int, records: int | None = None) -> int:
        """On resume, drop the records logged after the checkpoint being resumed from: keep its first
        `records` (the count the checkpoint saw), else (older checkpoints) those up to its step. -> kept."""
        kept = self.metrics()
        kept = kept[:records] if records is not None else [r for r in kept if r.get("step", 0) <= step]
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())
        return len(kept)
