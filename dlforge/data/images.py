"""Image datasets by name, decoded once into uint8 tensors (N, C, H, W).

digits (scikit-learn, bundled) · mnist · fashion-mnist (IDX, gzip or raw) · gtsrb (official
archives: PPM + per-class CSV with ROI boxes) · folder (class sub-folders of PNG/JPEG).
Every loader takes splits=("train", "test") (evaluation asks for ("test",): the other split is then
left empty, its files neither needed nor read) and skip_bad (undecodable image files are skipped and
counted instead of listed in one error).
"""
from __future__ import annotations

import csv
import gzip
import math
import struct
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from dlforge.data.download import cache_dir, download, safe_extract
from dlforge.data.imagecache import ImageArray, channel_stats, decode_files, take
from dlforge.errors import DlforgeError

if TYPE_CHECKING:
    import PIL.Image


@dataclass
class ImageData:
    """Images are uint8 (N, C, H, W): a tensor in memory (bundled data, IDX files, arrays), or an ImageArray —
    decoded image files, read from their cache a batch at a time (imagecache.py)."""
    name: str
    train_x: torch.Tensor | ImageArray  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor | ImageArray
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    val_x: torch.Tensor | ImageArray | None = None
    val_y: torch.Tensor | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.mean and len(self.train_x):  # the dataset's own per-channel statistics, from its training images
            if isinstance(self.train_x, ImageArray):
                self.mean, self.std = channel_stats(self.train_x)  # read in chunks, never whole
                return
            x = self.train_x.float().div_(255)
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]


SPLITS = ("train", "test")


def _empty(c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A split that was not asked for: no images (0, C, H, W), no labels."""
    return torch.empty(0, c, h, w, dtype=torch.uint8), torch.empty(0, dtype=torch.long)


# ---------------------------------------------------------------- IDX (MNIST family)
IDX_MAX_BYTES = 1 << 31  # refuse to inflate more than 2 GiB: a gzip bomb is an error, not an allocation


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 0x00 0x00 0x08 ndim), gzip or raw."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
                raise DlforgeError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
            raw_dims = f.read(4 * head[3])
            if len(raw_dims) < 4 * head[3]:
                raise DlforgeError(f"{path}: IDX file truncated inside its header")
            dims = struct.unpack(">" + "I" * head[3], raw_dims)
            if 0 in dims:
                raise DlforgeError(f"{path}: IDX header declares an empty dimension {dims}")
            size = math.prod(dims)
            if size > IDX_MAX_BYTES:
                raise DlforgeError(f"{path}: IDX header declares {size} bytes, more than the {IDX_MAX_BYTES} allowed")
            body = f.read(size + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # zlib.error: a corrupt deflate stream
        raise DlforgeError(f"{path}: cannot read IDX data ({e})") from None
    if len(body) != size:
        what = "truncated" if len(body) < size else "longer than its header says"
        raise DlforgeError(f"{path}: IDX file {what} (header {dims}, {len(body)} data bytes)")
    return np.frombuffer(body, np.uint8).reshape(dims)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_SPLITS = {"train": MNIST_FILES[:2], "test": MNIST_FILES[2:]}  # (images, labels) of each split
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
               "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                       "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
}
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def mnist_dir(name: str, data_dir: str | None, fetch: bool = True, stems: tuple[str, ...] = MNIST_FILES) -> Path | None:
    """Where the IDX files `stems` are: --data-dir, else the system copy, else the cache (downloaded)."""
    if data_dir:
        missing = [s for s in stems if _find([Path(data_dir)], s) is None]
        if missing:
            raise DlforgeError(f"--data-dir {data_dir}: missing {', '.join(missing)} (raw or .gz) for {name}")
        return Path(data_dir)
    for d in [SYSTEM_DIRS.get(name), cache_dir() / name]:
        if d and all(_find([d], s) for s in stems):
            return d
    if not fetch:
        return None
    base, md5s = MIRRORS[name]
    for stem, md5 in zip(MNIST_FILES, md5s):
        if stem in stems:
            download(base + stem + ".gz", cache_dir() / name / (stem + ".gz"), "md5:" + md5)
    return cache_dir() / name


def _read_idx_split(d: Path, split: str, name: str, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images uint8 (N, 1, H, W) and labels int64 (N,) of one split, checked against each other."""
    imgs, labels = (read_idx(_find([d], s)) for s in MNIST_SPLITS[split])
    if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
        raise DlforgeError(f"{d}: {split} images {imgs.shape} and labels {labels.shape} do not match")
    if labels.max() >= len(classes):
        raise DlforgeError(f"{d}: {split} labels go up to {labels.max()}, but {name} has {len(classes)} classes")
    return torch.from_numpy(imgs.copy())[:, None], torch.from_numpy(labels.copy()).long()


def _load_mnist_family(name: str, classes: list[str], stats: tuple | None) -> Callable[..., ImageData]:
    def load(data_dir: str | None = None, img_size: int = 28, splits: tuple[str, ...] = SPLITS,
             skip_bad: bool = False) -> ImageData:
        d = mnist_dir(name, data_dir, stems=tuple(s for split in splits for s in MNIST_SPLITS[split]))
        parts = {split: _read_idx_split(d, split, name, classes) for split in splits}
        shape = next(iter(parts.values()))[0].shape[1:]
        (tx, ty), (vx, vy) = (parts.get(split) or _empty(*shape) for split in SPLITS)
        mean, std = stats or ((), ())
        return ImageData(name, tx, ty, vx, vy, classes, mean, std, source=str(d))
    return load


# ---------------------------------------------------------------- digits (scikit-learn, bundled)
def load_digits(data_dir: str | None = None, img_size: int = 8, splits: tuple[str, ...] = SPLITS,
                skip_bad: bool = False) -> ImageData:
    """scikit-learn's 1,797 8×8 digits (values 0..16), a fixed stratified 80/20 train/test split
    (bundled and small: both splits, whatever `splits` asks)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    tx, vx, ty, vy = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return ImageData("digits", t(tx), t(ty).long(), t(vx), t(vy).long(), MNIST_CLASSES, source="scikit-learn (bundled)")


# ---------------------------------------------------------------- decoded image files (gtsrb, folder)
MAX_PIXELS = 50_000_000  # refuse larger images before decoding them (PIL only warns below ~179 MP)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # decoded as one channel; others as RGB
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # more than 8 bits a pixel: scaled, not clipped


def to_8bit(im: "PIL.Image.Image", path: Path) -> "PIL.Image.Image":
    """A 16-bit, 32-bit integer or float grey image -> mode L (any other image: as it is), its range scaled to 0..255. PIL's convert("L")
    clips them at 255: a 16-bit digit decoded as a white blob, a float one (0..1) as black, and either was
    classified with no word said. 16-bit: v / 257; 32-bit integers: as they are when all ≤ 255, else as 16-bit;
    floats: 0..1 × 255, or 0..255 as they are."""
    from PIL import Image

    if im.mode not in WIDE_MODES:
        return im
    a = np.asarray(im)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F":
        ok, want, scale = hi <= 255, "floats in 0..1 or 0..255", (255.0 if hi <= 1 else 1.0)
    else:
        ok, want, scale = hi <= 65535, "values in 0..65535", (1.0 if im.mode == "I" and hi <= 255 else 255 / 65535)
    if not (ok and lo >= 0 and np.isfinite(hi)):
        raise DlforgeError(f"{path}: a {im.mode} image with values {lo:g}..{hi:g}; expected {want}")
    return Image.fromarray(np.rint(a.astype(np.float64) * scale).astype(np.uint8), "L")


def as_mode(im: "PIL.Image.Image", mode: str, what: str | Path) -> "PIL.Image.Image":
    """A decoded image -> `mode` ('L' or 'RGB'), upright by its EXIF orientation, as a browser or a photo viewer
    shows it (a phone's JPEG keeps the sensor's rows and a tag that turns them: the playground drew the photo
    upright and classified it on its side), wide grey images scaled to 8 bits (to_8bit). A mode PIL cannot
    convert (LAB) is one error naming the image: it was a ValueError, a 500 over HTTP."""
    from PIL import ImageOps
    if im.getexif().get(0x0112, 1) != 1:  # Orientation: exif_transpose copies even an upright image (+15% on 12 MP)
        im = ImageOps.exif_transpose(im)
    im = to_8bit(im, what)
    try:
        return im.convert(mode)
    except ValueError:
        raise DlforgeError(f"{what}: a {im.mode} image cannot be read as {'grey' if mode == 'L' else mode}; "
                           f"save it as RGB or greyscale") from None


@contextmanager
def _open(path: Path) -> Iterator["PIL.Image.Image"]:
    """The one guarded way to open an image file: its header is checked before anything is decoded, and a
    bomb or an undecodable file (here or in the caller's block) is one DlforgeError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            if im.width * im.height > MAX_PIXELS:
                raise DlforgeError(f"{path}: refused, {im.width}×{im.height} pixels is more than {MAX_PIXELS:,}")
            yield im
    except Image.DecompressionBombError as e:
        raise DlforgeError(f"{path}: refused, image too large ({e})") from None
    except UnidentifiedImageError:
        raise DlforgeError(f"{path}: cannot decode image (not a format PIL reads)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DlforgeError(f"{path}: cannot decode image ({e})") from None


def image_mode(path: Path) -> str:
    """'L' for a grey image file, else 'RGB': the mode decode_image keeps it in. Reads the header only."""
    with _open(path) as im:
        return "L" if im.mode in GREY_MODES else "RGB"


def decode_image(path: Path, size: int, mode: str, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """One image file -> uint8 (C, size, size); mode 'L' or 'RGB' (image_mode: the file's own); optional ROI crop."""
    from PIL import Image

    with _open(path) as im:
        im = as_mode(im, mode, path)
        if box:
            im = im.crop(box)
        im = im.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


MAX_LISTED = 20  # undecodable files named in one error; the rest are counted


class ImageFiles:
    """Decodes many image files through decode_image (bombs refused before decoding), collecting every
    failure instead of stopping at the first; finish() then reports them all at once."""

    def __init__(self, size: int, mode: str):
        self.size, self.mode = size, mode
        self.bad: list[str] = []  # "path: reason" (prefixed with where[i], e.g. "captions.csv:7")
        self.decoded = 0

    def decode(self, paths: list[Path], labels: list[int], boxes: list[tuple] | None = None,
               where: list[str] | None = None) -> tuple[ImageArray | torch.Tensor, torch.Tensor]:
        """-> uint8 (N, C, size, size) and int64 (N,) labels of the files that decoded (N <= len(paths)): an
        ImageArray over the image cache (decoded on the first run, in parallel; read from then on)."""
        if not paths:
            return _empty(1 if self.mode == "L" else 3, self.size, self.size)
        x, failed = decode_files(paths, self.size, self.mode, decode_image, boxes)
        self.bad += [f"{where[i]}: {reason}" if where else reason for i, reason in failed]
        kept = np.setdiff1d(np.arange(len(paths)), np.array([i for i, _ in failed], dtype=np.int64))
        self.decoded += len(kept)
        if not len(kept):
            return _empty(1 if self.mode == "L" else 3, self.size, self.size)
        return x.take(kept), torch.tensor(labels, dtype=torch.long)[torch.from_numpy(kept)]

    def finish(self, option: str, source: str | Path, skip_bad: bool) -> None:
        """Nothing failed; or skip_bad: the count on stderr; else one DlforgeError: how many, then each file."""
        n = len(self.bad)
        if n and skip_bad and self.decoded:
            print(f"dlforge: skipped {n} unreadable image{'s' * (n != 1)} in {source}", file=sys.stderr)
        elif n:
            head = (f"none of the {n} images can be decoded" if not self.decoded else
                    f"{n} image{'s' * (n != 1)} cannot be decoded (or pass --skip-bad-images)")
            listed = self.bad[:MAX_LISTED] + [f"… and {n - MAX_LISTED} more"] * (n > MAX_LISTED)
            raise DlforgeError(f"{option} {source}: {head}:\n" + "\n".join("  " + b for b in listed))


GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
GTSRB_ARCHIVES = {"GTSRB_Final_Training_Images.zip": "md5:f33fd80ac59bff73c82d25ab499e03a3",
                  "GTSRB_Final_Test_Images.zip": "md5:c7e4e6327067d32654124b0fe9e82185",
                  "GTSRB_Final_Test_GT.zip": "md5:fe31e9c9270bbcd7b84b7f21a9d9d9e5"}


def _read_gtsrb_csv(csv_path: Path, images_dir: Path) -> tuple[list[Path], list[tuple], list[int]]:
    """Rows 'Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId' -> image paths, ROI boxes, labels."""
    paths, boxes, labels = [], [], []
    with open(csv_path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f, delimiter=";"), start=2):
            try:
                box = tuple(int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
                label = int(row["ClassId"])
            except (KeyError, TypeError, ValueError):
                raise DlforgeError(f"{csv_path}:{i}: expected Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId") from None
            if not 0 <= label < 43:
                raise DlforgeError(f"{csv_path}:{i}: ClassId {label} outside 0..42")
            paths.append(images_dir / row["Filename"])
            boxes.append(box)
            labels.append(label)
    return paths, boxes, labels


def gtsrb_root(data_dir: str | None) -> Path:
    """The folder holding GTSRB/Final_Training and GTSRB/Final_Test (+ GT-final_test.csv)."""
    root = Path(data_dir) if data_dir else cache_dir() / "gtsrb"
    if (root / "GTSRB" / "Final_Training").is_dir():
        return root
    if data_dir:
        raise DlforgeError(f"--data-dir {data_dir}: expected the GTSRB archive layout GTSRB/Final_Training/Images/<class>/GT-<class>.csv")
    for name, checksum in GTSRB_ARCHIVES.items():
        safe_extract(download(GTSRB_URL + name, root / "archives" / name, checksum), root)
    return root


def load_gtsrb(data_dir: str | None = None, img_size: int = 48, splits: tuple[str, ...] = SPLITS,
               skip_bad: bool = False) -> ImageData:
    root = gtsrb_root(data_dir)
    train_dir = root / "GTSRB" / "Final_Training" / "Images"
    paths, boxes, labels = [], [], []
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()) if "train" in splits else []:
        for acc, col in zip((paths, boxes, labels), _read_gtsrb_csv(class_dir / f"GT-{class_dir.name}.csv", class_dir)):
            acc += col
    gt = next((p for p in (root / "GT-final_test.csv", root / "GTSRB" / "GT-final_test.csv") if p.is_file()), None)
    if gt is None or ("train" in splits and not paths):
        raise DlforgeError(f"{root}: GTSRB training images or GT-final_test.csv (test labels) not found")
    files = ImageFiles(img_size, "RGB")
    tx, ty = files.decode(paths, labels, boxes)
    test_paths, test_boxes, test_labels = _read_gtsrb_csv(gt, root / "GTSRB" / "Final_Test" / "Images") \
        if "test" in splits else ([], [], [])
    vx, vy = files.decode(test_paths, test_labels, test_boxes)
    files.finish("--data-dir", root, skip_bad)
    return ImageData("gtsrb", tx, ty, vx, vy, [f"sign {i:02d}" for i in range(43)], source=str(root))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".gif", ".webp"}


def _class_folders(root: Path) -> list[str]:
    """The sub-folders of root, less hidden ones (.ipynb_checkpoints, __MACOSX): each is a class."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """root/<class>/ image files -> files, labels, classes. Without `classes` (the training folder) there must be
    two classes or more and each must hold images; with them (a test folder) every class folder must be one of
    them. Before, one class folder trained a classifier of one class ("100% accuracy"), an empty folder became
    a class, and a test class the training folder lacks was dropped from the report without a word."""
    found, training = _class_folders(root), classes is None
    if training:
        classes = found
        if len(classes) < 2:
            raise DlforgeError(f"--data-dir {root}: expected one sub-folder of images per class, two classes or more; "
                               f"found {len(classes)}" + (f" ({_names(classes)})" if classes else ""))
    elif extra := [c for c in found if c not in classes]:
        raise DlforgeError(f"--data-dir {root}: class folder(s) {_names(extra)} are not among the training classes "
                           f"({_names(classes)})")
    files, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((root / c).glob("*")) if (root / c).is_dir() else []:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(p)
                labels.append(i)
    if not files:
        raise DlforgeError(f"--data-dir {root}: no {'/'.join(sorted(IMAGE_SUFFIXES))} images in its class folders")
    if training and (empty := [c for i, c in enumerate(classes) if i not in set(labels)]):
        raise DlforgeError(f"--data-dir {root}: class folder(s) {_names(empty)} hold no "
                           f"{'/'.join(sorted(IMAGE_SUFFIXES))} images")
    return files, labels, classes


def _folder_mode(files: list[Path]) -> str:
    """'L' if the first file that opens is gray, else 'RGB' (reading its header only)."""
    for p in files:
        try:
            return image_mode(p)  # the guarded opener: a bomb's header is refused like any bad file
        except DlforgeError:
            continue  # ImageFiles.decode reports it with the others
    return "RGB"


def load_folder(data_dir: str | None = None, img_size: int = 48, splits: tuple[str, ...] = SPLITS,
                skip_bad: bool = False) -> ImageData:
    """root/<class>/*.png|jpg; root/train and root/test if present, else a fixed stratified 80/20 split
    (of the file list, so a skipped file never moves another between the splits)."""
    if not data_dir:
        raise DlforgeError("--data folder needs --data-dir DIR: one sub-folder of images per class")
    root = Path(data_dir)
    if not root.is_dir():
        raise DlforgeError(f"--data-dir {data_dir}: not a directory; expected one sub-folder of images per class")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    files, labels, classes = _scan_folder(root / "train" if split else root)
    mode = _folder_mode(files)
    if split:
        test_files, test_labels, _ = _scan_folder(root / "test", classes)
    else:
        from sklearn.model_selection import train_test_split
        counts = np.bincount(labels)
        strat = labels if counts.min() >= 2 and round(0.2 * len(labels)) >= len(counts) else None
        files, test_files, labels, test_labels = train_test_split(files, labels, test_size=0.2, random_state=0, stratify=strat)
    decoder = ImageFiles(img_size, mode)
    tx, ty = decoder.decode(files if "train" in splits else [], labels)
    vx, vy = decoder.decode(test_files if "test" in splits else [], test_labels)
    decoder.finish("--data-dir", root, skip_bad)
    for name, y in (("train", ty), ("test", vy)):
        if name in splits and not len(y):  # every file of the split was skipped
            raise DlforgeError(f"--data-dir {root}: none of the {name} images can be decoded")
    return ImageData("folder", tx, ty, vx, vy, classes, source=str(root))


# ---------------------------------------------------------------- the table of datasets
@dataclass(frozen=True)
class DatasetInfo:
    load: Callable[..., ImageData]
    description: str
    where: Callable[[], str] = field(default=lambda: "")


def _mnist_where(name: str) -> Callable[[], str]:
    return lambda: str(mnist_dir(name, None, fetch=False) or f"not yet downloaded (cache: {cache_dir() / name})")


def _gtsrb_where() -> str:
    root = cache_dir() / "gtsrb"
    return str(root) if (root / "GTSRB" / "Final_Training").is_dir() else f"not yet downloaded (cache: {root})"


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(load_digits, "scikit-learn 8×8 handwritten digits, 10 classes, 1,797 images (default)",
                          lambda: "bundled with scikit-learn"),
    "mnist": DatasetInfo(_load_mnist_family("mnist", MNIST_CLASSES, ((0.1307,), (0.3081,))),
                         "MNIST handwritten digits, 10 classes, 60,000 + 10,000 28×28", _mnist_where("mnist")),
    "fashion-mnist": DatasetInfo(_load_mnist_family("fashion-mnist", FASHION_CLASSES, None),
                                 "Zalando Fashion-MNIST, 10 classes, 60,000 + 10,000 28×28", _mnist_where("fashion-mnist")),
    "gtsrb": DatasetInfo(load_gtsrb, "German Traffic Sign Recognition Benchmark, 43 classes, RGB (ROI-cropped)",
                         _gtsrb_where),
    "folder": DatasetInfo(load_folder, "your images: --data-dir DIR with one sub-folder per class", lambda: "--data-dir"),
}


def load_arrays(data_dir: str | None = None, img_size: int = 48, splits: tuple[str, ...] = ("train", "test"),
                skip_bad: bool = False) -> ImageData:
    """Images given in memory to dlforge.train, kept in the run directory (data/arrays.py)."""
    from dlforge.data import arrays
    if data_dir is None:  # `--data arrays` on the command line: "None: not a dlforge in-memory dataset"
        raise DlforgeError("--data arrays: images and labels given in Python, dlforge.train(model, data=(images, "
                           "labels)); on the command line give --data-dir FOLDER (a sub-folder per class) or a dataset")
    tx, ty, vx, vy, classes = arrays.read(data_dir)
    return ImageData("arrays", tx, ty, vx, vy, classes, source=str(data_dir))


DATASETS["arrays"] = DatasetInfo(load_arrays, "images and labels given in memory to dlforge.train (Python)",
                                 lambda: "the run directory")


def load_dataset(name: str, data_dir: str | None = None, img_size: int = 48, skip_bad: bool = False,
                 splits: tuple[str, ...] = SPLITS) -> ImageData:
    """The dataset's train and test splits (only those in `splits`; the others empty). skip_bad: leave
    out undecodable image files (counted on stderr) instead of refusing them all in one error."""
    if name not in DATASETS:
        raise DlforgeError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    if not splits or not set(splits) <= set(SPLITS):
        raise DlforgeError(f"splits: expected some of {', '.join(SPLITS)}, got {splits!r}")
    return DATASETS[name].load(data_dir=data_dir, img_size=img_size, splits=tuple(splits), skip_bad=skip_bad)


def split_validation(data: ImageData, fraction: float, seed: int) -> ImageData:
    """Carve a seeded validation set of `fraction` of the training images (0 disables)."""
    if fraction <= 0 or not len(data.train_y):  # no training images: evaluation only
        return data
    n = len(data.train_y)
    n_val = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    data.val_x, data.val_y = take(data.train_x, val), data.train_y[val]
    data.train_x, data.train_y = take(data.train_x, train), data.train_y[train]
    return data
