"""Fuzzing (hypothesis) of every endpoint's JSON body and of predict's multipart body: never a 500, never a
hang. Bodies are drawn near the real shape (the right keys, any JSON values) and far from it (any JSON)."""
import io
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dlforge.serve import Limits, create_app
from tests.serve.conftest import live_server

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                    st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                       max_size=4), max_leaves=12)
FIELDS = {
    "predict": {"images": st.lists(st.text(max_size=30) | st.binary(max_size=30).map(lambda b: b.hex()), max_size=3),
                "top_k": st.integers(-3, 2000), "feature_maps": st.booleans()},
    "generate": {"prompt": st.text(max_size=50), "max_new_tokens": st.integers(-5, 40),
                 "temperature": st.floats(-1, 200), "top_k": st.none() | st.integers(-2, 100),
                 "top_p": st.none() | st.floats(-1, 2), "seed": st.integers(-5, 2 ** 40), "stream": st.booleans()},
    "next": {"text": st.text(max_size=50), "top_k": st.integers(-2, 2000), "attention": st.booleans()},
    "translate": {"texts": st.lists(st.text(max_size=30), max_size=3), "to": st.sampled_from(["en", "digits", "xx", ""]),
                  "beam": st.integers(-1, 10), "attention": st.booleans()},
    "sample": {"prompts": st.lists(st.text(max_size=30), max_size=3), "n": st.integers(-1, 4),
               "steps": st.integers(-1, 8), "guidance": st.floats(-1, 60), "seed": st.integers(-1, 2 ** 33),
               "sampler": st.sampled_from(["ddim", "ddpm", "euler"]), "frames": st.integers(-1, 60)},
    "completions": {"model": st.sampled_from(["gpt", "digits", "x"]), "prompt": st.text(max_size=30) |
                    st.lists(st.text(max_size=10), max_size=3), "max_tokens": st.integers(-1, 40),
                    "temperature": st.floats(-1, 3), "top_p": st.floats(-1, 2), "n": st.integers(-1, 10),
                    "stream": st.booleans(), "stop": st.none() | st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5)},
}
PATHS = {"predict": "/v1/models/digits/predict", "generate": "/v1/models/gpt/generate", "next": "/v1/models/gpt/next",
         "translate": "/v1/models/numbers/translate", "sample": "/v1/models/unet/sample", "completions": "/v1/completions"}


def near(endpoint: str):
    """Dictionaries of the endpoint's own keys (some left out) with values of the right kind or any JSON."""
    fields = FIELDS[endpoint]
    return st.fixed_dictionaries({}, optional={k: v | JSON for k, v in fields.items()})


@pytest.fixture(scope="module")
def fuzz_url(handles):
    # small limits: the fuzzer reaches every limit, and no drawn request runs long
    app = create_app(handles, Limits(max_new_tokens=24, max_steps=6, max_sample_images=2, max_text_chars=40,
                                     timeout_s=10))
    with live_server(app) as u:
        yield u


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or "error" in r.json(), r.text


@pytest.mark.parametrize("endpoint", list(PATHS))
def test_json_bodies_never_500(endpoint, fuzz_url, reliability):
    n = {"sample": 30, "translate": 30}.get(endpoint, 60)

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=near(endpoint) | JSON)
    def run(body):
        with httpx.Client(base_url=fuzz_url, timeout=20) as c:  # a hang fails as a timeout
            check(c.post(PATHS[endpoint], content=json.dumps(body),  # Infinity too, which Python's json writes
                         headers={"content-type": "application/json"}))
        reliability.record("fuzzed JSON bodies of every endpoint (hypothesis)", "never a 500, never a hang")
    run()


def _png(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(files=st.lists(st.one_of(st.binary(max_size=200), st.integers(0, 99).map(lambda s: _png(s, 1 + s % 40)),
                                st.integers(0, 99).map(lambda s: _png(s, 20)[: 20 + s])), max_size=3),
       fields=st.dictionaries(st.sampled_from(["top_k", "feature_maps", "other"]), st.text(max_size=6), max_size=3))
def test_multipart_predict_never_500(files, fields, fuzz_url, reliability):
    with httpx.Client(base_url=fuzz_url, timeout=20) as c:
        r = c.post(PATHS["predict"], files=[("image", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)] or
                   [("x", ("x", b"", "text/plain"))], data=fields)
    check(r)
    reliability.record("fuzzed multipart uploads to predict: random bytes, truncated and real PNGs (hypothesis)",
                       "never a 500, never a hang")
