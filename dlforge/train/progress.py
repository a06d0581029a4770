"""Training progress: tqdm.auto's bar in a terminal or a notebook (a widget in Jupyter); where stderr is a
file or a pipe (logs, CI, nohup), one plain line every few seconds instead of carriage-return redraws."""
from __future__ import annotations

import sys
import time

LINE_EVERY_S = 10.0  # seconds between two plain progress lines


def _interactive(stream) -> bool:
    return "ipykernel" in sys.modules or (hasattr(stream, "isatty") and stream.isatty())


class LineProgress:
    """The subset of tqdm's interface the trainer uses, printed as a line every `every` seconds:
    'Epoch 2/5: 120/469 batches (26%) loss=0.4128 acc=88.10% img_s=1520'."""

    def __init__(self, total: int, initial: int, desc: str, stream=None, every: float | None = None):
        self.total, self.n, self.desc = total, initial, desc
        self.every = LINE_EVERY_S if every is None else every  # read now, not when the module was imported
        self.stream = stream or sys.stderr
        self.postfix: dict = {}
        self._last = time.perf_counter()

    def set_postfix(self, postfix: dict, refresh: bool = False) -> None:
        self.postfix = postfix

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self._last >= self.every:
            self._line()

    def _line(self) -> None:
        self._last = time.perf_counter()
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} batches{share}{extra}", file=self.stream, flush=True)

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


class _Off:
    def set_postfix(self, *a, **k) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...

    def write(self, text: str) -> None:
        print(text, flush=True)


def progress_bar(total: int, initial: int, desc: str, enabled: bool = True, stream=None):
    """-> a tqdm.auto bar (terminal, notebook), a LineProgress (file, pipe), or nothing when disabled."""
    stream = stream or sys.stderr
    if not enabled:
        return _Off()
    if not _interactive(stream):
        return LineProgress(total, initial, desc, stream)
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", file=stream, mininterval=0.5,
                dynamic_ncols=True)
