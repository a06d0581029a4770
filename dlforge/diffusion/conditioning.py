"""What a caption becomes for the denoiser: token ids for the UNet's own text encoder, or the states of a
frozen sentence-transformers model loaded from a local folder (nothing is downloaded at run time)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from dlforge.data import captions as C
from dlforge.errors import DlforgeError


def external_encoder(path: str, check_only: bool = False):
    """A frozen sentence-transformers model from a local folder (nothing is downloaded at run time)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DlforgeError(f"--text-encoder {path}: expected 'own' or a local sentence-transformers model folder "
                           f"(nothing is downloaded); no such folder")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DlforgeError(f"--text-encoder {path}: needs the sentence-transformers package "
                           f"(pip install sentence-transformers), which is not installed") from None
    if check_only:
        return None
    try:
        return SentenceTransformer(str(p), device="cpu", local_files_only=True)
    except Exception as e:  # whatever the folder holds, it is not a loadable model
        raise DlforgeError(f"--text-encoder {path}: cannot load a sentence-transformers model "
                           f"({type(e).__name__}: {str(e)[:160]})") from None


class Conditioner:
    """Captions -> the denoiser's condition: token ids (B, L) for the own text encoder, or a frozen
    sentence-transformers embedding as one state (B, 1, D). null(n): the empty caption / zero state."""

    def __init__(self, tok: C.CaptionTokenizer, external: str | None = None):
        self.tok, self.external = tok, external
        self.st = external_encoder(external) if external else None

    def encode(self, texts: list[str], warn: bool = False) -> torch.Tensor:
        """warn: texts are user prompts (checked; unknown words noted). A sentence-transformers encoder has its own
        tokenizer and vocabulary: any non-empty prompt goes to it as it is."""
        if self.st is not None:
            if warn and not all(t.strip() for t in texts):
                raise DlforgeError("--prompt: the prompt is empty")
            return torch.as_tensor(self.st.encode(texts, convert_to_numpy=True)).float()[:, None]
        rows, unknown = [], set()
        for text in texts:
            ids, unk = self.tok.encode_prompt(text) if warn else self.tok.encode(text)
            unknown.update(unk)
            rows.append(ids)
        if unknown and warn:  # one note for all the prompts
            print(f"dlforge: note: unknown words encoded as <unk>: {', '.join(sorted(unknown))}", file=sys.stderr)
        return self.tok.pad(rows)

    def null(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like[:1]).expand(n, *like.shape[1:]).clone() if like.is_floating_point() \
            else self.tok.null(n)
