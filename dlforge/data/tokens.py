"""A text corpus of any size, tokenized once into an array file on disk (as nanoGPT's train.bin).

A corpus is a file or a folder of text files (.txt, .md, source files; any of them gzipped), read in
chunks that end at a line break, never whole. The token ids are written chunk by chunk, in the narrowest
unsigned type that holds the vocabulary (uint16 up to 65,536 tokens), to
$DLFORGE_CACHE/tokens/<key>.bin, keyed by the corpus's content and the tokenizer; a later run maps the
same file. The tokenizer itself is cached beside it, keyed by the content and its settings: char reads
every character of the corpus, word and BPE are fitted on a bounded sample spread over it.

Memory stays flat: one chunk of text and its ids at a time while tokenizing; while training, each batch's
windows are read from the file (TokenArray) and the operating system's page cache keeps what is hot.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dlforge.data.download import cache_dir, exclusive
from dlforge.errors import DlforgeError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts",
                 ".go", ".rs", ".rb", ".sh", ".tex", ".html", ".css", ".json", ".yaml", ".yml", ".toml", ".csv"}
CHUNK_BYTES = 4 << 20    # text per chunk: a corpus up to this size is encoded in one piece, as before
SAMPLE_BYTES = 64 << 20  # word / BPE tokenizers are fitted on at most this much text, spread over the corpus
FORMAT = 1


def corpus_files(path: str | Path, option: str = "--data-file") -> list[Path]:
    """A file, or every text file below a folder (sorted, so the order and the digest are reproducible)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DlforgeError(f"{option} {p}: no such file or folder")
    files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in
                   f.relative_to(p).parts) and _suffix(f) in TEXT_SUFFIXES)
    if not files:
        raise DlforgeError(f"{option} {p}: the folder holds no text files ({', '.join(sorted(TEXT_SUFFIXES))}, "
                           f"or any of them .gz)")
    return files


def _suffix(f: Path) -> str:
    return Path(f.stem).suffix.lower() if f.suffix.lower() == ".gz" else f.suffix.lower()


def _open(f: Path):
    return gzip.open(f, "rb") if f.suffix.lower() == ".gz" else open(f, "rb")


def _raw_chunks(files: list[Path], size: int | None = None) -> Iterator[tuple[Path, bytes]]:
    """(file, bytes) pieces of about `size` (CHUNK_BYTES) bytes that end at a line break (or the file's end)."""
    size = size or CHUNK_BYTES
    for f in files:
        try:
            with _open(f) as fh:
                rest = b""
                while True:
                    block = fh.read(size)
                    if not block:
                        break
                    block = rest + block
                    cut = block.rfind(b"\n") + 1
                    if cut == 0 and len(block) < 4 * size:  # a very long line: read on
                        rest = block
                        continue
                    cut = cut or len(block)
                    rest = block[cut:]
                    yield f, block[:cut]
                if rest:
                    yield f, rest
        except (OSError, EOFError) as e:
            raise DlforgeError(f"--data-file {f}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def text_chunks(files: list[Path], size: int | None = None) -> Iterator[tuple[str, int]]:
    """(text, bytes) chunks of the corpus, decoded; a file that is not UTF-8 is an error naming it."""
    for f, raw in _raw_chunks(files, size):
        try:
            yield raw.decode("utf-8"), len(raw)
        except UnicodeDecodeError as e:
            raise DlforgeError(f"--data-file {f}: not UTF-8 text (byte {e.start} of a chunk: "
                               f"{raw[e.start:e.start + 1]!r})") from None


def digest(files: list[Path]) -> str:
    """sha256 of the content: of the file's bytes for one file (as dlforge 0.1 recorded it), else of every
    file's name and bytes in order."""
    if len(files) == 1:
        h = hashlib.sha256()
        for _, raw in _raw_chunks(files, 16 << 20):
            h.update(raw)
        return h.hexdigest()
    h = hashlib.sha256()
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    for f in files:
        one = hashlib.sha256()
        for _, raw in _raw_chunks([f], 16 << 20):
            one.update(raw)
        h.update(f"{f.relative_to(root)}\0{one.hexdigest()}\n".encode())
    return h.hexdigest()


def total_bytes(files: list[Path]) -> int:
    """The corpus's size on disk (compressed files count as stored): what the progress bar measures."""
    return sum(f.stat().st_size for f in files)


def sample_text(files: list[Path], limit: int | None = None) -> str:
    """About `limit` (SAMPLE_BYTES) bytes of text: every k-th chunk, so the sample spans the whole corpus."""
    limit = limit or SAMPLE_BYTES
    size = total_bytes(files)
    every = max(1, -(-size // limit))
    parts, got = [], 0
    for i, (text, n) in enumerate(text_chunks(files)):
        if i % every == 0 and got < limit:
            parts.append(text)
            got += n
    return "".join(parts)


def characters(files: list[Path]) -> list[str]:
    """Every character of the corpus, sorted (the char tokenizer's vocabulary)."""
    seen: set[str] = set()
    for text, _ in text_chunks(files):
        seen.update(text)
    return sorted(seen)


def dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


READ_TOKENS = 1 << 20  # a slice up to this long is read into a tensor; a longer one stays a view of the file


class TokenArray:
    """The ids of a token-cache file, read with pread when sliced: ids[a:b] is a tensor (uint16/uint32) when
    it is short, else a TokenArray of that range. Not a memory map: the mapped pages of a random-access reader
    pile up in the process's resident memory (measured here: 1 MB a window, through readahead: 2.2 GB after
    100 batches of 32), which is why nanoGPT re-creates its np.memmap every batch. Read pages stay in the
    operating system's page cache instead, which it shares and reclaims."""

    def __init__(self, path: Path, dtype: np.dtype, start: int = 0, length: int | None = None):
        self.path, self.np_dtype, self.start = Path(path), np.dtype(dtype), start
        self.length = (self.path.stat().st_size // self.np_dtype.itemsize - start) if length is None else length
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.length

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint16 if self.np_dtype == np.uint16 else torch.uint32

    def __getitem__(self, k: slice):
        if not isinstance(k, slice) or k.step not in (None, 1):
            raise TypeError("TokenArray: only contiguous slices ids[a:b]")
        a, b, _ = k.indices(self.length)
        b = max(a, b)
        if b - a <= READ_TOKENS:
            return self.read(a, b - a)
        return TokenArray(self.path, self.np_dtype, self.start + a, b - a)

    def read(self, i: int = 0, n: int | None = None) -> torch.Tensor:
        """Tokens [i, i + n) of this range (all of them by default) as a tensor."""
        n = self.length - i if n is None else n
        if self._pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        buf = bytearray(n * self.np_dtype.itemsize)
        got = os.preadv(self._fd, [buf], (self.start + i) * self.np_dtype.itemsize)
        if got != len(buf):
            raise DlforgeError(f"{self.path}: the token cache is shorter than its index says (delete it)")
        return torch.from_numpy(np.frombuffer(buf, dtype=self.np_dtype))

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def as_tensor(ids) -> torch.Tensor:
    return ids.read() if isinstance(ids, TokenArray) else ids


@dataclass
class Tokens:
    """A tokenized corpus on disk: ids (N,) its TokenArray, chunk_tokens and
    chunk_chars per text chunk (to count the characters of any tail without decoding the whole)."""
    ids: "TokenArray"
    path: Path
    chunk_tokens: list[int]
    chunk_chars: list[int]
    seconds: float = 0.0  # spent tokenizing now (0: the cache was there)

    def chars_from(self, start: int, tok) -> int:
        """Characters of the text from token `start` on (bits per character of the validation tail)."""
        total, pos = 0, 0
        for n, c in zip(self.chunk_tokens, self.chunk_chars):
            if pos >= start:
                total += c
            elif pos + n > start:  # the chunk the tail starts in: decode only its share (char: one per token)
                total += pos + n - start if tok.kind == "char" else \
                    len(tok.decode(as_tensor(self.ids[start:pos + n]).long().tolist()))
            pos += n
        return total


def _encoder(tok):
    """text -> np ids. A char tokenizer maps code points through one lookup table (NumPy, ~50x faster than
    a Python loop); word and BPE use the tokenizer itself (BPE: Hugging Face's Rust encoder)."""
    if tok.kind == "char" and tok.vocab is not None and all(len(t) == 1 for t in tok.vocab):
        points = np.array([ord(t) for t in tok.vocab], dtype=np.int64)
        table = np.full(int(points.max()) + 1, -1, dtype=np.int64)
        table[points] = np.arange(len(points))

        def encode(text: str) -> np.ndarray:
            cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
            ids = np.where(cp < len(table), table[np.minimum(cp, len(table) - 1)], -1)
            if (ids < 0).any():
                bad = sorted({chr(c) for c in cp[ids < 0][:1000]})
                raise DlforgeError(f"the text has characters the char tokenizer never saw: "
                                   f"{', '.join(map(repr, bad[:8]))}")
            return ids
        return encode
    return lambda text: np.asarray(tok.encode(text), dtype=np.int64)


def _encode_word_chunk(args) -> np.ndarray:
    tok_json, text = args
    from dlforge.data.text import TextTokenizer
    return np.asarray(TextTokenizer.from_json(tok_json).encode(text), dtype=np.int64)


def _encoded(files: list[Path], tok, workers: int) -> Iterator[tuple[np.ndarray, int, int]]:
    """(ids, characters, bytes) per chunk, in corpus order. Word chunks are encoded by `workers` processes
    (its encoder is Python); BPE batches chunks through the Rust encoder, which uses every core."""
    chunks = text_chunks(files)
    if tok.kind == "bpe" and tok.hf is not None:
        batch: list[tuple[str, int]] = []
        for item in chunks:
            batch.append(item)
            if len(batch) == 2:  # 2 chunks: both cores busy, and the Encodings of only 8 MB alive at once
                yield from _bpe_batch(tok, batch)
                batch = []
        yield from _bpe_batch(tok, batch)
    elif tok.kind == "word" and workers > 1:
        tj = tok.to_json()
        with ProcessPoolExecutor(workers) as pool:
            window: list = []
            for text, n in chunks:
                window.append((pool.submit(_encode_word_chunk, (tj, text)), len(text), n))
                if len(window) >= 2 * workers:
                    fut, c, b = window.pop(0)
                    yield fut.result(), c, b
            for fut, c, b in window:
                yield fut.result(), c, b
    else:
        encode = _encoder(tok)
        for text, n in chunks:
            yield encode(text), len(text), n


def _bpe_batch(tok, batch: list[tuple[str, int]]):
    if not batch:
        return
    for enc, (text, n) in zip(tok.hf.encode_batch([t for t, _ in batch]), batch):
        yield np.asarray(enc.ids, dtype=np.int64), len(text), n


def tokenize(files: list[Path], tok, corpus_digest: str, progress: bool = True, workers: int | None = None) -> Tokens:
    """The corpus's ids, from the cache or tokenized now (written to a .part file, renamed once whole)."""
    key = hashlib.sha256(f"{FORMAT}\0{corpus_digest}\0{tok.to_json()}".encode()).hexdigest()[:32]
    folder = cache_dir() / "tokens"
    path, meta_path = folder / f"{key}.bin", folder / f"{key}.json"
    dtype = dtype_for(tok.vocab_size)
    meta = _read_meta(meta_path, path, dtype)
    seconds = 0.0
    if meta is None:
        folder.mkdir(parents=True, exist_ok=True)
        # Runs of one corpus at once (torchrun's ranks, two trainings): one tokenizes, the others wait and map its
        # cache. Without the lock they wrote the same .part file and all but one failed.
        with exclusive(folder / f"{key}.lock"):
            meta = _read_meta(meta_path, path, dtype)
            if meta is None:
                t0 = time.perf_counter()
                meta = _write(files, tok, path, meta_path, dtype, progress, workers or min(4, os.cpu_count() or 1))
                seconds = time.perf_counter() - t0
    return Tokens(TokenArray(path, dtype), path, meta["chunk_tokens"], meta["chunk_chars"], seconds)


def _read_meta(meta_path: Path, path: Path, dtype: np.dtype) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("dtype") == dtype.name and path.stat().st_size == sum(meta["chunk_tokens"]) * dtype.itemsize:
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write(files: list[Path], tok, path: Path, meta_path: Path, dtype: np.dtype, progress: bool,
           workers: int) -> dict:
    from tqdm.auto import tqdm

    from dlforge.runs import atomic_write_json
    part = path.with_name(path.name + ".part")
    counts, chars = [], []
    bar = tqdm(total=total_bytes(files), unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
               disable=not progress or not sys.stderr.isatty(), mininterval=0.5)
    try:
        with open(part, "wb") as out:
            for ids, c, b in _encoded(files, tok, workers):
                ids.astype(dtype).tofile(out)
                counts.append(len(ids))
                chars.append(c)
                bar.update(b)
        os.replace(part, path)
    except OSError as e:
        raise DlforgeError(f"{part}: cannot write the token cache ({e.strerror})") from None
    finally:
        bar.close()
        part.unlink(missing_ok=True)
    meta = {"format": FORMAT, "dtype": dtype.name, "chunk_tokens": counts, "chunk_chars": chars,
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "files": len(files)}
    atomic_write_json(meta_path, meta)
    return meta


def cached_tokenizer(files: list[Path], corpus_digest: str, kind: str, vocab_size: int | None, fit):
    """The tokenizer fitted on this corpus with these settings, from the cache or fitted now with
    fit(kind, text_or_characters) and kept."""
    from dlforge.data.text import TextTokenizer
    key = hashlib.sha256(f"{FORMAT}\0{corpus_digest}\0{kind}\0{vocab_size}\0{SAMPLE_BYTES}".encode()).hexdigest()[:32]
    path = cache_dir() / "tokens" / f"{key}.tokenizer.json"
    if path.is_file():
        try:
            return TextTokenizer.load(path)
        except DlforgeError:
            pass  # a torn or foreign file: fit again
    tok = fit(files)
    try:
        tok.save(path)
    except (OSError, DlforgeError):
        pass  # a read-only cache: fitting again next time is only slower
    return tok
