"""Captions for text-to-image training: varied templates per class for labelled image datasets, a CSV of
`image_path,caption` for user data, a word-level caption tokenizer, and batches of (image, caption ids).

Words are lower-case runs of letters and digits (hyphens and apostrophes inside a word are kept:
"t-shirt"). The vocabulary holds every word of the training captions after <pad>, <s>, <unk>.
Every caption starts with <s>, so the empty caption — <s> alone — is a valid condition: it is
classifier-free guidance's null condition. A word the tokenizer never saw becomes <unk> (the
documented fallback); a prompt with no known word at all cannot be represented and is refused.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch

from dlforge.data.images import ImageFiles
from dlforge.data.loader import BatchLoader, _seeded
from dlforge.data.transforms import resize
from dlforge.errors import DlforgeError

SPECIALS = ("<pad>", "<s>", "<unk>")
PAD, BOS, UNK = 0, 1, 2
WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
MAX_CAPTION_WORDS = 76  # CLIP's 77 tokens with <s>

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = ["a handwritten {w}", "the digit {d}", "a handwritten digit {d}", "the number {w}", "a {w}",
                   "{d}", "a drawing of the digit {w}", "the numeral {d}", "a handwritten {d}"]
FASHION_NAMES = [["a t-shirt", "a top", "a tee"], ["trousers", "a pair of trousers", "pants"],
                 ["a pullover", "a sweater", "a jumper"], ["a dress"], ["a coat", "a winter coat"], ["a sandal"],
                 ["a shirt"], ["a sneaker", "a running shoe"], ["a bag", "a handbag"], ["an ankle boot", "a boot"]]
FASHION_TEMPLATES = ["{np}", "a photo of {np}", "a picture of {np}", "an image of {np}", "a small photo of {np}",
                     "a black and white photo of {np}"]
GENERIC_TEMPLATES = ["{np}", "a photo of {np}", "an image of {np}", "a picture of {np}"]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def class_captions(dataset: str, classes: list[str]) -> list[list[str]]:
    """Per class, every caption its images may get (digits/mnist, fashion-mnist, else generic)."""
    if dataset in ("digits", "mnist") and len(classes) == 10:
        return [[t.format(w=DIGIT_WORDS[c], d=c) for t in DIGIT_TEMPLATES] for c in range(10)]
    if dataset == "fashion-mnist":
        return [[t.format(np=n) for n in names for t in FASHION_TEMPLATES] for names in FASHION_NAMES]
    return [[t.format(np=c.lower()) for t in GENERIC_TEMPLATES] for c in classes]


def canonical_prompts(dataset: str, classes: list[str]) -> list[str]:
    """One plain prompt per class, for sample grids ('a handwritten seven', 'an ankle boot')."""
    if dataset in ("digits", "mnist") and len(classes) == 10:
        return [f"a handwritten {w}" for w in DIGIT_WORDS]
    if dataset == "fashion-mnist":
        return [names[0] for names in FASHION_NAMES]
    return [c.lower() for c in classes]


class CaptionTokenizer:
    def __init__(self, vocab: list[str], max_len: int):
        self.vocab, self.max_len = list(vocab), max_len
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def fit(cls, captions: list[str]) -> "CaptionTokenizer":
        counts: dict[str, int] = {}
        longest = 1
        for c in captions:
            ws = words(c)
            longest = max(longest, len(ws))
            for w in ws:
                counts[w] = counts.get(w, 0) + 1
        vocab = list(SPECIALS) + sorted(counts, key=lambda w: (-counts[w], w))
        return cls(vocab, max(16, longest + 1))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """-> ([<s>, word ids...], the words it did not know (each encoded as <unk>))."""
        ws = words(text)
        return [BOS] + [self.index.get(w, UNK) for w in ws], [w for w in ws if w not in self.index]

    def encode_prompt(self, text: str) -> tuple[list[int], list[str]]:
        """A user's prompt: refused if empty, without any known word, or longer than the encoder reads."""
        if not text.strip():
            raise DlforgeError("--prompt: the prompt is empty")
        ids, unknown = self.encode(text)
        if len(ids) == 1:
            raise DlforgeError(f"--prompt {text!r}: no words (letters or digits) to encode")
        if len(unknown) == len(ids) - 1:
            known = ", ".join(self.vocab[len(SPECIALS):len(SPECIALS) + 12])
            raise DlforgeError(f"--prompt {text!r}: none of its words is in the caption vocabulary "
                               f"(it knows {len(self.vocab) - len(SPECIALS)} words, e.g. {known})")
        if len(ids) > self.max_len:
            raise DlforgeError(f"--prompt: {len(ids) - 1} words; the text encoder reads at most {self.max_len - 1}")
        return ids, unknown

    def pad(self, rows: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(rows), self.max_len), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r[:self.max_len], dtype=torch.long)
        return out

    def null(self, n: int) -> torch.Tensor:
        """n empty captions (<s> alone): the unconditional input of classifier-free guidance."""
        return self.pad([[BOS]] * n)

    def to_json(self) -> str:
        return json.dumps({"kind": "caption-words", "vocab": self.vocab, "max_len": self.max_len})

    def save(self, path: Path) -> None:
        from dlforge.runs import atomic_write_bytes
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: Path) -> "CaptionTokenizer":
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(body["vocab"], int(body["max_len"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DlforgeError(f"{path}: unreadable caption tokenizer ({type(e).__name__}: {e})") from None


class CaptionTable:
    """Every caption of every owner (a class, or one image of a CSV), tokenized once: ids (M, L), and
    owner o's captions at rows start[o] .. start[o] + count[o] - 1."""

    def __init__(self, tok: CaptionTokenizer, per_owner: list[list[str]]):
        rows = [tok.encode(c)[0] for caps in per_owner for c in caps]
        self.ids = tok.pad(rows)                                                        # (M, L)
        self.count = torch.tensor([len(c) for c in per_owner])
        self.start = torch.cumsum(self.count, 0) - self.count
        self.texts = [c for caps in per_owner for c in caps]

    def sample(self, owner: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """One caption per owner id (B,), drawn uniformly among its captions -> ids (B, L)."""
        pick = (torch.rand(owner.shape[0], generator=g) * self.count[owner]).long().clamp_max(self.count[owner] - 1)
        return self.ids[self.start[owner] + pick]


def to_unit(x: torch.Tensor, img_size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, S, S) in [-1, 1]."""
    return resize(x.float().div_(255), img_size).mul_(2).sub_(1)


class CaptionBatches:
    """Batches (x_0 in [-1, 1] (B, C, S, S), caption ids (B, L)). Image order from BatchLoader; the
    caption of batch i of epoch e from a generator seeded with (seed, e, i, 2): replayable on resume."""

    def __init__(self, x: torch.Tensor, owner: torch.Tensor, table: CaptionTable, batch_size: int, img_size: int,
                 seed: int = 0, shuffle: bool = True):
        self.loader = BatchLoader(x, owner, batch_size, shuffle=shuffle, seed=seed,
                                  transform=lambda xb, g: to_unit(xb, img_size))
        self.table, self.seed = table, seed

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0, start: int = 0):
        for i, (xb, ob) in enumerate(self.loader.epoch(epoch, start), start):
            yield xb, self.table.sample(ob, _seeded(self.seed, epoch, i, 2))


def read_captions_csv(path: str | Path) -> tuple[list[Path], list[str]]:
    """`image_path,caption` rows (a header row of those names is skipped; paths relative to the CSV's
    folder). Every problem names its line; all missing images are reported together, on one line."""
    _, files, caps = _caption_rows(Path(path))
    return files, caps


def read_captions_images(path: str | Path, img_size: int, skip_bad: bool = False) -> tuple[torch.Tensor, list[str]]:
    """The CSV's images decoded, gray, -> uint8 (N, 1, S, S) and their captions. Undecodable images are
    all listed in one error, each with its CSV line; skip_bad leaves them (and their rows) out, counted."""
    path = Path(path)
    lines, files, caps = _caption_rows(path)
    decoder = ImageFiles(img_size, "L")
    x, rows = decoder.decode(files, list(range(len(files))), where=[f"{path.name}:{n}" for n in lines])
    decoder.finish("--data", path, skip_bad)
    if len(rows) < 2:
        raise DlforgeError(f"--data {path}: only {len(rows)} image can be decoded; expected at least 2")
    return x, [caps[i] for i in rows.tolist()]


def _caption_rows(path: Path) -> tuple[list[int], list[Path], list[str]]:
    """-> the CSV line, image path and caption of each row (see read_captions_csv)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DlforgeError(f"--data {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise DlforgeError(f"--data {path}: not UTF-8 text") from None
    lines, files, caps, missing = [], [], [], []
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if line == 1 and [c.strip().lower() for c in row] == ["image_path", "caption"]:
            continue
        if len(row) != 2:
            raise DlforgeError(f"{path}:{line}: expected 2 columns image_path,caption (quote captions with commas), "
                               f"got {len(row)}")
        img, cap = Path(row[0].strip()), row[1].strip()
        img = img if img.is_absolute() else path.parent / img
        if not words(cap):
            raise DlforgeError(f"{path}:{line}: empty caption")
        if len(words(cap)) > MAX_CAPTION_WORDS:
            raise DlforgeError(f"{path}:{line}: caption of {len(words(cap))} words; at most {MAX_CAPTION_WORDS}")
        if not img.is_file():
            missing.append((line, row[0].strip()))
        lines.append(line)
        files.append(img)
        caps.append(cap)
    if missing:
        more = f" and {len(missing) - 1} more (lines {', '.join(str(m[0]) for m in missing[1:6])}" \
               f"{', ...' if len(missing) > 6 else ''})" if len(missing) > 1 else ""
        raise DlforgeError(f"{path}:{missing[0][0]}: image {missing[0][1]!r} not found{more}")
    if len(files) < 2:
        raise DlforgeError(f"--data {path}: expected at least 2 rows image_path,caption, got {len(files)}")
    return lines, files, caps


def write_captions(folder: Path, pairs) -> Path:
    """(image, caption) pairs given in memory (image: a file path, a PIL image or an array) -> folder/images/N.png
    and folder/captions.csv, read back by read_captions_csv like any user CSV. -> the CSV's path."""
    import numpy as np
    from PIL import Image

    from dlforge.data.arrays import as_uint8_images
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, cap) in enumerate(pairs):
        if not isinstance(cap, str) or not words(cap):
            raise DlforgeError(f"data: pair {i}: expected a non-empty caption, got {cap!r}")
        name = f"images/{i:06d}.png"
        if isinstance(img, (str, Path)):
            name = str(Path(img).resolve())
        elif hasattr(img, "save") and hasattr(img, "convert"):  # a PIL image
            img.save(folder / name)
        else:
            a = as_uint8_images(np.asarray(img)[None], f"data: pair {i}'s image")[0].numpy()
            Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(folder / name)
        rows.append((name, cap))
    path = folder / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "caption"])
        w.writerows(rows)
    return path
