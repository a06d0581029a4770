"""A run directory: config.json, metrics.jsonl, checkpoints/, report.json and plots — enough to
rebuild the model, its data and its tokenizer from the directory alone."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dlforge.errors import DlforgeError

RUN_FORMAT = 1


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


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "last") -> Path:
        return self.checkpoints / f"{which}.safetensors"

    @classmethod
    def create(cls, path: str | Path, config: dict) -> "Run":
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run.path / "config.json", {"format": RUN_FORMAT, **config})
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
        if task and cfg.get("task", {}).get("name") != task:
            raise DlforgeError(f"{path}: this run is a {cfg.get('task', {}).get('name')!r} run, expected {task!r}")
        return run

    @property
    def config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DlforgeError(f"{self.path / 'config.json'}: unreadable run config ({e})") from None

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (line-buffered; a crash loses at most that line)."""
        try:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise write_error(self.path / "metrics.jsonl", e) from None

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
