"""The FastAPI app over loaded handles: /v1/models, the family endpoints (endpoints.FAMILIES), the OpenAI
completions shape, /healthz, /metrics, the playground at /; and `serve`, which loads the runs and runs uvicorn.

Every error is JSON {"error": ...}: dlforge's own and the limits' a 4xx, a bug a 500 with the request id
that the log names beside its traceback."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from dlforge.errors import DlforgeError
from dlforge.recipes.base import Handle
from dlforge.serve import endpoints as E
from dlforge.serve.batching import CLIENT_GONE, ModelWorker
from dlforge.serve.limits import Limits, RequestError
from dlforge.serve.metrics import Metrics

log = logging.getLogger("dlforge.serve")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MODEL_LABEL = "dlforge.model"  # the scope's key for a model named in the body (the metrics' label)
PUBLIC = ("/", "/docs", "/openapi.json")  # the page and the API's description: no model, no data
DOCS_ASSETS = "/docs-assets"  # Swagger UI's script and style, served here: FastAPI's /docs loads them from a CDN


def _swagger_ui() -> Path | None:
    """The folder of Swagger UI's files that fastapi-offline ships (Swagger UI 5: it renders OpenAPI 3.1, as
    PyPI's swagger-ui-bundle's 4.15 does not); None where it is not installed (then /docs uses the CDN)."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def served_models(handles: dict[str, Handle], limits: Limits, metrics: Metrics) -> dict[str, E.Served]:
    out = {}
    for name, h in handles.items():
        fam = E.FAMILIES.get(h.config.task)
        if fam is None:
            raise DlforgeError(f"{h.path}: dlforge serve has no endpoints for task {h.config.task!r} yet; it serves "
                               f"{', '.join(E.FAMILIES)}")
        s = E.Served(name, h, fam, ModelWorker(name, limits, metrics), limits)
        if fam.setup:
            fam.setup(s)
        out[name] = s
    return out


def info(s: E.Served) -> dict:
    h = s.handle
    return {"name": s.name, "family": s.family.name, "task": h.config.task, "model": h.config.model,
            "parameters": sum(p.numel() for p in h.model.parameters()),
            "endpoints": [f"/v1/models/{s.name}/{e.action}" for e in s.family.endpoints]
            + (["/v1/completions"] if h.config.task == "language-model" else []), **s.family.info(h)}


def create_app(handles: dict[str, Handle], limits: Limits | None = None, token: str | None = None,
               hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The app serving `handles` ({name: handle}); with `token`, every API request needs Authorization: Bearer;
    with `hosts`, only requests whose Host names one of them are answered (serve: the loopback names, when it
    has no token). An app embedded elsewhere (a TestClient's "testserver") answers any Host."""
    limits = limits or Limits()
    metrics = Metrics()
    models = served_models(handles, limits, metrics)
    page = resources.files("dlforge.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        yield
        for s in models.values():  # after uvicorn has finished the requests in flight
            if s.batcher:
                s.batcher.close()
            s.worker.close()

    app = FastAPI(title="dlforge serve", version=__import__("dlforge").__version__, lifespan=lifespan,
                  description="Trained dlforge runs over HTTP. Errors are JSON {\"error\": ...}.", docs_url=None,
                  redoc_url=None)
    swagger = _swagger_ui()
    if swagger is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=swagger), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The API's page, whole on this machine (offline, the CDN's page was blank)."""
        local = {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                 "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
                 "swagger_favicon_url": f"{DOCS_ASSETS}/favicon.png"} if swagger is not None else {}
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dlforge serve: the API", **local)
    app.state.models, app.state.metrics, app.state.limits = models, metrics, limits
    actions = {e.action for s in models.values() for e in s.family.endpoints}

    app.add_middleware(Guard, models=models, actions=actions, metrics=metrics, limits=limits, token=token,
                       hosts=hosts)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # routing's 404 / 405 as JSON
        return E.error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD: a monitor's check (was 405)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", summary="liveness: ok and the loaded runs")
    async def healthz() -> dict:
        return {"status": "ok", "models": list(models)}

    @app.get("/metrics", summary="Prometheus text format: requests, errors, latency, queue depth per model")
    async def metrics_text() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", summary="each run: name, family, task, classes or languages, sizes")
    async def list_models() -> dict:
        return {"models": [info(s) for s in models.values()]}

    def route(ep: E.Endpoint):
        async def call(name: str, request: Request):
            s = models.get(name)
            if s is None:
                raise RequestError(404, f"no model {name!r}; loaded: {', '.join(models)}")
            if ep not in s.family.endpoints:
                raise RequestError(404, f"model {name!r} ({s.family.name}) has no /{ep.action}; its endpoints: "
                                        f"{', '.join(e.action for e in s.family.endpoints)}")
            out = await ep.fn(s, request)
            return out if isinstance(out, Response) else JSONResponse(out)
        content = {"application/json": {"schema": ep.body.model_json_schema()}}
        if ep.multipart:
            content["multipart/form-data"] = {"schema": E.form_schema(ep)}
        app.add_api_route(f"/v1/models/{{name}}/{ep.action}", call, methods=["POST"], summary=ep.summary,
                          openapi_extra={"requestBody": {"required": True, "content": content}})

    seen = set()
    for s in models.values():
        for ep in s.family.endpoints:
            if ep.action not in seen:
                seen.add(ep.action)
                route(ep)

    @app.post("/v1/completions", summary="OpenAI's completions shape, for language-model runs",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": E.CompletionBody.model_json_schema()}}}})
    async def completions(request: Request):
        return await _completions(models, request)

    app.openapi = lambda: app.openapi_schema or _openapi(app, token is not None)
    return app


ERRORS = {400: "a field out of range or of the wrong type, named in the message", 401: "missing or wrong token",
          404: "no such model, or it has no such endpoint", 408: "the body did not arrive in full within --timeout",
          411: "no Content-Length (chunked bodies are refused)", 413: "the body is larger than the limit",
          415: "another Content-Type than the endpoint takes",
          429: "the model's queue is full: retry after Retry-After seconds",
          500: "a bug: the server's log names request_id beside the traceback",
          504: "the request ran past --timeout and was cancelled"}


def _openapi(app: FastAPI, token: bool) -> dict:
    """FastAPI's schema, saying what the server answers: its JSON errors (FastAPI listed only a 422, which the
    server never sends) and, with a token, the bearer scheme (Swagger UI then has its Authorize button; every
    "Try it out" was a 401)."""
    from fastapi.openapi.utils import get_openapi
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "request_id": {"type": "string", "description": "500 only"}}}
    for ops in spec["paths"].values():
        for method, op in ops.items():
            answers = op.setdefault("responses", {})
            answers.pop("422", None)
            codes = [400, 404, 408, 411, 413, 415, 429, 500, 504] if method == "post" else [500]
            if token:
                codes.append(401)
                op["security"] = [{"bearer": []}]
            for code in sorted(codes):
                answers[str(code)] = {"description": ERRORS[code], "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if token:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    app.openapi_schema = spec
    return spec


def _host_in(host: bytes, names: tuple[str, ...]) -> bool:
    """A Host header naming one of `names` (any port; a trailing dot allowed), or none (HTTP/1.0)."""
    text = host.decode("latin-1").strip().lower()
    if not text:
        return True
    name = text[1:text.find("]")] if text.startswith("[") else text.rsplit(":", 1)[0]
    return name.rstrip(".") in names


class Guard:
    """Pure ASGI middleware around every request (cheaper than BaseHTTPMiddleware, which costs a task and
    a stream per request): a request id, the token, the body size, errors as JSON and the metrics."""

    def __init__(self, app, models: dict, actions: set, metrics: Metrics, limits: Limits, token: str | None,
                 hosts: tuple[str, ...] | None = None):
        self.app, self.models, self.actions, self.metrics, self.limits = app, models, actions, metrics, limits
        self.token = None if token is None else token.encode()
        self.hosts = hosts

    def labels(self, path: str) -> tuple[str, str]:
        """(model, endpoint) for the metrics: only names the server knows (a client cannot mint labels)."""
        parts = path.strip("/").split("/")
        model = parts[2] if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[2] in self.models else "-"
        if model != "-" and parts[3] in self.actions:
            return model, parts[3]
        return model, path if path in ("/v1/models", "/v1/completions", "/healthz", "/metrics", "/") else "other"

    def check(self, scope) -> None:
        headers = dict(scope["headers"])
        if self.hosts is not None and not _host_in(headers.get(b"host", b""), self.hosts):
            # serve without a token (loopback): a page elsewhere could rename its own host to 127.0.0.1 (DNS
            # rebinding) and read every answer; its requests name that other host (as Jupyter checks)
            raise RequestError(403, f"Host: {headers[b'host'].decode('latin-1')[:80]}: this server answers requests "
                                    f"to 127.0.0.1, localhost or [::1] only; to be reached by another name, serve "
                                    f"with --token-file")
        if self.token is not None and scope["path"] not in PUBLIC and not scope["path"].startswith(DOCS_ASSETS + "/"):
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):  # any case: RFC 7235
                raise RequestError(401, "missing or wrong token: send Authorization: Bearer TOKEN",
                                   {"WWW-Authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            size = headers.get(b"content-length")
            if size is None:
                raise RequestError(411, "send the body with a Content-Length (chunked bodies are refused)")
            if not size.isdigit() or int(size) > self.limits.max_body_bytes:
                raise RequestError(413, f"the body is {size.decode(errors='replace')[:20]} bytes; at most "
                                        f"{self.limits.max_body_bytes:,}")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid, t0 = uuid.uuid4().hex[:16], time.perf_counter()
        model, endpoint = self.labels(scope["path"])
        started, body_read = False, scope["method"] not in ("POST", "PUT", "PATCH")
        gone, relay, watcher = threading.Event(), asyncio.Queue(), None
        CLIENT_GONE.set(gone)  # this request's tickets (batching.Ticket) stop once it is set

        async def watch():
            """Once the body is in, the one reader of the connection: a disconnect stops the request's work,
            and each message is passed on (a streaming answer listens for the disconnect too)."""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                await relay.put(message)
                if message["type"] == "http.disconnect":
                    return

        async def receive_in_time():
            """The body's parts within --timeout: a client that sends less than its Content-Length held the
            request open for ever (past --timeout, which counts from admission to a model's queue)."""
            nonlocal body_read, watcher
            if body_read:
                return await (relay.get() if watcher else receive())
            try:
                message = await asyncio.wait_for(receive(), max(t0 + self.limits.timeout_s - time.perf_counter(), 0))
            except asyncio.TimeoutError:
                raise RequestError(408, f"the body did not arrive in full within {self.limits.timeout_s:g} s",
                                   {"Connection": "close"}) from None
            body_read = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.disconnect":  # the client left during its upload
                gone.set()
            if body_read and message["type"] == "http.request":
                watcher = asyncio.create_task(watch())
            return message

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                # /v1/completions names its model in the body: _completions puts it in the scope once it is known
                self.metrics.observe(scope.get(MODEL_LABEL, model), endpoint, message["status"],
                                     time.perf_counter() - t0)
            await send(message)
        try:
            self.check(scope)
            await self.app(scope, receive_in_time, send_with_id)
            return
        except RequestError as e:
            response = E.error(e.status, str(e), e.headers)
        except ClientDisconnect:  # Starlette's, reading a body whose client left: a 499, not a bug's traceback
            gone.set()
        except DlforgeError as e:  # the handle names the command line's option; a client sent a JSON field
            response = E.error(400, E.as_field(str(e)))
        except Exception:  # noqa: BLE001  a bug: the log has the traceback, the client the id to find it
            log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
            response = E.error(500, f"internal error (request id {rid})", request_id=rid)
        finally:
            if watcher is not None:
                watcher.cancel()
        if not started and not gone.is_set():  # else the answer is under way (a stream), or no one is listening
            await response(scope, receive, send_with_id)
        elif not started:
            self.metrics.observe(scope.get(MODEL_LABEL, model), endpoint, 499, time.perf_counter() - t0)


async def _completions(models: dict[str, E.Served], request: Request):
    b = await E.json_body(request, E.CompletionBody)
    lms = [n for n, s in models.items() if s.handle.config.task == "language-model"]
    s = models.get(b.model)
    if s is None or b.model not in lms:
        raise RequestError(404, f"model: no language model {b.model!r}; loaded: {', '.join(lms) or 'none'}")
    request.scope[MODEL_LABEL] = b.model  # a name the server knows: the metrics count it under its model
    prompts = [b.prompt] if isinstance(b.prompt, str) else b.prompt
    stops = [b.stop] if isinstance(b.stop, str) else list(b.stop or [])
    if not prompts or len(prompts) * b.n > 8:
        raise RequestError(400, "prompt × n: give 1 to 8 completions per request")
    if b.stream and len(prompts) * b.n > 1:
        raise RequestError(400, "stream: one prompt and n = 1 only")
    if len(stops) > 4 or any(not x for x in stops):
        raise RequestError(400, "stop: at most 4 non-empty strings")
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    deadline = time.monotonic() + s.limits.timeout_s  # --timeout is the whole request's, however many completions
    seed = b.seed or 0
    top_p = None if b.top_p >= 1 else b.top_p

    def cut(text: str) -> tuple[str, bool]:
        hits = [text.index(x) for x in stops if x in text]
        return (text[:min(hits)], True) if hits else (text, False)

    async def one(prompt: str, i: int):
        E._sampling_checks(s, prompt, b.max_tokens, "max_tokens")
        ticket = s.worker.admit(deadline)  # before, each completion had a fresh --timeout: 8 ran 8 times as long
        gen = s.handle.stream(prompt, b.max_tokens, b.temperature, b.top_k, top_p, seed + i, counts=True)
        return E._pieces(ticket, gen, await E._first(ticket, gen))

    def usage(prompt_text: str, sampled: int) -> dict:  # the tokens sampled: re-encoding the text counted others
        p = len(s.handle.tokenizer.encode(prompt_text))
        return {"prompt_tokens": p, "completion_tokens": sampled, "total_tokens": p + sampled}

    def chunk(text: str, finish: str | None) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": b.model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    if b.stream:
        pieces = await one(prompts[0], 0)

        async def events():
            sent = ""
            try:
                async for p, _ in pieces:
                    text, stopped = cut(sent + p)
                    if text[len(sent):]:
                        yield f"data: {json.dumps(chunk(text[len(sent):], None))}\n\n"
                    sent = text
                    if stopped:
                        break
                else:
                    stopped = False
                yield f"data: {json.dumps(chunk('', 'stop' if stopped else 'length'))}\n\n"
            except RequestError as e:
                yield f"data: {json.dumps({'error': str(e), 'status': e.status})}\n\n"
            finally:
                await pieces.aclose()
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    choices, total = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for i, (prompt, k) in enumerate((p, k) for p in prompts for k in range(b.n)):
        pieces = await one(prompt, k)
        text, stopped, sampled = "", False, 0
        async for p, n in pieces:
            text, stopped = cut(text + p)
            sampled += n
            if stopped:
                break
        await pieces.aclose()
        choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": "stop" if stopped else "length"})
        for key, v in usage(prompt, sampled).items():
            total[key] += v
    return {"id": cid, "object": "text_completion", "created": created, "model": b.model, "choices": choices,
            "usage": total}


# ---------------------------------------------------------------- serve
def read_token(path: str | Path) -> str:
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise DlforgeError(f"--token-file {p}: cannot read it ({e.__class__.__name__})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise DlforgeError(f"--token-file {p}: expected one token of at least 16 characters without spaces")
    return token


def load_runs(runs: list[str | Path], device: str = "auto") -> dict[str, Handle]:
    """Each run loaded once -> {name: handle}; the name is the run directory's (numbered when two share one)."""
    import dlforge
    if not runs:
        raise DlforgeError("serve: give at least one run directory")
    out: dict[str, Handle] = {}
    for r in runs:
        h = dlforge.load(r, device=device)
        if h.config.task not in E.FAMILIES:
            raise DlforgeError(f"{r}: dlforge serve has no endpoints for task {h.config.task!r} yet")
        base = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(r).resolve().name) or "run"
        name, k = base, 1
        while name in out:
            k += 1
            name = f"{base}-{k}"
        out[name] = h
    return out


def serve(runs: list[str | Path], host: str = "127.0.0.1", port: int = 8000, token_file: str | Path | None = None,
          limits: Limits | None = None, device: str = "auto", log_level: str = "info") -> None:
    """Load the runs, then answer HTTP on host:port until SIGTERM / Ctrl-C (which stop accepting, finish the
    requests in flight and return). Any address but the loopback needs a token file."""
    import uvicorn
    token = read_token(token_file) if token_file else None
    if host not in LOCAL_HOSTS and token is None:
        raise DlforgeError(f"--host {host}: serving beyond this machine needs --token-file FILE (every request "
                           f"then sends Authorization: Bearer <the file's token>)")
    limits = limits or Limits()
    sock = listen(host, port)  # before the runs load: a port in use is one line, not uvicorn's log and exit 3
    try:
        app = create_app(load_runs(runs, device), limits, token, hosts=LOCAL_HOSTS if token is None else None)
    except BaseException:
        sock.close()
        raise
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    where = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    # uvicorn given a socket says nowhere where it listens (the README's "-> http://127.0.0.1:8000/")
    print(f"dlforge: serving {', '.join(app.state.models)} at {where}/ (the playground), {where}/docs (the API); "
          f"Ctrl-C stops", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=int(limits.timeout_s) + 5, limit_concurrency=4096,
                            timeout_keep_alive=30)  # uvicorn closes idle keep-alive connections after 5 s by default
    uvicorn.Server(config).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, for uvicorn to serve on. Checked here because uvicorn took --port 99999
    (and printed it, listening on another port), and said a port in use or a bad one in its log lines, exit 3."""
    if not 1 <= port <= 65535:
        raise DlforgeError(f"--port: expected 1..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise DlforgeError(f"--host {host}: not an address to listen on ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own: a restart need not wait
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise DlforgeError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock
