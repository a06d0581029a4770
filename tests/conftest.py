"""Shared fixtures: tiny, seeded data; the real MNIST test set from ../shared when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
MNIST_DIR = SHARED / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's cache."""
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the real MNIST test set is not at {MNIST_DIR} (../shared is absent)")
    return MNIST_DIR


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    import gzip
    import struct
    head = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = head + array.astype(np.uint8).tobytes()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def tiny_idx_dir(tmp_path) -> Path:
    """A 4-file IDX dataset in the MNIST layout: 120 train, 40 test images of 12×12, 10 classes."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = np.arange(n) % 10
        imgs = (rng.random((n, 12, 12)) * 40).astype(np.uint8)
        for i, lab in enumerate(labels):  # class k lights up row k: learnable
            imgs[i, lab, :] = 255
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


@pytest.fixture
def one_thread():
    """Tiny models are many small kernels: with 2 threads on a busy 2-core machine, OpenMP's waiting
    threads make them up to 100x slower (measured: lstm-small 20 steps 0.19 s vs 33 s). One thread here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- README.md's Reliability table
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


class Reliability:
    """What the reliability tests tried and what came of it: the rows of README.md's Reliability table.
    Tests call `reliability.record(fault, outcome, cases=1)`; hypothesis tests call it once per example
    (derandomised, so the counts are the same on every run)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}          # fault -> {"outcomes": {outcome: cases}, "tests": [...]}
        self.expected: set[str] = set()          # node ids of the collected tests that record
        self.passed: set[str] = set()

    def add(self, test: str, fault: str, outcome: str, cases: int) -> None:
        row = self.rows.setdefault(fault, {"outcomes": {}, "tests": []})
        row["outcomes"][outcome] = row["outcomes"].get(outcome, 0) + cases
        if test not in row["tests"]:
            row["tests"].append(test)

    def table(self) -> str:
        lines = ["| fault or hostile input | cases | outcome | tested by |", "|---|---:|---|---|"]
        for fault, row in self.rows.items():
            outs = row["outcomes"]
            outcome = next(iter(outs)) if len(outs) == 1 else "; ".join(f"{n}: {o}" for o, n in outs.items())
            tests = ", ".join(f"`{t}`" for t in row["tests"])
            lines.append(f"| {fault} | {sum(outs.values()):,} | {outcome} | {tests} |")
        return "\n".join(lines)


RELIABILITY = Reliability()


class _Recorder:
    def __init__(self, test: str):
        self.test = test

    def record(self, fault: str, outcome: str, cases: int = 1) -> None:
        RELIABILITY.add(self.test, fault, outcome, cases)


@pytest.fixture
def reliability(request) -> _Recorder:
    """record(fault, outcome, cases=1): one row of README.md's Reliability table (see Reliability)."""
    return _Recorder(request.node.nodeid.split("[")[0])


def _whole_suite(config) -> bool:
    """True when this session runs every test (so every row of the table), in one process."""
    root = Path(__file__).resolve().parent
    o = config.option
    if o.keyword or o.markexpr or getattr(o, "lf", False) or getattr(o, "deselect", None) or \
            getattr(o, "ignore", None) or getattr(o, "ignore_glob", None) or getattr(o, "numprocesses", None):
        return False
    return any("::" not in a and Path(a).resolve() in (root, root.parent) for a in config.args)


def pytest_collection_finish(session) -> None:
    RELIABILITY.expected = {i.nodeid for i in session.items if "reliability" in getattr(i, "fixturenames", ())}


def pytest_runtest_logreport(report) -> None:
    if report.nodeid in RELIABILITY.expected and report.when == "call" and report.passed:
        RELIABILITY.passed.add(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    """After a whole, passing run in which every recording test passed (none skipped), rewrite the block
    between the reliability markers in README.md. The content is deterministic: no diff on a re-run."""
    r = RELIABILITY
    if exitstatus != 0 or not r.expected or r.passed != r.expected or not _whole_suite(session.config):
        return
    text = README.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return
    head, rest = text.split(BEGIN, 1)
    new = f"{head}{BEGIN}\n{r.table()}\n{END}{rest.split(END, 1)[1]}"
    if new != text:
        README.write_text(new, encoding="utf-8")


# ---------------------------------------------------------------- run directories of dlforge 0.1
FORMAT1 = Path(__file__).resolve().parent / "fixtures" / "runs-v1"


def format1_run(family: str, dest: Path) -> Path:
    """A tiny run directory of `family` (classify, lm, seq2seq, denoise) as dlforge 0.1 wrote it, at dest.
    Its config.json, tokenizers and metrics are the release's own files (tests/fixtures/runs-v1); its
    checkpoint is made here, with the release's header (checkpoint-meta.json) over freshly seeded weights,
    since checkpoints are not committed. The lm run's corpus, an absolute path then, points at a copy."""
    import json
    import shutil

    from dlforge.registry import create_model
    from dlforge.train.checkpoint import save_checkpoint
    from dlforge.train.trainer import TrainConfig, build_optimizer
    shutil.copytree(FORMAT1 / family, dest)
    meta = json.loads((dest / "checkpoint-meta.json").read_text())
    (dest / "checkpoint-meta.json").unlink()
    torch.manual_seed(0)
    model = create_model(meta["model"]["name"], **meta["model"]["kwargs"])
    opt = build_optimizer(TrainConfig(**meta["train"]), list(model.parameters()), torch.device("cpu"))
    save_checkpoint(dest / "checkpoints" / "last.safetensors", model, meta, opt)
    if family == "lm":
        cfg = json.loads((dest / "config.json").read_text())
        cfg["data"]["config"]["data_file"] = str(shutil.copy(FORMAT1 / "lines.txt", dest.parent / "lines.txt"))
        (dest / "config.json").write_text(json.dumps(cfg))
    return dest
