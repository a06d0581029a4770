"""What one request may ask of the server, and the image reader that refuses bombs before decoding."""
from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass

from dlforge.errors import DlforgeError


class RequestError(DlforgeError):
    """A request the server refuses: the HTTP status and the one-line message of its JSON error."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass
class Limits:
    """Each a clear 4xx JSON error when passed (413 for the body, 400 for the rest)."""
    max_body_bytes: int = 8 << 20        # a request body
    max_pixels: int = 4096 * 4096        # one image's width × height, read from its header
    max_images: int = 32                 # images in one predict request
    max_prompt_chars: int = 2000         # a prompt (generate, next, completions, sample)
    max_text_chars: int = 500            # one text to translate
    max_texts: int = 16                  # texts in one translate request
    max_new_tokens: int = 512            # generate / completions
    max_steps: int = 200                 # denoising steps of one sample request
    max_sample_images: int = 8           # prompts × n of one sample request
    max_clips: int = 8                   # sound files in one transcribe request
    max_audio_seconds: float = 30.0      # one clip
    queue_size: int = 64                 # admitted requests per model (running or waiting); then 429
    timeout_s: float = 30.0              # one request; then 504
    max_batch: int = 32                  # dynamic batching of predict: images in one forward pass (1: off)
    max_wait_ms: float = 5.0             # ... and the longest a request waits for others to join it

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_images", "queue_size", "max_batch"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(self, name)}")
        # nan passed every comparison: --timeout nan was a traceback, --max-wait-ms nan killed the batcher
        if not 0 < self.timeout_s < math.inf:
            raise DlforgeError(f"--timeout: expected a positive, finite number of seconds, got {self.timeout_s}")
        if not 0 <= self.max_wait_ms < math.inf:
            raise DlforgeError(f"--max-wait-ms: expected 0 or more milliseconds, finite, got {self.max_wait_ms}")


FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # what PIL may open: no format plugin beyond these


def b64decode(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, with or without a data: URL prefix."""
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{what}: not valid base64") from None


def open_image(data: bytes, limits: Limits, what: str):
    """Image bytes -> a decoded PIL image. The pixel count comes from the header, before any decoding: a
    decompression bomb is refused without being expanded."""
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)  # lazy: reads the header only
    except Image.DecompressionBombError:  # PIL's own check, from the header too, over 2 × 89 megapixels
        raise RequestError(400, f"{what}: a decompression bomb; at most {limits.max_pixels:,} pixels per image") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(400, f"{what}: not an image (expected {', '.join(FORMATS)})") from None
    w, h = im.size
    if w * h > limits.max_pixels or w < 1 or h < 1:
        raise RequestError(400, f"{what}: {w}×{h} pixels; at most {limits.max_pixels:,} pixels per image")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        raise RequestError(400, f"{what}: the image data is truncated or corrupt") from None
    return im
