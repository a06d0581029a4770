"""Parallel sequences for encoder–decoder tasks.

numbers — a corpus made offline: the integers 0..999,999 written as words with `num2words` in the
          reference document's languages (Portuguese, Spanish, Polish, Italian, Serbian) and English,
          in both directions: "<pl> 1234" -> "tysiąc dwieście trzydzieści cztery" and
          "<digits> tysiąc dwieście trzydzieści cztery" -> "1234". The source starts with the target's
          tag. Validation and test numbers are drawn once from a fixed permutation (split_seed) and
          never occur in training, in any language or direction.
TSV     — any user corpus, one `source<TAB>target` pair per line, split by line (seeded).
Each pair belongs to a group (e.g. 'digits->pl', 'pl->digits'; 'all' for a TSV), the unit of the
per-direction figures.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from dlforge.data.text import TextTokenizer, read_text
from dlforge.errors import DlforgeError

LANGS = ("pt", "es", "pl", "it", "sr", "en")   # num2words codes
DIGITS = "digits"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3 in every pair tokenizer
PAD, BOS, EOS = 0, 1, 2
MAX_NUMBER = 999_999


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    to: str = ""        # the target's tag (a language code or 'digits'); '' for an untagged corpus
    group: str = "all"
    line: int = 0       # its line in a TSV file (for error messages)


def tag(to: str) -> str:
    return f"<{to}>"


# ---------------------------------------------------------------- numbers
def parse_langs(text: str | tuple | list) -> tuple[str, ...]:
    langs = tuple(s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip())
    bad = [x for x in langs if x not in LANGS]
    if bad or not langs:
        raise DlforgeError(f"--langs: expected a comma-separated subset of {','.join(LANGS)}; got {','.join(bad) if bad else repr(text)}")
    return tuple(dict.fromkeys(langs))


def number_words(n: int, lang: str) -> str:
    from num2words import num2words
    return num2words(n, lang=lang)


def number_pairs(numbers: list[int], langs: tuple[str, ...]) -> list[Pair]:
    """Both directions for every number and language."""
    out = []
    for lang in langs:
        for n in numbers:
            words = number_words(n, lang)
            out.append(Pair(str(n), words, lang, f"digits->{lang}"))
            out.append(Pair(words, str(n), DIGITS, f"{lang}->digits"))
    return out


def split_numbers(n_val: int, n_test: int, seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """A fixed permutation of 0..MAX_NUMBER: -> (training pool (sorted), validation, test numbers)."""
    perm = torch.randperm(MAX_NUMBER + 1, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val + n_test:]), perm[:n_val], perm[n_val:n_val + n_test]


def sample_numbers(pool: list[int], k: int, rng: random.Random) -> list[int]:
    """k numbers from the sorted pool: half uniform (mostly 6 digits, like the test set), half with a
    uniformly drawn digit count 1..6, so that short numbers and their special forms are seen too."""
    import bisect
    out = [pool[rng.randrange(len(pool))] for _ in range(k - k // 2)]
    for _ in range(k // 2):
        d = rng.randint(1, 6)
        lo, hi = bisect.bisect_left(pool, 0 if d == 1 else 10 ** (d - 1)), bisect.bisect_left(pool, 10 ** d)
        out.append(pool[rng.randrange(lo, hi)])
    return out


def numbers_corpus(langs: tuple[str, ...], per_direction: int, n_val: int, n_test: int, split_seed: int = 0,
                   seed: int = 0) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """-> (train, validation, test) pairs. Each direction trains on its own sample of the pool."""
    pool, val, test = split_numbers(n_val, n_test, split_seed)
    rng = random.Random(seed)
    train = []
    for lang in langs:
        for pair in number_pairs(sample_numbers(pool, per_direction, rng), (lang,)):
            train.append(pair)
    # the two directions of one number were appended together: interleave them with the other numbers
    rng.shuffle(train)
    return train, number_pairs(val, langs), number_pairs(test, langs)


# ---------------------------------------------------------------- user corpora
def read_tsv(path: str | Path) -> list[Pair]:
    """`source<TAB>target` per line (UTF-8); blank lines are skipped; anything else is an error with
    its line number."""
    text = read_text(path, "--data-file").removeprefix("\ufeff")  # Excel's "UTF-8" files start with a BOM
    pairs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DlforgeError(f"--data-file {path}, line {i}: expected source<TAB>target, found "
                               f"{len(parts) - 1} tabs")
        src, tgt = parts[0].strip(), parts[1].strip()
        if not src or not tgt:
            raise DlforgeError(f"--data-file {path}, line {i}: the {'source' if not src else 'target'} is empty")
        pairs.append(Pair(src, tgt, line=i))
    if len(pairs) < 3:
        raise DlforgeError(f"--data-file {path}: {len(pairs)} pairs; need at least 3 (train, validation, test)")
    return pairs


def split_pairs(pairs: list[Pair], val_fraction: float, test_fraction: float, seed: int = 0):
    """Seeded shuffle, then (train, validation, test) with at least one pair each."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(pairs) * val_fraction))
    n_test = max(1, int(len(pairs) * test_fraction))
    pick = lambda idx: [pairs[i] for i in idx]  # noqa: E731
    return pick(order[n_val + n_test:]), pick(order[:n_val]), pick(order[n_val:n_val + n_test])


# ---------------------------------------------------------------- to tensors
def encode_texts(tok: TextTokenizer, texts: list[str]) -> list[list[int]]:
    if tok.hf is not None:  # Hugging Face tokenizers encodes a batch in parallel, in Rust
        return [e.ids for e in tok.hf.encode_batch(texts)]
    return [tok.encode(t) for t in texts]


def pad(rows: list[list[int]]) -> torch.Tensor:
    """-> (N, max length) int64, right-padded with PAD."""
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def source_ids(tok: TextTokenizer, texts: list[str], tos: list[str]) -> list[list[int]]:
    """[target tag] + tokens (untagged corpora: tokens only)."""
    return [([tok.token_id(tag(to))] if to else []) + ids for ids, to in zip(encode_texts(tok, texts), tos)]


def encode_pairs(pairs: list[Pair], src_tok: TextTokenizer, tgt_tok: TextTokenizer, max_len: int,
                 where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> src (N, S) and tgt (N, T) = [BOS] target [EOS], both padded with PAD."""
    src = source_ids(src_tok, [p.src for p in pairs], [p.to for p in pairs])
    tgt = [[BOS] + ids + [EOS] for ids in encode_texts(tgt_tok, [p.tgt for p in pairs])]
    for i, (s, t) in enumerate(zip(src, tgt)):
        if len(s) > max_len or len(t) > max_len:
            at = f"line {pairs[i].line}" if pairs[i].line else f"pair {i + 1}"
            raise DlforgeError(f"{where}, {at}: {max(len(s), len(t))} tokens long, more than "
                               f"--max-len {max_len}: {pairs[i].src[:40]!r}")
    return pad(src), pad(tgt)
