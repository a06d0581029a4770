"""The HTTP API against a real uvicorn on 127.0.0.1 (a free port): every endpoint of every family answers
what the in-process handle answers; errors are JSON 4xx; the token, the queue, the timeout and a bug."""
import base64
import io
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from dlforge.serve import Limits, create_app
from tests.serve.conftest import live_server


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def digit(k: int) -> np.ndarray:
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.images[list(d.target).index(k)] * 16).clip(0, 255).astype(np.uint8)


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines.get("event", "message"), lines["data"]))
    return out


# ---------------------------------------------------------------- what each family answers
def test_models_health_and_docs(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"digits", "gpt", "numbers", "unet"}
    assert models["digits"]["family"] == "classifier" and models["digits"]["classes"] == [str(i) for i in range(10)]
    assert models["gpt"]["attention"] is True and models["gpt"]["block_size"] == 32
    assert models["numbers"]["languages"] == ["en", "digits"]
    assert models["unet"]["image"]["height"] == 8 and "a handwritten three" in models["unet"]["example_prompts"]
    assert all(m["parameters"] > 0 for m in models.values())
    assert client.get("/healthz").json() == {"status": "ok", "models": list(models)}
    spec = client.get("/openapi.json").json()
    assert {"/v1/models/{name}/predict", "/v1/models/{name}/generate", "/v1/completions"} <= set(spec["paths"])
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    assert set(predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {
        "image", "top_k", "feature_maps"}
    # what the server answers, not FastAPI's 422, which it never sends
    assert {"400", "404", "413", "429", "504"} <= set(predict["responses"]) and "422" not in predict["responses"]
    sample = spec["paths"]["/v1/models/{name}/sample"]["post"]["requestBody"]["content"]["application/json"]
    assert sample["schema"]["properties"]["guidance"]["maximum"] == 30  # said 50; 31 was refused
    assert "securitySchemes" not in spec["components"]
    assert client.get("/docs").status_code == 200


def test_predict_json_and_multipart_equal_the_handle(client, handles):
    imgs = [digit(k) for k in (0, 3, 7)]
    want = handles["digits"].predict([Image.open(io.BytesIO(png(a))) for a in imgs], top_k=2)
    r = client.post("/v1/models/digits/predict", json={"images": [base64.b64encode(png(a)).decode() for a in imgs],
                                                        "top_k": 2})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [p["image"] for p in got] == [0, 1, 2] and [len(p["top"]) for p in got] == [2, 2, 2]
    for g, w in zip(got, want):
        assert [t["index"] for t in g["top"]] == [t["index"] for t in w["top"]]
        assert [t["probability"] for t in g["top"]] == pytest.approx([t["probability"] for t in w["top"]], abs=1e-5)
    r = client.post("/v1/models/digits/predict", files=[("image", ("a.png", png(imgs[1]), "image/png"))],
                    data={"top_k": "1", "feature_maps": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"][0]["top"][0]["index"] == want[1]["top"][0]["index"]
    fm = body["feature_maps"]
    assert fm["layer"] == "conv1" and fm["shape"] == [8, 16, 16] and len(fm["png"]) == 8
    assert Image.open(io.BytesIO(base64.b64decode(fm["png"][0]))).size == (16, 16)

    # fields by name and type: before, a file under any name was an image, a repeat silently won, and JSON's
    # true / "3" / "yes" were taken as 1, 3 and true
    one = ("a.png", png(imgs[1]), "image/png")
    for files, data, says in (([("other", one)], {}, "other: unknown field; expected image, top_k, feature_maps"),
                              ([("image", one)], {"top_k": ["3", "4"]}, "top_k: given twice"),
                              ([("image", one), ("top_k", one)], {}, "top_k: expected text, got a file")):
        r = client.post("/v1/models/digits/predict", files=files, data=data)
        assert r.status_code == 400 and r.json()["error"] == says, r.text
    b64 = base64.b64encode(png(imgs[1])).decode()
    for field, value in (("top_k", True), ("top_k", "3"), ("top_k", 2.5), ("feature_maps", "yes")):
        r = client.post("/v1/models/digits/predict", json={"images": [b64], field: value})
        assert r.status_code == 400 and r.json()["error"].startswith(f"{field}: Input should be a valid"), r.text


def test_generate_plain_and_streamed_equal_the_handle(client, handles):
    lm = handles["gpt"]
    want = lm.generate("the ", max_new_tokens=12, temperature=0.9, top_k=5, top_p=0.9, seed=3)
    body = {"prompt": "the ", "max_new_tokens": 12, "temperature": 0.9, "top_k": 5, "top_p": 0.9, "seed": 3}
    r = client.post("/v1/models/gpt/generate", json=body)
    assert r.status_code == 200 and r.json()["text"] == want and r.json()["tokens"] == 12
    r = client.post("/v1/models/gpt/generate", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    pieces = [json.loads(d)["text"] for e, d in events if e == "message"]
    assert len(pieces) == 12 and "the " + "".join(pieces) == want
    assert events[-1][0] == "done" and json.loads(events[-1][1])["completion"] == want[4:]


def test_next_tokens_and_attention(client, handles):
    r = client.post("/v1/models/gpt/next", json={"text": "the ca", "top_k": 3, "attention": True})
    assert r.status_code == 200
    body = r.json()
    assert body["next"] == handles["gpt"].next_tokens("the ca", top_k=3)
    att = body["attention"]
    assert att["tokens"] == list("the ca") and len(att["layers"]) == 2 and np.array(att["layers"][0]).shape == (2, 6, 6)
    assert np.allclose(np.array(att["layers"][1]).sum(-1), 1, atol=1e-3)
    r = client.post("/v1/models/gpt/next", json={"text": "the ca", "attention": True, "attention_last": 3})
    last = r.json()["attention"]  # the playground asks for the last 48: a long context was 12.9 MB a keystroke
    assert last["tokens"] == list("e ca")[-3:] and np.array(last["layers"][0]).shape == (2, 3, 3)
    assert np.allclose(np.array(last["layers"][1]), np.array(att["layers"][1])[:, -3:, -3:])


def test_openai_completions(client, handles):
    want = handles["gpt"].generate("the ", max_new_tokens=10, temperature=0)[4:]
    r = client.post("/v1/completions", json={"model": "gpt", "prompt": "the ", "max_tokens": 10, "temperature": 0,
                                             "logprobs": None, "echo": False, "user": "x"})  # OpenAI fields: ignored
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["object"] == "text_completion" and c["choices"][0]["text"] == want
    assert c["choices"][0]["finish_reason"] == "length" and c["usage"] == {
        "prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14}
    stop = want[3]
    r = client.post("/v1/completions", json={"model": "gpt", "prompt": "the ", "max_tokens": 10, "temperature": 0,
                                             "stop": [stop]})
    assert r.json()["choices"][0] == {"text": want[:want.index(stop)], "index": 0, "logprobs": None,
                                      "finish_reason": "stop"}
    r = client.post("/v1/completions", json={"model": "gpt", "prompt": "the ", "max_tokens": 6, "temperature": 0,
                                             "stream": True})
    chunks = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1]) == want[:6]
    r = client.post("/v1/completions", json={"model": "digits", "prompt": "x"})
    assert r.status_code == 404 and "no language model 'digits'" in r.json()["error"]
    # errors name the fields the client sent: before, "max_new_tokens: 1000; …" and "--prompt: the text is empty"
    r = client.post("/v1/completions", json={"model": "gpt", "prompt": "the ", "max_tokens": 100_000})
    assert r.status_code == 400 and r.json()["error"].startswith("max_tokens: 100000; at most")
    r = client.post("/v1/completions", json={"model": "gpt", "prompt": ""})
    assert r.status_code == 400 and r.json()["error"].startswith("prompt: the text is empty")
    import re
    counted = re.findall(r'dlforge_requests_total\{(?=[^}]*endpoint="/v1/completions")[^}]*model="([^"]*)"',
                         client.get("/metrics").text)
    assert set(counted) == {"gpt", "-"}, counted  # under the model the body named ("-": none known); all were "-"


def test_translate_with_cross_attention(client, handles):
    want = handles["numbers"].translate(["12", "305"], to="en")
    r = client.post("/v1/models/numbers/translate", json={"texts": ["12", "305"], "to": "en", "attention": True})
    assert r.status_code == 200
    body = r.json()
    assert body["translations"] == want
    att = body["attention"]
    assert att["source_tokens"] == ["<en>", "1", "2"]
    assert np.array(att["layers"][0]).shape == (2, len(want[0]["translation"]) + 1, 3)
    r = client.post("/v1/models/numbers/translate", json={"texts": ["12"], "to": "xx"})
    assert r.status_code == 400 and r.json()["error"].startswith("to: unknown target 'xx'")  # the field, not --to


def test_sample_images_and_frames_equal_the_handle(client, handles):
    want = handles["unet"].sample(["a handwritten three"], n=2, steps=4, seed=5)
    r = client.post("/v1/models/unet/sample", json={"prompts": ["a handwritten three"], "n": 2, "steps": 4, "seed": 5,
                                                    "frames": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i["png"])))) for i in body["images"]]
    assert len(got) == 2 and all(np.array_equal(g, np.asarray(w)) for g, w in zip(got, want))
    assert len(body["frames"]) == 3 and body["frames"][0]["t"] > body["frames"][-1]["t"]
    r = client.post("/v1/models/unet/sample", json={"prompts": ["a handwritten three"], "steps": 4, "frames": 1})
    assert r.status_code == 400 and r.json()["error"].startswith("frames: 0 (none) or 2 to 50")  # 1 gave 2 frames
    assert client.head("/").status_code == 200  # a monitor's check (was 405)


def test_metrics_count_requests_latency_and_queue(client):
    client.get("/healthz")
    client.post("/v1/models/gpt/next", json={"text": "the"})
    client.post("/v1/models/gpt/next", json={"text": ""})
    text = client.get("/metrics").text
    assert 'dlforge_requests_total{endpoint="next",model="gpt",status="200"}' in text
    assert 'dlforge_request_errors_total{endpoint="next",model="gpt",status="400"}' in text
    assert 'dlforge_request_seconds_bucket{endpoint="next",le="0.5",model="gpt"}' in text
    assert 'dlforge_queue_depth{model="digits"} 0.0' in text and "dlforge_batch_images" in text


# ---------------------------------------------------------------- hostile or wrong requests: JSON 4xx
@pytest.mark.parametrize("path, kwargs, status, says", [
    ("/v1/models/nope/predict", {"json": {"images": ["x"]}}, 404, "no model 'nope'"),
    ("/v1/models/gpt/predict", {"json": {"images": ["x"]}}, 404, "has no /predict; its endpoints: generate, next"),
    ("/v1/models/gpt/generate", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("/v1/models/gpt/generate", {"content": b"[" * 100000, "headers": {"content-type": "application/json"}}, 400,
     "not valid JSON"),
    ("/v1/models/gpt/generate", {"content": b"prompt=x"}, 415, "expected Content-Type: application/json"),
    ("/v1/models/gpt/generate", {"json": {"prompt": "the", "temperature": -1}}, 400, "temperature:"),
    ("/v1/models/gpt/generate", {"json": {"prompt": "the", "max_new_tokens": 10 ** 6}}, 400, "max_new_tokens: 1000000; at most 512"),
    ("/v1/models/gpt/generate", {"json": {"prompt": "x" * 5000}}, 400, "prompt: 5,000 characters; at most 2,000"),
    ("/v1/models/gpt/generate", {"json": {"prompt": "the", "bogus": 1}}, 400, "bogus: Extra inputs are not permitted"),
    ("/v1/models/gpt/generate", {"json": {"prompt": "€€"}}, 400, "characters the char tokenizer never saw"),
    ("/v1/models/gpt/generate", {"content": b'{"prompt": "a", "temperature": NaN}',
                                 "headers": {"content-type": "application/json"}}, 400, "temperature"),
    ("/v1/models/digits/predict", {"json": {"images": ["not base64!"]}}, 400, "images.0: not valid base64"),
    ("/v1/models/digits/predict", {"json": {"images": ["aGVsbG8="]}}, 400, "image 0: not an image"),
    ("/v1/models/digits/predict", {"json": {"images": ["aGVsbG8="] * 40}}, 400, "40 images; at most 32"),
    ("/v1/models/unet/sample", {"json": {"prompts": ["a"], "steps": 5000}}, 400, "steps: 5000; at most 200"),
    ("/v1/models/unet/sample", {"json": {"prompts": ["a"] * 3, "n": 4}}, 400, "12 images; at most 8"),
    ("/v1/models/numbers/translate", {"json": {"texts": ["1" * 600], "to": "en"}}, 400, "texts.0: 600 characters"),
    ("/v1/models/numbers/translate", {"json": {"texts": [""], "to": "en"}}, 400, "the text to translate is empty"),
])
def test_bad_requests_are_json_4xx(client, path, kwargs, status, says, reliability):
    r = client.post(path, **kwargs)
    assert r.status_code == status and says in r.json()["error"], r.text
    assert "Traceback" not in r.text and r.headers["x-request-id"]
    reliability.record("a wrong or hostile HTTP request (bad JSON, wrong types, over a limit, a path as an image)",
                       "a 4xx JSON error naming the field")


def test_no_field_becomes_a_file_path(client, tmp_path):
    path = tmp_path / "real.png"
    path.write_bytes(png(digit(3)))  # a real image at that path: were it opened, the answer would be 200
    for images in ([str(path)], [path.as_uri()]):
        r = client.post("/v1/models/digits/predict", json={"images": images})
        assert r.status_code == 400 and "not an image" in r.text or "not valid base64" in r.text, r.text


def test_image_bomb_is_refused_from_its_header(client):
    import struct
    import zlib
    w = h = 50000  # 2.5 gigapixels declared; the file is a few hundred bytes
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    t0 = time.perf_counter()
    r = client.post("/v1/models/digits/predict", files={"image": ("b.png", bomb, "image/png")})
    assert r.status_code == 400 and "at most 16,777,216 pixels" in r.json()["error"]
    assert time.perf_counter() - t0 < 2
    big = png(np.zeros((4200, 4200), np.uint8))  # 17.6 megapixels, a real (small, compressed) file
    r = client.post("/v1/models/digits/predict", files={"image": ("b.png", big, "image/png")})
    assert r.status_code == 400 and "4200×4200 pixels; at most 16,777,216" in r.json()["error"]


def test_body_size_and_length_limits(client, url):
    r = client.post("/v1/models/digits/predict", content=b"x" * (9 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most 8,388,608" in r.json()["error"]

    def chunks():
        yield b'{"prompt": "the"}'
    r = client.post("/v1/models/gpt/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411
    r = client.get("/v1/models/gpt/generate")
    assert r.status_code == 405 and "error" in r.json()
    assert client.get("/nothing").json() == {"error": "Not Found"}


# ---------------------------------------------------------------- the token, the queue, the timeout, a bug
def test_a_loopback_server_answers_only_requests_to_a_loopback_name(client, handles):
    """Before: any Host was served, so a web page could rebind its own name to 127.0.0.1 (DNS rebinding) and
    read the answers of a server that has no token (serve passes hosts=LOCAL_HOSTS then: test_load checks the
    command). With a token (required beyond loopback), or an app embedded elsewhere, any name is fine."""
    from dlforge.serve.app import LOCAL_HOSTS
    with live_server(create_app(handles, hosts=LOCAL_HOSTS)) as base:
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST", "localhost.:80"):
            assert httpx.get(f"{base}/v1/models", headers={"Host": host}).status_code == 200, host
        r = httpx.get(f"{base}/v1/models", headers={"Host": "evil.example:8000"})
        assert r.status_code == 403 and r.json()["error"].startswith(
            "Host: evil.example:8000: this server answers requests to 127.0.0.1, localhost or [::1] only")
        assert httpx.get(f"{base}/", headers={"Host": "127.0.0.1.evil.example"}).status_code == 403
    assert client.get("/v1/models", headers={"Host": "testserver"}).status_code == 200  # create_app alone


def test_token_is_required_and_compared(handles):
    app = create_app(handles, token="s3cret-token-0123456789")
    with live_server(app) as base:
        assert httpx.get(f"{base}/v1/models").status_code == 401
        r = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"].startswith("missing or wrong token")
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{base}/v1/models/gpt/next", json={"text": "a"}).status_code == 401
        for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme in any case (RFC 7235); "bearer" was a 401
            ok = httpx.get(f"{base}/v1/models", headers={"Authorization": f"{scheme} s3cret-token-0123456789"})
            assert ok.status_code == 200
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Basic s3cret-token-0123456789"}
                         ).status_code == 401
        assert httpx.get(f"{base}/").status_code == 200  # the page itself holds no model; its calls send the token
        spec = httpx.get(f"{base}/openapi.json").json()  # Swagger UI's Authorize button: "Try it out" was a 401
        assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
        assert spec["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
        assert httpx.get(f"{base}/docs").status_code == 200 and httpx.get(f"{base}/docs-assets/swagger-ui.css"
                                                                         ).status_code == 200  # nor does the API's


def _block(worker) -> threading.Event:
    """Occupy a model's only thread until the event is set."""
    gate = threading.Event()
    worker.pool.submit(gate.wait, 20)
    return gate


def test_full_queue_is_429_with_retry_after(handles):
    app = create_app(handles, Limits(queue_size=1))
    worker = app.state.models["gpt"].worker
    with live_server(app) as base:
        gate = _block(worker)
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", httpx.post(
            f"{base}/v1/models/gpt/next", json={"text": "the"}, timeout=30)))
        t.start()
        while worker.pending < 1:
            time.sleep(0.01)
        r = httpx.post(f"{base}/v1/models/gpt/next", json={"text": "the"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        assert httpx.post(f"{base}/v1/models/digits/predict", json={"images": ["x"]}).status_code == 400  # other models
        gate.set()
        t.join(30)
        assert first["r"].status_code == 200


def test_a_body_shorter_than_its_content_length_is_408_within_the_timeout(handles):
    """Before: the server waited for the missing bytes for ever, past --timeout."""
    import socket
    app = create_app(handles, Limits(timeout_s=0.5))
    with live_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            t0 = time.perf_counter()
            sock.sendall(b"POST /v1/models/gpt/next HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"text\": ")
            answer = sock.recv(4096).decode()
            assert time.perf_counter() - t0 < 5
        assert answer.startswith("HTTP/1.1 408") and "the body did not arrive in full within 0.5 s" in answer
        assert httpx.post(f"{base}/v1/models/gpt/next", json={"text": "the"}).status_code == 200  # still serving


def test_completions_share_one_timeout(handles, monkeypatch):
    """Before: each of a request's completions had a --timeout of its own, so 8 prompts ran 8 times as long."""
    def slow(*args, counts=False, **kwargs):
        for piece in ("a", "b"):
            time.sleep(0.2)
            yield (piece, 1) if counts else piece
    monkeypatch.setattr(handles["gpt"], "stream", slow)
    app = create_app(handles, Limits(timeout_s=1.0))
    with live_server(app) as base:
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/completions", json={"model": "gpt", "prompt": ["the"] * 8, "max_tokens": 2},
                       timeout=30)
        took = time.perf_counter() - t0
        assert r.status_code == 504 and "timeout" in r.json()["error"] and took < 2.5, (r.text, took)
        r = httpx.post(f"{base}/v1/completions", json={"model": "gpt", "prompt": ["the"] * 2, "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_work_whose_client_has_gone_is_cancelled(handles, monkeypatch):
    """Before: a sample request its client had left ran all its steps, and the requests behind it waited (a
    2-step sample behind ten abandoned ones took 12.8 s)."""
    h = handles["unet"]
    orig, steps = h.sample, []

    def slow(prompts, n, sampler, k, *args, callback=None, **kwargs):
        for i in range(k):
            time.sleep(0.05)
            steps.append(k)
            callback(i)
        return orig(prompts, n, sampler, 2, *args, callback=callback, **kwargs)
    monkeypatch.setattr(h, "sample", slow)
    app = create_app(handles)
    with live_server(app) as base:
        body = {"prompts": ["a handwritten one"], "steps": 100}
        for _ in range(3):  # 3 × 100 steps × 50 ms: 15 s, had they run to their end
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base}/v1/models/unet/sample", json=body, timeout=0.3)
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/models/unet/sample", json={**body, "steps": 2}, timeout=30)
        assert r.status_code == 200 and time.perf_counter() - t0 < 3, time.perf_counter() - t0
        assert steps.count(100) < 30 and app.state.models["unet"].worker.pending == 0
        assert app.state.metrics.requests.labels("unet", "sample", "499")._value.get() == 3  # nginx's "client closed"


def test_a_client_gone_during_its_upload_is_a_499_not_a_bug(handles, caplog):
    """Before: Starlette's ClientDisconnect was logged as a failed request with its traceback, and counted 500."""
    import socket
    app = create_app(handles)
    with caplog.at_level(logging.ERROR, logger="dlforge.serve"), live_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/gpt/next HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 100\r\n\r\n{\"text\": ")
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while app.state.metrics.requests.labels("gpt", "next", "499")._value.get() < 1:
            assert time.monotonic() < deadline, "the request was not counted as 499"
            time.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_timeout_is_504_and_the_work_is_cancelled(handles):
    app = create_app(handles, Limits(timeout_s=0.3))
    worker = app.state.models["unet"].worker
    steps = []
    with live_server(app) as base:
        gate = _block(worker)
        r = httpx.post(f"{base}/v1/models/unet/sample", json={"prompts": ["a handwritten one"], "steps": 3})
        assert r.status_code == 504 and "timeout" in r.json()["error"]
        h = app.state.models["unet"].handle
        orig = h.sample
        h.sample = lambda *a, **k: steps.append(1) or orig(*a, **k)
        try:
            gate.set()
            time.sleep(0.3)
            assert steps == []  # it had not started: it never runs
        finally:
            del h.sample


def test_a_bug_is_500_with_a_request_id_that_the_log_names(client, handles, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("a bug in the handle")
    monkeypatch.setattr(handles["gpt"], "next_tokens", boom)
    with caplog.at_level(logging.ERROR, logger="dlforge.serve"):
        r = client.post("/v1/models/gpt/next", json={"text": "the"})
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == f"internal error (request id {body['request_id']})" and "a bug" not in r.text
    assert r.headers["x-request-id"] == body["request_id"]
    rec = [x for x in caplog.records if body["request_id"] in x.getMessage()]
    assert rec and rec[0].exc_info and "a bug in the handle" in str(rec[0].exc_info[1])


def _batches(text: str, model: str) -> tuple[float, float]:
    get = lambda k: float(next((line.split()[-1] for line in text.splitlines()  # noqa: E731
                                if line.startswith(f'dlforge_batch_images_{k}{{model="{model}"}}')), 0))
    return get("count"), get("sum")


@pytest.mark.parametrize("max_batch", [32, 1])
def test_concurrent_predicts_share_a_forward_pass(handles, max_batch):
    app = create_app(handles, Limits(max_batch=max_batch))
    worker = app.state.models["digits"].worker
    body = {"images": [base64.b64encode(png(digit(k))).decode() for k in (1,)], "top_k": 1}
    with live_server(app) as base:
        gate = _block(worker)  # the model is busy: the next 8 requests arrive while it is
        out = []
        threads = [threading.Thread(target=lambda: out.append(httpx.post(f"{base}/v1/models/digits/predict",
                                                                           json=body, timeout=30)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        while worker.pending < 8:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in out] == [200] * 8
        assert len({json.dumps(r.json()["predictions"]) for r in out}) == 1  # one answer, whatever the batch
        count, total = _batches(httpx.get(f"{base}/metrics").text, "digits")
    if max_batch == 1:
        assert count == 0  # no batcher: one forward pass per request
    else:
        assert total == 8 and count <= 2  # the first alone (the model was busy), the other seven together
