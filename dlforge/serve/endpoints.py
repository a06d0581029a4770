"""The endpoints of each family, each a thin call of its handle (Classifier.predict's parts,
LanguageModel.stream / next_tokens / attention, Translator.translate / cross_attention, Diffuser.sample, Transcriber.transcribe), and
the table FAMILIES: task -> its family name, what /v1/models says of a run, and its endpoints. Serving a new
family is one more entry (speech was)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dlforge.errors import DlforgeError
from dlforge.recipes.base import Handle
from dlforge.serve.batching import Batcher, ModelWorker, Ticket
from dlforge.serve.limits import Limits, RequestError, b64decode, open_image

SEED = Field(0, ge=0, le=2 ** 32 - 1)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PredictBody(Body):
    images: list[str] = Field(min_length=1, description="images as base64 (PNG, JPEG, ...; a data: URL is fine)")
    top_k: int = Field(3, ge=1, le=1000)
    feature_maps: bool = Field(False, description="also the first convolution's feature maps of the first image")


class GenerateBody(Body):
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(100, ge=0)
    temperature: float = Field(0.8, ge=0, le=100, description="0: greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = SEED
    stream: bool = Field(False, description="server-sent events: data: {\"text\": piece} ..., then event: done")


class NextBody(Body):
    text: str = Field(min_length=1)
    top_k: int = Field(10, ge=1, le=1000)
    attention: bool = Field(False, description="a gpt's attention heads over the text")
    attention_last: int | None = Field(None, ge=1, description="only the attention among the text's last N tokens "
                                                                "(rows and columns): the playground asks for 48")


class TranslateBody(Body):
    texts: list[str] = Field(min_length=1)
    to: str | None = Field(None, description="the target language (see /v1/models: languages)")
    beam: int = Field(1, ge=1, le=8)
    attention: bool = Field(False, description="the cross-attention of the first text as data")


class SampleBody(Body):
    prompts: list[str] = Field(min_length=1)
    n: int = Field(1, ge=1, description="images per prompt")
    steps: int = Field(20, ge=1)
    guidance: float = Field(3.0, ge=0, le=30)  # the handle's own range (the schema said 50)
    sampler: Literal["ddim", "ddpm"] = "ddim"
    seed: int = SEED
    frames: int = Field(0, ge=0, le=50, description="0: none; else (2 or more) the reverse process of the first "
                                                     "image at this many steps, noise first")


class TranscribeBody(Body):
    audio: list[str] = Field(min_length=1, description="sound files as base64 (WAV, FLAC, OGG; a data: URL is fine)")
    beam: int = Field(1, ge=1, le=16, description="1: greedy; else CTC prefix beam search of this width")


class CompletionBody(BaseModel):
    """OpenAI's completions request; fields it has and dlforge does not use (logprobs, echo, penalties, user,
    ...) are accepted and ignored, so that existing clients work."""
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=2 ** 32 - 1)
    stop: str | list[str] | None = None


@dataclass
class Served:
    """One loaded run behind the server: its handle, worker (thread and queue) and, for classifiers, batcher."""
    name: str
    handle: Handle
    family: "Family"
    worker: ModelWorker
    limits: Limits
    batcher: Batcher | None = None


@dataclass
class Endpoint:
    action: str                   # POST /v1/models/{name}/{action}
    body: type[BaseModel]         # its JSON body (the OpenAPI schema, and the validation)
    fn: Callable                  # async (Served, Request) -> Response | dict
    summary: str
    multipart: str = ""           # also takes multipart/form-data: its files' field (its options: body's others)


@dataclass
class Family:
    name: str
    info: Callable[[Handle], dict]
    endpoints: list[Endpoint] = field(default_factory=list)
    setup: Callable[[Served], None] | None = None


# ---------------------------------------------------------------- request bodies
async def json_body(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON, validated: a 4xx error that names the field, never a 500."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(415, f"expected Content-Type: application/json, got {ctype or 'none'!r}")
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, an integer of 5,000 digits
        raise RequestError(400, "the body is not valid JSON") from None
    return validate(model, obj, strict=True)


def validate(model: type[BaseModel], obj: Any, strict: bool = False) -> Any:
    """strict: JSON has types of its own, and each field must have its type ("top_k": true or "3" was taken as 1
    or 3, "feature_maps": "yes" as true); a multipart form's fields are all text, converted here."""
    try:
        return model.model_validate(obj, strict=strict)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "the body"
        raise RequestError(400, f"{where}: {err['msg']}"[:300]) from None
    except RecursionError:
        raise RequestError(400, "the body is nested too deep") from None


async def form_files(request: Request, max_files: int, field: str, what: str,
                     options: tuple[str, ...]) -> tuple[list[bytes], dict[str, str]]:
    """A multipart body -> (the bytes of its files, its other fields), every problem a 400 naming it."""
    try:
        form = await request.form(max_files=max_files, max_fields=2 * len(options) + 4)
    except Exception:  # noqa: BLE001  python-multipart's errors vary by version: every one is a bad body
        raise RequestError(400, f"the multipart body is malformed, or holds more than {max_files} files") from None
    files, fields = [], {}
    for key, value in form.multi_items():  # before: a file under any name was an image, the last repeat won
        is_file = hasattr(value, "read")
        if key == field:
            if not is_file:
                raise RequestError(400, f"{field}: expected a file, got text")
            files.append(await value.read())
        elif key not in options:
            raise RequestError(400, f"{key}: unknown field; expected {', '.join((field,) + options)}")
        elif is_file:
            raise RequestError(400, f"{key}: expected text, got a file")
        elif key in fields:
            raise RequestError(400, f"{key}: given twice")
        else:
            fields[key] = value
    if not files:
        raise RequestError(400, f"{field}: give at least one {what} (multipart field '{field}')")
    return files, fields


def form_options(body: type[BaseModel]) -> tuple[str, ...]:
    """A multipart form's text fields: the JSON body's fields after its first (the base64 files)."""
    return tuple(list(body.model_fields)[1:])


def form_schema(ep: "Endpoint") -> dict:
    """The OpenAPI schema of ep's multipart form, from what form_files takes (it documented predict's fields
    for transcribe too)."""
    props = ep.body.model_json_schema()["properties"]
    return {"type": "object", "required": [ep.multipart], "properties": {
        ep.multipart: {"type": "array", "items": {"type": "string", "format": "binary"}},
        **{k: props[k] for k in form_options(ep.body)}}}


def _floats(t: torch.Tensor) -> list:
    return ((t.double() * 1e4).round() / 1e4).tolist()


def png_b64(array) -> str:
    """uint8 (H, W) or (H, W, C) / a PIL image -> base64 PNG."""
    from PIL import Image
    im = array if hasattr(array, "save") else Image.fromarray(array)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def check_len(text: str, limit: int, what: str) -> None:
    if len(text) > limit:
        raise RequestError(400, f"{what}: {len(text):,} characters; at most {limit:,}")


# ---------------------------------------------------------------- classify
async def _predict_inputs(s: Served, request: Request) -> tuple[list[bytes], int, bool]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        b = await json_body(request, PredictBody)
        if len(b.images) > s.limits.max_images:
            raise RequestError(400, f"images: {len(b.images)} images; at most {s.limits.max_images} per request")
        return [b64decode(t, f"images.{i}") for i, t in enumerate(b.images)], b.top_k, b.feature_maps
    files, fields = await form_files(request, s.limits.max_images, "image", "image file", form_options(PredictBody))
    b = validate(PredictBody, {"images": ["x"], **fields})
    return files, b.top_k, b.feature_maps


def _decode(s: Served, blobs: list[bytes]) -> tuple[torch.Tensor, list]:
    pil = [open_image(b, s.limits, f"image {i}") for i, b in enumerate(blobs)]
    return s.handle.as_batch(pil), pil


async def predict(s: Served, request: Request) -> dict:
    blobs, top_k, want_maps = await _predict_inputs(s, request)
    ticket = s.worker.admit()
    try:
        # small images decode in microseconds: a thread hop would cost more than it saves
        x, pil = _decode(s, blobs) if sum(map(len, blobs)) < 1 << 16 else await asyncio.to_thread(_decode, s, blobs)
        probs = await s.batcher.submit(ticket, x)
        out = {"model": s.name, "predictions": s.handle.top_classes(probs, top_k)}
        if want_maps:
            fm = await ticket.run(s.handle.feature_maps, pil[0])
            maps = (fm["maps"] * 255).round().to(torch.uint8).numpy()
            out["feature_maps"] = {"layer": fm["layer"], "shape": list(maps.shape), "png": [png_b64(m) for m in maps]}
        return out
    finally:
        ticket.release()


def classify_info(h) -> dict:
    c, hgt, w = h.config.facts["native_size"]
    return {"classes": h.classes, "image": {"channels": c, "height": hgt, "width": w,
                                            "model_size": h.config.facts["transform"]["img_size"]},
            "feature_maps": any(isinstance(m, torch.nn.Conv2d) for m in h.model.modules())}  # an mlp has none


def classify_setup(s: Served) -> None:
    s.batcher = Batcher(s.worker, s.handle.probabilities)


# ---------------------------------------------------------------- language models
def _next_piece(gen):
    return next(gen, None)


def as_field(message: str) -> str:
    """A handle's error over HTTP: the option it begins with, as the JSON field a client sends ("--top-k: …" ->
    "top_k: …", "--prompt: …" -> "prompt: …")."""
    return re.sub(r"^--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _sampling_checks(s: Served, prompt: str, max_new: int, field: str = "max_new_tokens") -> None:
    check_len(prompt, s.limits.max_prompt_chars, "prompt")
    if max_new > s.limits.max_new_tokens:  # field: the name the request used (completions: max_tokens)
        raise RequestError(400, f"{field}: {max_new}; at most {s.limits.max_new_tokens}")


async def _first(ticket: Ticket, gen) -> tuple[str, int] | None:
    """The first piece: a bad prompt (a character the tokenizer does not know) is a 400 before any stream."""
    try:
        return await ticket.run(_next_piece, gen)
    except BaseException:
        ticket.release()
        raise


async def _pieces(ticket: Ticket, gen, first: tuple[str, int] | None) -> AsyncIterator[tuple[str, int]]:
    """The pieces of one generation (handle.stream(..., counts=True): each a piece of text and the number of
    tokens it decodes), each token sampled in the model's thread; the ticket ends with them."""
    try:
        piece = first
        while piece is not None:
            yield piece
            piece = await ticket.run(_next_piece, gen)
    finally:
        ticket.release()
        ticket.worker.pool.submit(gen.close)  # the generator lives in the model's thread


def sse(event: dict, name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(event)}\n\n"


async def _sse_stream(pieces: AsyncIterator[tuple[str, int]], done: Callable[[str, int], dict]
                      ) -> AsyncIterator[str]:
    text, tokens = [], 0
    try:
        async for p, n in pieces:
            text.append(p)
            tokens += n
            yield sse({"text": p})
    except RequestError as e:  # the timeout, after the 200 was sent: said in the stream
        yield sse({"error": str(e), "status": e.status}, "error")
        return
    finally:  # also when the client goes away mid-stream: its ticket ends now, not at garbage collection
        await pieces.aclose()
    yield sse(done("".join(text), tokens), "done")


async def generate(s: Served, request: Request) -> Response | dict:
    b = await json_body(request, GenerateBody)
    _sampling_checks(s, b.prompt, b.max_new_tokens)
    ticket = s.worker.admit()
    gen = s.handle.stream(b.prompt, b.max_new_tokens, b.temperature, b.top_k, b.top_p, b.seed, counts=True)
    pieces = _pieces(ticket, gen, await _first(ticket, gen))

    def done(completion: str, tokens: int) -> dict:  # tokens: those sampled (re-encoding the text counted others)
        return {"model": s.name, "prompt": b.prompt, "completion": completion, "text": b.prompt + completion,
                "tokens": tokens}
    if b.stream:
        return StreamingResponse(_sse_stream(pieces, done), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    got = [p async for p in pieces]
    return done("".join(t for t, _ in got), sum(n for _, n in got))


async def next_tokens(s: Served, request: Request) -> dict:
    b = await json_body(request, NextBody)
    check_len(b.text, s.limits.max_prompt_chars, "text")
    ticket = s.worker.admit()
    try:
        out = {"model": s.name, "text": b.text, "next": await ticket.run(s.handle.next_tokens, b.text, b.top_k)}
        if b.attention:
            a = await ticket.run(s.handle.attention, b.text)
            k = b.attention_last or len(a["tokens"])  # a 256-token context was 12.9 MB of JSON on every pause
            out["attention"] = {"tokens": a["tokens"][-k:], "layers": [_floats(m[..., -k:, -k:]) for m in a["layers"]]}
        return out
    finally:
        ticket.release()


def lm_info(h) -> dict:
    m = h.model
    return {"tokenizer": h.config.data.get("tokenizer"), "vocab_size": h.tokenizer.vocab_size,
            "block_size": m.block_size, "attention": hasattr(m, "attention_maps")}


# ---------------------------------------------------------------- translation
async def translate(s: Served, request: Request) -> dict:
    b = await json_body(request, TranslateBody)
    if len(b.texts) > s.limits.max_texts:
        raise RequestError(400, f"texts: {len(b.texts)} texts; at most {s.limits.max_texts} per request")
    for i, t in enumerate(b.texts):
        check_len(t, s.limits.max_text_chars, f"texts.{i}")
    ticket = s.worker.admit()
    try:
        out = {"model": s.name, "translations": await ticket.run(s.handle.translate, b.texts, b.to, b.beam)}
        if b.attention:
            a = await ticket.run(s.handle.cross_attention, b.texts[0], b.to, out["translations"][0]["translation"])
            out["attention"] = {"source_tokens": a["source_tokens"], "output_tokens": a["output_tokens"],
                                "layers": [_floats(m) for m in a["layers"]]}
        return out
    finally:
        ticket.release()


def seq2seq_info(h) -> dict:
    dc = h.data_config
    return {"languages": list(dc.targets), "max_len": dc.max_len, "tokenizer": dc.tokenizer}


# ---------------------------------------------------------------- diffusion
async def sample(s: Served, request: Request) -> dict:
    b = await json_body(request, SampleBody)
    lim = s.limits
    if len(b.prompts) * b.n > lim.max_sample_images:
        raise RequestError(400, f"prompts × n: {len(b.prompts) * b.n} images; at most {lim.max_sample_images} "
                                f"per request")
    if b.steps > lim.max_steps:
        raise RequestError(400, f"steps: {b.steps}; at most {lim.max_steps}")
    if b.frames == 1:  # the first frame is the noise and the last the image: 1 gave 2
        raise RequestError(400, "frames: 0 (none) or 2 to 50 (the first is the noise, the last the image)")
    for i, p in enumerate(b.prompts):
        check_len(p, lim.max_prompt_chars, f"prompts.{i}")
    ticket = s.worker.admit()
    try:
        res = await ticket.run(lambda: s.handle.sample(b.prompts, b.n, b.sampler, b.steps, b.guidance, None, b.seed,
                                                       trajectory=b.frames > 0, frames=max(b.frames, 2),
                                                       callback=ticket.check))
    finally:
        ticket.release()
    imgs, traj = res if b.frames else (res, [])
    prompts = [p for p in b.prompts for _ in range(b.n)]
    out = {"model": s.name, "images": [{"prompt": p, "png": png_b64(im)} for p, im in zip(prompts, imgs)]}
    if b.frames:
        out["frames"] = [{"t": int(t), "png": png_b64(ims[0])} for t, ims in traj]
    return out


def denoise_info(h) -> dict:
    from dlforge.data.captions import canonical_prompts
    k, classes = h.config.model_kwargs, h.config.facts.get("classes")
    name = h.config.data.get("name", "")
    return {"image": {"channels": k.get("in_channels", 1), "height": k["img_size"], "width": k["img_size"]},
            "timesteps": h.config.task_options["num_train_timesteps"], "classes": classes,
            "example_prompts": canonical_prompts(name, classes)[:10] if classes else []}


# ---------------------------------------------------------------- speech
async def _transcribe_inputs(s: Served, request: Request) -> tuple[list[bytes], int]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        b = await json_body(request, TranscribeBody)
        if len(b.audio) > s.limits.max_clips:
            raise RequestError(400, f"audio: {len(b.audio)} clips; at most {s.limits.max_clips} per request")
        return [b64decode(t, f"audio.{i}") for i, t in enumerate(b.audio)], b.beam
    files, fields = await form_files(request, s.limits.max_clips, "audio", "sound file", form_options(TranscribeBody))
    return files, validate(TranscribeBody, {"audio": ["x"], **fields}).beam


def _waves(s: Served, blobs: list[bytes]) -> list:
    from dlforge.data.speech import SAMPLE_RATE, audio_from_bytes
    try:
        return [(audio_from_bytes(b, s.limits.max_audio_seconds, f"audio {i}"), SAMPLE_RATE)
                for i, b in enumerate(blobs)]
    except DlforgeError as e:  # the client's audio, named by its clip: a 400 (anything else is a bug: a 500)
        raise RequestError(400, str(e)) from None


async def transcribe(s: Served, request: Request) -> dict:
    blobs, beam = await _transcribe_inputs(s, request)
    ticket = s.worker.admit()
    try:
        waves = await asyncio.to_thread(_waves, s, blobs)
        out = await ticket.run(s.handle.transcribe, waves, beam)
        return {"model": s.name, "transcripts": [{"clip": i, "text": r["text"], "seconds": r["seconds"]}
                                                  for i, r in enumerate(out)]}
    finally:
        ticket.release()


def speech_info(h) -> dict:
    from dlforge.data.speech import SAMPLE_RATE
    return {"characters": "".join(h.labels), "sample_rate": SAMPLE_RATE, "n_mels": h.n_mels,
            "languages": list(h.config.data.get("langs") or [])}


# ---------------------------------------------------------------- the table
FAMILIES: dict[str, Family] = {
    "classify": Family("classifier", classify_info, [
        Endpoint("predict", PredictBody, predict, "image(s) -> top-k classes with probabilities (JSON base64 or "
                                                  "multipart 'image' files)", multipart="image")], classify_setup),
    "language-model": Family("language-model", lm_info, [
        Endpoint("generate", GenerateBody, generate, "continue a prompt (stream: server-sent events)"),
        Endpoint("next", NextBody, next_tokens, "next-token probabilities (and a gpt's attention)")]),
    "seq2seq": Family("translator", seq2seq_info, [
        Endpoint("translate", TranslateBody, translate, "texts and `to` -> translations (and cross-attention)")]),
    "denoise": Family("diffusion", denoise_info, [
        Endpoint("sample", SampleBody, sample, "prompts -> PNG images (and the denoising frames)")]),
    "speech": Family("speech", speech_info, [
        Endpoint("transcribe", TranscribeBody, transcribe, "sound files -> transcripts (JSON base64 or multipart "
                                                           "'audio' files)", multipart="audio")]),
}


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status, headers=headers)
