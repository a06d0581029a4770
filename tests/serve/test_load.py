"""Under load: 64 concurrent clients for 20 s on a mix of every family's endpoints against `dlforge serve` in its
own process: no 5xx, every answer what the in-process handle answers, the server's resident memory after the
run within 10% of after warm-up; p50 / p99 latencies printed."""
import asyncio
import base64
import io
import random
import time

import httpx
import numpy as np
from PIL import Image

from tests.serve.conftest import serve_process

CLIENTS, SECONDS, WARMUP_S, MAX_PER_CLIENT = 64, 20.0, 3.0, 5000


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _png(a: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _cases(handles) -> list[tuple[str, str, dict, object]]:
    """(endpoint, path, body, what the handle answers)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    cases = []
    for k in range(6):
        a = (digits.images[k] * 16).clip(0, 255).astype(np.uint8)
        b64 = _png(a)
        want = handles["digits"].predict(Image.open(io.BytesIO(base64.b64decode(b64))), top_k=3)[0]["top"]
        cases.append(("predict", "/v1/models/digits/predict", {"images": [b64], "top_k": 3}, want))
    for text in ("the ", "the cat", "a dog"):
        cases.append(("next", "/v1/models/gpt/next", {"text": text, "top_k": 5}, handles["gpt"].next_tokens(text, 5)))
        cases.append(("generate", "/v1/models/gpt/generate", {"prompt": text, "max_new_tokens": 8, "temperature": 0},
                      handles["gpt"].generate(text, max_new_tokens=8, temperature=0)))
    for n in ("7", "42"):
        cases.append(("translate", "/v1/models/numbers/translate", {"texts": [n], "to": "en"},
                      handles["numbers"].translate([n], to="en")))
    img = handles["unet"].sample(["a handwritten two"], steps=2, seed=1)[0]
    cases.append(("sample", "/v1/models/unet/sample", {"prompts": ["a handwritten two"], "steps": 2, "seed": 1},
                  np.asarray(img)))
    return cases


def _correct(endpoint: str, got: dict, want) -> bool:
    if endpoint == "predict":
        top = got["predictions"][0]["top"]
        return [t["index"] for t in top] == [t["index"] for t in want] and \
            all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(top, want))
    if endpoint == "next":
        return [t["id"] for t in got["next"]] == [t["id"] for t in want] and \
            all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(got["next"], want))
    if endpoint == "generate":
        return got["text"] == want
    if endpoint == "translate":
        return got["translations"] == want
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["images"][0]["png"]))), dtype=int)
    return a.shape == want.shape and np.abs(a - want.astype(int)).max() <= 2  # thread counts may differ by a rounding


async def _hammer(base: str, cases, seconds: float, record: bool):
    results = []  # (endpoint, status, seconds, correct)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        stop = time.monotonic() + seconds

        async def one(i: int):
            rng = random.Random(i)
            for _ in range(MAX_PER_CLIENT):
                if time.monotonic() > stop:
                    return
                endpoint, path, body, want = rng.choice(cases)
                t0 = time.perf_counter()
                r = await client.post(path, json=body)
                dt = time.perf_counter() - t0
                ok = r.status_code == 200 and _correct(endpoint, r.json(), want)
                if record:
                    results.append((endpoint, r.status_code, dt, ok))
        await asyncio.gather(*(one(i) for i in range(CLIENTS)))
    return results


def test_64_clients_for_20_seconds(runs, handles):
    cases = _cases(handles)
    with serve_process([runs[k] for k in ("digits", "gpt", "numbers", "unet")]) as (proc, base):
        # serve without a token answers loopback names only (DNS rebinding: test_server checks the rest)
        assert httpx.get(f"{base}/healthz", headers={"Host": "evil.example"}).status_code == 403
        asyncio.run(_hammer(base, cases, WARMUP_S, False))
        rss_warm = _rss(proc.pid)
        t0 = time.monotonic()
        results = asyncio.run(_hammer(base, cases, SECONDS, True))
        wall = time.monotonic() - t0
        rss_after = _rss(proc.pid)
        metrics = httpx.get(f"{base}/metrics").text
    statuses = {s for _, s, _, _ in results}
    lines = [f"\n{len(results)} requests in {wall:.1f} s by {CLIENTS} clients ({len(results) / wall:.0f}/s); "
             f"RSS {rss_warm / 2**20:.0f} MB after warm-up, {rss_after / 2**20:.0f} MB after"]
    for ep in sorted({e for e, _, _, _ in results}):
        lat = np.array([dt for e, _, dt, _ in results if e == ep]) * 1000
        lines.append(f"  {ep:<10} {len(lat):>6} requests  p50 {np.percentile(lat, 50):7.1f} ms  "
                     f"p99 {np.percentile(lat, 99):7.1f} ms")
    print("\n".join(lines))
    assert len(results) > 500 and len({e for e, _, _, _ in results}) == 5
    assert not any(s >= 500 for s in statuses) and statuses == {200}, statuses
    wrong = [(e, s) for e, s, _, ok in results if not ok]
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:3]}"
    assert rss_after <= 1.10 * rss_warm, (rss_warm, rss_after)
    assert 'dlforge_batch_images_count{model="digits"}' in metrics  # the predicts were batched
