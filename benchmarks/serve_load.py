"""`dlforge serve` under load on this machine: requests/s and p50 / p99 latency at 1, 8, 32 and 64 concurrent
clients (closed loop: each sends its next request when the last is answered) for

  predict  (cnn, the reference MY_NET at 48×48, on digits; one 28×28 PNG per request, JSON base64)
  generate (gpt-small, 32 new tokens per request, temperature 0.8; also tokens/s summed over the streams)
  sample   (unet-fast, 16×16, DDIM 10 steps, guidance 3, one image per request)

and dynamic batching on (--max-batch 32 --max-wait-ms 5) against off (--max-batch 1) for predict at 32
clients. The server is `dlforge serve` in its own process; the clients (a minimal keep-alive HTTP/1.1 client on
asyncio, one connection each) share the machine's cores with it. Without --cnn/--gpt/--unet the three runs are trained here for a few steps: throughput does not
depend on what the weights learned.

    python -m benchmarks.serve_load [--cnn RUN --gpt RUN --unet RUN] [--seconds 5] [--save | --out FILE.json]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.pairs import ROOT, report, save_options, saved_path
LEVELS = (1, 8, 32, 64)


def train_runs(root: Path) -> dict[str, Path]:
    import dlforge
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quiet = {"progress": False}
    dlforge.train("cnn", data="digits", out=root / "cnn", max_steps=10, batch_size=64, **quiet)
    dlforge.train("gpt-small", data=text, out=root / "gpt-small", max_steps=10, batch_size=16, eval_every=10,
                  eval_tokens=2048, **quiet)
    dlforge.train("unet-fast", data="digits", out=root / "unet-fast", max_steps=10, batch_size=32, eval_every=10,
                  **quiet)
    return {"cnn": root / "cnn", "gpt": root / "gpt-small", "unet": root / "unet-fast"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dlforge serve RUN ... --port P [extra]` in its own process, up once /healthz answers."""

    def __init__(self, runs: list[Path], *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "dlforge", "serve", *map(str, runs), "--port",
                                      str(self.port), "--log-level", "warning", "--queue-size", "256", *extra],
                                     env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("dlforge serve did not start")
            time.sleep(0.2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(60)


class Connection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams. Hand-written because httpx spends about a
    millisecond of CPU per request here, on the cores the server shares: the benchmark would mostly measure
    its own client."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(port: int, path: str, body: dict, clients: int, seconds: float) -> dict:
    """`clients` concurrent clients for `seconds` (after a one-second warm-up) -> rate and latency figures."""
    lat, tokens, bad = [], 0, 0
    payload = json.dumps(body).encode()
    conns = [Connection(port) for _ in range(clients)]

    async def run(conn: Connection, until: float, record: bool):
        nonlocal tokens, bad
        while time.monotonic() < until:
            t0 = time.perf_counter()
            status, answer = await conn.post(path, payload)
            if not record:
                continue
            if status != 200:
                bad += 1
                continue
            lat.append(time.perf_counter() - t0)
            if b'"tokens"' in answer:
                tokens += json.loads(answer)["tokens"]
    await asyncio.gather(*(run(c, time.monotonic() + 1.0, False) for c in conns))
    t0 = time.monotonic()
    await asyncio.gather(*(run(c, t0 + seconds, True) for c in conns))
    wall = time.monotonic() - t0
    for c in conns:
        c.close()
    ms = np.array(lat) * 1000
    out = {"clients": clients, "requests": len(lat), "errors": bad, "seconds": round(wall, 2),
           "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
           "p99_ms": round(float(np.percentile(ms, 99)), 1)}
    if tokens:
        out["tokens_per_s"] = round(tokens / wall, 1)
    return out


def png_b64(size: int = 28) -> str:
    from PIL import Image
    from sklearn.datasets import load_digits
    a = (load_digits().images[3] * 16).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize((size, size)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn"), ap.add_argument("--gpt"), ap.add_argument("--unet")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level (default 5)")
    save_options(ap, ROOT / "benchmarks" / "results" / "serve-load.json")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    runs = train_runs(Path(tmp.name)) if not (args.cnn and args.gpt and args.unet) else \
        {"cnn": Path(args.cnn), "gpt": Path(args.gpt), "unet": Path(args.unet)}
    names = {k: p.resolve().name for k, p in runs.items()}
    work = {
        "predict": (f"/v1/models/{names['cnn']}/predict", {"images": [png_b64()], "top_k": 3}),
        "generate": (f"/v1/models/{names['gpt']}/generate", {"prompt": "The model ", "max_new_tokens": 32,
                                                           "temperature": 0.8, "seed": 1}),
        "sample": (f"/v1/models/{names['unet']}/sample", {"prompts": ["a handwritten seven"], "steps": 10,
                                                        "guidance": 3.0}),
    }
    result = {"command": "python -m benchmarks.serve_load " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "models": {k: __import__("dlforge").load(p, device="cpu").config.model for k, p in runs.items()},
              "note": "server and clients share the machine's cores; closed-loop clients, 1 s warm-up per level"}
    with Server(list(runs.values())) as srv:
        for name, (path, body) in work.items():
            result[name] = []
            for n in LEVELS:
                r = asyncio.run(closed_loop(srv.port, path, body, n, args.seconds))
                result[name].append(r)
                print(f"{name:<9} {n:>3} clients: {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']:8.1f} ms  "
                      f"p99 {r['p99_ms']:8.1f} ms" + (f"  {r['tokens_per_s']:8.1f} tokens/s" if "tokens_per_s" in r
                                                     else ""), flush=True)
        on = asyncio.run(closed_loop(srv.port, *work["predict"], 32, args.seconds))
    with Server(list(runs.values()), "--max-batch", "1") as srv:
        off = asyncio.run(closed_loop(srv.port, *work["predict"], 32, args.seconds))
    result["batching_predict_32_clients"] = {"on": on, "off": off,
                                             "speedup": round(on["requests_per_s"] / off["requests_per_s"], 2)}
    print(f"dynamic batching, predict at 32 clients: on {on['requests_per_s']:.1f} req/s, off "
          f"{off['requests_per_s']:.1f} req/s: {result['batching_predict_32_clients']['speedup']:.2f}×")
    report(result, saved_path(args), indent=2)


if __name__ == "__main__":
    main()
