"""One worker per model: a single thread that runs its forward passes (a handle's model is never entered by
two threads at once), a bounded queue in front of it (full: 429 with Retry-After), a deadline on every
request (past it: 504, and the work is cancelled), and for classifiers the dynamic batcher that merges the
images of concurrent requests into one forward pass."""
from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

from dlforge.serve.limits import Limits, RequestError
from dlforge.serve.metrics import Metrics


class Cancelled(Exception):
    """Raised inside a model's thread (between denoising steps, or tokens) once its request has timed out or
    its client has gone."""


# set by the server's Guard, per request, once the client has closed the connection: the request's tickets stop
CLIENT_GONE: contextvars.ContextVar[threading.Event] = contextvars.ContextVar("dlforge_client_gone",
                                                                               default=threading.Event())
GONE = "the client closed the connection; the request was cancelled"


class Ticket:
    """One admitted request: its deadline, and the flag that stops its work once the deadline has passed."""

    def __init__(self, worker: "ModelWorker", deadline: float):
        self.worker, self.deadline = worker, deadline
        self.cancelled = threading.Event()
        self.gone = CLIENT_GONE.get()  # before, a request its client had left ran to its end, and those queued
        self._open = True               # behind it waited for it

    def stopped(self) -> bool:
        return self.cancelled.is_set() or self.gone.is_set()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, *_: Any) -> None:
        """A callback for long work (diffusion steps): stop once cancelled."""
        if self.stopped():
            raise Cancelled

    def release(self) -> None:
        if self._open:
            self._open = False
            self.worker.pending -= 1
            self.worker.metrics.queue.labels(self.worker.name).set(self.worker.pending)

    async def run(self, fn: Callable, *args) -> Any:
        """fn(*args) in the model's thread -> its result; 504 past the deadline (fn then stops at its next check,
        or never starts when it was still waiting)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.worker.pool, self._guarded, fn, args)
        try:
            return await asyncio.wait_for(fut, max(self.left(), 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            self.cancelled.set()
            raise RequestError(504, f"the request ran past its {self.worker.limits.timeout_s:g} s timeout and was "
                                    f"cancelled") from None
        except Cancelled:  # its client has gone (nginx's 499: the answer reaches no one, the metrics count it)
            raise RequestError(499, GONE) from None

    def _guarded(self, fn: Callable, args: tuple) -> Any:
        if self.stopped():  # timed out, or its client left, while it waited in the queue
            raise Cancelled
        return fn(*args)


class ModelWorker:
    def __init__(self, name: str, limits: Limits, metrics: Metrics):
        self.name, self.limits, self.metrics = name, limits, metrics
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"dlforge-{name}")
        self.pending = 0  # admitted requests not yet answered (only touched on the event loop)
        metrics.queue.labels(name).set(0)

    def admit(self, deadline: float | None = None) -> Ticket:
        """A ticket for one more request, or 429 when the model's queue is full. deadline (time.monotonic()):
        default --timeout from now; a request of several parts (completions) gives all its parts the same one."""
        if self.pending >= self.limits.queue_size:
            raise RequestError(429, f"model {self.name!r} is busy ({self.pending} requests queued); retry shortly",
                               {"Retry-After": "1"})
        self.pending += 1
        self.metrics.queue.labels(self.name).set(self.pending)
        return Ticket(self, time.monotonic() + self.limits.timeout_s if deadline is None else deadline)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Batcher:
    """Dynamic batching: images of requests that arrive within max_wait_ms of the first one waiting (or until
    max_batch images, or until every admitted request of this model has joined) go through `fn` in one call.
    fn: uint8 (N, C, H, W) -> (N, K), run in the model's thread."""

    def __init__(self, worker: ModelWorker, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.worker, self.fn = worker, fn
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def submit(self, ticket: Ticket, x: torch.Tensor) -> torch.Tensor:
        if self.worker.limits.max_batch <= 1:  # batching off: one request, one forward pass
            return await ticket.run(self.fn, x)
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((ticket, x, fut))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(ticket.left(), 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            ticket.cancelled.set()
            raise RequestError(504, f"the request ran past its {self.worker.limits.timeout_s:g} s timeout and was "
                                    f"cancelled") from None

    async def _loop(self) -> None:
        limits, loop = self.worker.limits, asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][1])
            until = loop.time() + limits.max_wait_ms / 1000
            while n < limits.max_batch and len(items) < self.worker.pending:
                try:
                    item = self.queue.get_nowait() if not self.queue.empty() else \
                        await asyncio.wait_for(self.queue.get(), until - loop.time())
                except (asyncio.TimeoutError, TimeoutError):
                    break
                items.append(item)
                n += len(item[1])
            for ticket, _, fut in items:
                if ticket.gone.is_set() and not fut.done():
                    fut.set_exception(RequestError(499, GONE))
            items = [it for it in items if not it[0].stopped() and not it[2].done()]
            if not items:
                continue
            try:
                out = await loop.run_in_executor(self.worker.pool, self.fn, torch.cat([x for _, x, _ in items]))
            except Exception as e:  # noqa: BLE001  every waiting request gets the same error
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.worker.metrics.batch.labels(self.worker.name).observe(len(out))
            i = 0
            for _, x, fut in items:
                if not fut.done():
                    fut.set_result(out[i:i + len(x)])
                i += len(x)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
