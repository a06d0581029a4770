"""Text corpora and tokenizers for language models.

Corpora: any UTF-8 file (`--data-file`) or a named one downloaded into the cache with its checksum
(`tinyshakespeare`). Tokenizers, fitted on the whole corpus and saved as JSON in the run directory:
  char — one token per Unicode character (vocabulary: the characters of the corpus);
  word — GPT-2-style pieces: words with their leading space, punctuation runs, whitespace runs; the
         --vocab-size most frequent (default 10,000), every other piece <unk> (or " <unk>" when it
         starts with a space, so that decoding keeps the spacing and shows where a word was lost);
  bpe  — byte-level byte-pair encoding trained with Hugging Face `tokenizers` (any text encodes).
decode(encode(text)) == text for char and bpe, and for word on text of known words. char refuses
text with characters it never saw, as do word tokenizers saved before <unk> (format 1).
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from dlforge.data.download import cache_dir, download
from dlforge.errors import DlforgeError

TOKENIZERS = ("char", "word", "bpe")
WORD_PATTERN = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?\w+| ?[^\s\w]+|\s+(?!\S)|\s+")
WORD_UNKS = ("<unk>", " <unk>")  # never pieces of WORD_PATTERN ("<", "unk", ">"): no word collides with them
WORD_VOCAB_SIZE = 10_000         # the word tokenizer's default cap


@dataclass(frozen=True)
class Corpus:
    url: str
    checksum: str
    description: str


CORPORA: dict[str, Corpus] = {
    "tinyshakespeare": Corpus(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "Karpathy's tiny Shakespeare, 1,115,394 characters (char-rnn)"),
}


def corpus_path(name: str) -> Path:
    return cache_dir() / name / "input.txt"


def read_text(path: str | Path, option: str = "--data-file") -> str:
    """A UTF-8 text file -> str; a missing, empty or non-UTF-8 file is one clear error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DlforgeError(f"{option} {path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DlforgeError(f"{option} {path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    if not text.strip():
        raise DlforgeError(f"{option} {path}: the file is empty")
    return text


def named_corpus_file(name: str | None) -> Path:
    """A named corpus's file, downloaded and verified on first use."""
    if name not in CORPORA:
        raise DlforgeError(f"--data: unknown text corpus {name!r}; expected one of: {', '.join(CORPORA)} "
                           f"(or --data-file PATH)")
    c = CORPORA[name]
    return Path(download(c.url, corpus_path(name), c.checksum))


def load_corpus(name: str | None, data_file: str | None = None) -> str:
    """The text of a named corpus (downloaded and verified once) or of a UTF-8 file."""
    if data_file:
        return read_text(data_file)
    if name not in CORPORA:
        raise DlforgeError(f"--data: unknown text corpus {name!r}; expected one of: {', '.join(CORPORA)} "
                           f"(or --data-file PATH)")
    c = CORPORA[name]
    return read_text(download(c.url, corpus_path(name), c.checksum), "--data")


# ---------------------------------------------------------------- tokenizers
class TextTokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str; to_json() / from_json() restore it exactly."""

    def __init__(self, kind: str, vocab: list[str] | None = None, hf=None):
        self.kind, self.vocab, self.hf = kind, vocab, hf
        self.index = {t: i for i, t in enumerate(vocab)} if vocab is not None else None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size() if self.hf is not None else len(self.vocab)

    def pieces(self, text: str) -> list[str]:
        return list(text) if self.kind == "char" else WORD_PATTERN.findall(text)

    def encode(self, text: str) -> list[int]:
        if self.hf is not None:
            return self.hf.encode(text).ids
        pieces = self.pieces(text)
        if self.kind == "word" and WORD_UNKS[1] in self.index:  # rare or unseen words -> (space) <unk>
            return [self.index.get(p, self.index[WORD_UNKS[p.startswith(" ")]]) for p in pieces]
        unknown = sorted({p for p in pieces if p not in self.index})
        if unknown:
            what = "characters" if self.kind == "char" else "words"
            raise DlforgeError(f"the text has {what} the {self.kind} tokenizer never saw: "
                               f"{', '.join(map(repr, unknown[:8]))}{' ...' if len(unknown) > 8 else ''}")
        return [self.index[p] for p in pieces]

    def decode(self, ids: list[int]) -> str:
        if self.hf is not None:
            return self.hf.decode(list(ids), skip_special_tokens=False)
        return "".join(self.vocab[i] for i in ids)

    def token_text(self, i: int) -> str:
        return self.decode([i])

    def token_id(self, token: str) -> int:
        """The id of a whole token (a special token such as '<pad>' or a language tag)."""
        i = self.hf.token_to_id(token) if self.hf is not None else self.index.get(token)
        if i is None:
            raise DlforgeError(f"the tokenizer has no token {token!r}")
        return i

    def to_json(self) -> str:
        body = {"kind": self.kind}
        if self.hf is not None:
            body["hf"] = json.loads(self.hf.to_str())
        else:
            body["vocab"] = self.vocab
        return json.dumps(body, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        try:
            body = json.loads(text)
            if body["kind"] == "bpe":
                from tokenizers import Tokenizer
                return cls("bpe", hf=Tokenizer.from_str(json.dumps(body["hf"])))
            return cls(body["kind"], vocab=list(body["vocab"]))
        except Exception as e:  # JSON, a missing key, or the tokenizers library refusing it
            raise DlforgeError(f"unreadable tokenizer file ({type(e).__name__}: {e})") from None

    def save(self, path: Path) -> None:
        from dlforge.runs import atomic_write_bytes
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: Path) -> "TextTokenizer":
        if not Path(path).is_file():
            raise DlforgeError(f"{path}: tokenizer not found")
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (DlforgeError, OSError, UnicodeDecodeError) as e:  # it did not say which file
            raise DlforgeError(f"{path}: {e}") from None


def train_bpe(text: str, vocab_size: int, specials: tuple[str, ...] = (), split_digits: bool = False) -> TextTokenizer:
    """Byte-level BPE (GPT-2's scheme: 256 byte symbols + learned merges), trained on the text's lines.
    specials get the first ids; split_digits keeps every digit a token of its own (no '12' merges),
    so that numbers are read digit by digit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                        if split_digits else byte_level)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(text.splitlines(keepends=True), trainer)
    return TextTokenizer("bpe", hf=hf)


def fit_tokenizer(kind: str, text: str, vocab_size: int | None = 512, specials: tuple[str, ...] = (),
                  split_digits: bool = False) -> TextTokenizer:
    """char: every character of the corpus; word: its vocab_size most frequent pieces (None: all), ties in
    string order, and the two <unk>s; bpe: vocab_size tokens (>= 257). specials (e.g. '<pad>', language
    tags) take ids 0, 1, ... and are never produced by encode() (except a '<unk>' among them)."""
    if kind not in TOKENIZERS:
        raise DlforgeError(f"--tokenizer: expected one of {', '.join(TOKENIZERS)}; got {kind!r}")
    if kind == "bpe":
        if vocab_size < 257 + len(specials):
            raise DlforgeError(f"--vocab-size: byte-level BPE needs at least {257 + len(specials)} tokens, "
                               f"got {vocab_size}")
        return train_bpe(text, vocab_size, specials, split_digits)
    if kind == "word":
        return _fit_words(text, vocab_size, specials)
    vocab = sorted(set(text))
    return TextTokenizer(kind, vocab=list(specials) + [t for t in vocab if t not in specials])


def _fit_words(text: str, vocab_size: int | None, specials: tuple[str, ...]) -> TextTokenizer:
    """specials, the <unk>s, then the most frequent pieces that fit in vocab_size; says on stderr what the
    cap left out."""
    head = list(specials) + [u for u in WORD_UNKS if u not in specials]
    counts = Counter(WORD_PATTERN.findall(text))
    for t in specials:
        counts.pop(t, None)
    words = sorted(counts, key=lambda t: (-counts[t], t))
    room = len(words) if vocab_size is None else vocab_size - len(head)
    if room < 1:
        raise DlforgeError(f"--vocab-size: the word tokenizer needs at least {len(head) + 1} tokens "
                           f"({len(head)} for {', '.join(map(repr, head))}), got {vocab_size}")
    if room < len(words):
        lost = sum(counts[t] for t in words[room:]) / sum(counts.values())
        print(f"dlforge: word tokenizer: the {room:,} most frequent of {len(words):,} distinct words; the other "
              f"{len(words) - room:,} ({100 * lost:.1f}% of the text's words) become <unk> "
              f"(--vocab-size {vocab_size})", file=sys.stderr)
    return TextTokenizer("word", vocab=head + words[:room])


def encode_corpus(tok: TextTokenizer, text: str) -> torch.Tensor:
    """-> (N,) int64 token ids (int64: what nn.Embedding and cross_entropy take)."""
    return torch.tensor(tok.encode(text), dtype=torch.long)


def split_tokens(ids: torch.Tensor, val_fraction: float, block_size: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous split: the first (1 - f) of the stream trains, the last f validates. Each part must
    hold at least one context window plus its target (block_size + 1 tokens)."""
    n_val = int(len(ids) * val_fraction)
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    need = block_size + 1
    if len(train) < need or len(val) < need:
        raise DlforgeError(f"{source}: {len(ids)} tokens give {len(train)} training / {len(val)} validation tokens, "
                           f"less than one context window (--block-size {block_size} + 1) each; "
                           f"use a longer text or a smaller --block-size")
    return train, val
