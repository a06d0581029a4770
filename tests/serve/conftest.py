"""The server tests' fixtures: tiny runs of every family (trained once per session), their handles, and
live uvicorn servers on 127.0.0.1 at free ports (in a thread, or `dlforge serve` in a subprocess)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.runs import tiny_runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as mp:  # the session's training reads no user cache either
        mp.setenv("DLFORGE_CACHE", str(tmp_path_factory.mktemp("serve-cache")))
        return tiny_runs(tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="session")
def handles(runs) -> dict:
    from dlforge.serve import load_runs
    return load_runs(list(runs.values()), device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app):
    """uvicorn on 127.0.0.1 at a free port, in a thread -> its base URL; stopped (gracefully) on exit."""
    import uvicorn
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def app(handles):
    from dlforge.serve import create_app
    return create_app(handles)


@pytest.fixture(scope="session")
def url(app) -> str:
    with live_server(app) as u:
        yield u


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@contextlib.contextmanager
def serve_process(runs: list[Path], *args: str, port: int | None = None):
    """`dlforge serve RUN ...` in a subprocess -> (process, base URL), once /healthz answers; killed on exit."""
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dlforge", "serve", *map(str, runs), "--port", str(port),
                             "--log-level", "warning", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dlforge serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code in (200, 401):  # up (401: a token is set)
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("dlforge serve did not answer /healthz within 60 s")
            time.sleep(0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
