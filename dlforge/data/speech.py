"""Speech data: the spoken-numbers corpus, a user's manifest of recordings, and reading audio files.

spoken-numbers — made offline, like `--data numbers`: integers written out by num2words in pt, es, pl, it,
    sr and en, spoken by eSpeak NG (the `espeak-ng` program) across voice variants, speeds and pitches,
    resampled to 16 kHz. Validation and test numbers never occur in training (pairs.split_numbers), and the
    test set is spoken by voice variants that never occur in training either. Made once into
    $DLFORGE_CACHE/speech/<key>/, keyed by its settings and the eSpeak NG version: one int16 array of all the
    clips (memory-mapped) and an index.
manifest — a CSV of `audio_path,transcript` (a header line of those names is allowed; relative paths are
    relative to the CSV), WAV/FLAC/OGG read with soundfile at any rate and resampled to 16 kHz.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.data import pairs as P
from dlforge.data.download import cache_dir
from dlforge.errors import DlforgeError

SAMPLE_RATE = 16_000
FORMAT = 1
VOICES = {"pt": "pt", "es": "es", "pl": "pl", "it": "it", "sr": "sr", "en": "en"}  # num2words code -> eSpeak voice
# eSpeak NG's voice variants (espeak-ng --voices=variant), the plainer ones: formant voices m1..m8, f1..f5, the
# Klatt synthesiser's and a set of named ones. TEST_VARIANTS are never used for training or validation.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "klatt4", "klatt6", "adam", "Andy", "Annie", "antonio", "benjamin", "boris", "caleb", "david", "ed",
            "edward", "Gene", "Henrique", "Hugo", "john", "linda", "Marco", "max", "Michael", "Mike", "norbert",
            "paul", "pedro", "quincy", "robert", "steph", "travis", "victor", "zac")
TEST_VARIANTS = ("m6", "f4", "klatt3", "linda", "Hugo", "edward", "steph", "victor")
SPEEDS = (135, 195)    # words per minute, drawn uniformly
PITCHES = (25, 75)     # 0..99
AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM")  # WAV, FLAC, Ogg, AIFF


def normalize_transcript(text: str) -> str:
    """Lower case, hyphens as spaces, no other punctuation, single spaces: what the model writes."""
    text = re.sub(r"[-‐–—_/]", " ", text.lower())
    text = re.sub(r"[^\w' ]", "", text)
    return " ".join(text.split())


# ---------------------------------------------------------------- reading audio
def read_audio(path: str | Path, max_seconds: float | None = None, what: str = "") -> np.ndarray:
    """A sound file (WAV, FLAC, OGG: whatever libsndfile reads) as float32 mono at 16 kHz. Empty, truncated,
    unreadable or too long audio is a one-line DlforgeError naming the file."""
    name = what or str(path)
    if not Path(path).is_file():
        raise DlforgeError(f"{name}: a folder, not an audio file" if Path(path).is_dir() else f"{name}: no such audio file")
    with open(path, "rb") as f:
        head = f.read(8)
    return _decode_sound(str(path), head, Path(path).stat().st_size, max_seconds, name)


def audio_from_bytes(data: bytes, max_seconds: float | None = None, what: str = "the audio") -> np.ndarray:
    """The bytes of a sound file (an upload: WAV, FLAC, OGG) as float32 mono at 16 kHz; read_audio's errors."""
    import io
    return _decode_sound(io.BytesIO(data), data[:8], len(data), max_seconds, what)


def _decode_sound(source, head: bytes, size: int, max_seconds: float | None, name: str) -> np.ndarray:
    """A path or a file object holding a sound file of `size` bytes starting with `head` -> 16 kHz mono. The
    length is checked from the header, before the samples are read."""
    import soundfile as sf
    if not size:
        raise DlforgeError(f"{name}: empty file (0 bytes), not audio")
    try:
        with sf.SoundFile(source) as f:
            rate, frames = f.samplerate, f.frames
            if max_seconds is not None and frames > max_seconds * rate:
                raise DlforgeError(f"{name}: {frames / rate:.1f} s of audio; at most {max_seconds:g} s is accepted")
            data = f.read(dtype="float32", always_2d=True)
    except DlforgeError:
        raise
    except Exception as e:  # noqa: BLE001  soundfile's LibsndfileError / RuntimeError: not audio, a broken header
        kind = "truncated or damaged audio file" if head[:4] in AUDIO_MAGIC else "not a readable audio file"
        # libsndfile says "Error opening <_io.BytesIO object at 0x7f…>: Format not recognised": name already says which
        why = re.sub(r"^Error opening (<[^>]*>|'[^']*'|\S+): ", "", str(e).splitlines()[0] if str(e) else repr(e))
        raise DlforgeError(f"{name}: {kind} ({why[:120]})") from None
    riff = int.from_bytes(head[4:8], "little")  # libsndfile reads what is there, so a cut file is told by its header;
    # but a WAV written to a pipe (espeak-ng --stdout, ffmpeg to stdout) cannot know its length and says ~2 or 4 GiB
    # (0x7ffff024, 0xffffffff) or 0: those are read as the file's length, as libsndfile does (they were "truncated")
    riff_short = head[:4] == b"RIFF" and 0 < riff < 0x7FFF0000 and riff + 8 > size
    if len(data) < frames or riff_short:
        raise DlforgeError(f"{name}: truncated audio file (its header promises more data than the file holds)")
    return prepare_audio(data.mean(1), rate, max_seconds, name)


def prepare_audio(x, rate: int, max_seconds: float | None = None, what: str = "the audio") -> np.ndarray:
    """Audio in memory (a 1-D float array, (samples, channels) as soundfile reads it, or (channels, samples) as
    torchaudio.load gives it: the shorter side, up to 8, is the channels) at `rate` -> float32 mono at 16 kHz."""
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    if x.ndim == 2:  # torchaudio's (1, N) was read as N channels of one sample: "too short audio (1 samples)"
        x = x.mean(0) if x.shape[0] < x.shape[1] and x.shape[0] <= 8 else x.mean(1)
    if x.ndim != 1:
        raise DlforgeError(f"{what}: expected a 1-D array of samples (or samples x channels), got shape {x.shape}")
    if not isinstance(rate, (int, np.integer)) or not 1000 <= rate <= 384_000:
        raise DlforgeError(f"{what}: sample rate {rate!r} is not a rate in Hz (1000..384000)")
    if len(x) < rate * 0.05:
        raise DlforgeError(f"{what}: empty or too short audio ({len(x)} samples, {len(x) / rate * 1000:.0f} ms; "
                           f"at least 50 ms is needed)")
    if max_seconds is not None and len(x) > max_seconds * rate:
        raise DlforgeError(f"{what}: {len(x) / rate:.1f} s of audio; at most {max_seconds:g} s is accepted")
    if not np.isfinite(x).all():
        raise DlforgeError(f"{what}: the audio holds NaN or infinite samples")
    return resample(x, rate)


def resample(x: np.ndarray, rate: int, to: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed anti-aliasing)."""
    if rate == to:
        return x.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly
    g = gcd(rate, to)
    return resample_poly(x, to // g, rate // g).astype(np.float32)


# ---------------------------------------------------------------- a user's manifest
@dataclass(frozen=True)
class Utterance:
    audio: str           # the file, absolute
    text: str            # normalised transcript
    lang: str = "all"    # the group of the per-language figures
    line: int = 0        # its line in the manifest


def read_manifest(path: str | Path) -> list[Utterance]:
    """`audio_path,transcript` per line (CSV quoting for commas in transcripts; an optional header
    audio_path,transcript; an optional third column, a language or group). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise DlforgeError(f"--data-file {path}: no such manifest file")
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DlforgeError(f"--data-file {path}: not a UTF-8 CSV file ({e})") from None
    out = []
    for i, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if i == 1 and [c.strip().lower() for c in row[:2]] == ["audio_path", "transcript"]:
            continue
        if len(row) not in (2, 3):
            raise DlforgeError(f"{path}:{i}: expected audio_path,transcript (2 columns, or 3 with a language); "
                               f"got {len(row)} columns")
        audio, text = (path.parent / row[0].strip()).resolve(), normalize_transcript(row[1])
        if not row[0].strip() or not audio.is_file():
            raise DlforgeError(f"{path}:{i}: audio file {row[0].strip()!r} not found")
        if not text:
            raise DlforgeError(f"{path}:{i}: empty transcript")
        out.append(Utterance(str(audio), text, row[2].strip() if len(row) == 3 and row[2].strip() else "all", i))
    if not out:
        raise DlforgeError(f"--data-file {path}: the manifest lists no recordings")
    return out


# ---------------------------------------------------------------- spoken numbers
@dataclass
class Clips:
    """A split of the corpus: clip i is audio[offsets[i]:offsets[i]+lengths[i]] (int16, 16 kHz)."""
    audio: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    texts: list[str]
    langs: list[str]
    voices: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def wave(self, i: int) -> np.ndarray:
        o = int(self.offsets[i])
        return self.audio[o:o + int(self.lengths[i])].astype(np.float32) / 32768.0


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DlforgeError("--data spoken-numbers needs eSpeak NG: install it with `apt-get install espeak-ng` "
                           "(make setup does this as root)")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesize(text: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    """One clip from eSpeak NG (22,050 Hz WAV) -> int16 at 16 kHz."""
    import soundfile as sf
    out = tmp / f"{hashlib.md5(f'{text}{voice}{speed}{pitch}'.encode()).hexdigest()}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
                   check=True, capture_output=True)
    x, rate = sf.read(str(out), dtype="float32")
    out.unlink()
    y = resample(x, rate)
    return (np.clip(y, -1, 1) * 32767).astype(np.int16)


def _plan(numbers: list[int], langs: tuple[str, ...], variants: tuple[str, ...], rng: random.Random):
    """-> [(text, lang, voice, speed, pitch)], one clip per (number, language), voice drawn from variants."""
    return [(normalize_transcript(P.number_words(n, lang)), lang, f"{VOICES[lang]}+{rng.choice(variants)}",
             rng.randint(*SPEEDS), rng.randint(*PITCHES)) for lang in langs for n in numbers]


def _make(plan: list, folder: Path, workers: int, label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        waves = list(pool.map(lambda p: synthesize(p[0], p[2], p[3], p[4], Path(tmp)), plan))
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    index = {"offsets": offsets.tolist(), "lengths": lengths.tolist(), "texts": [p[0] for p in plan],
             "langs": [p[1] for p in plan], "voices": [p[2] for p in plan]}
    # written under temporary names, then renamed (the index last): a reader never sees half a split, and
    # two processes making the same split at once write the same bytes
    tmp_npy, tmp_json = folder / f".{label}.{os.getpid()}.npy", folder / f".{label}.{os.getpid()}.json"
    np.save(tmp_npy, np.concatenate(waves) if waves else np.zeros(0, np.int16))
    tmp_json.write_text(json.dumps(index), encoding="utf-8")
    os.replace(tmp_npy, folder / f"{label}.npy")
    os.replace(tmp_json, folder / f"{label}.json")


def _load(folder: Path, label: str) -> Clips:
    index = json.loads((folder / f"{label}.json").read_text(encoding="utf-8"))
    return Clips(np.load(folder / f"{label}.npy", mmap_mode="r"), np.array(index["offsets"], dtype=np.int64),
                 np.array(index["lengths"], dtype=np.int64), index["texts"], index["langs"], index["voices"])


def spoken_numbers(langs: tuple[str, ...], train_clips: int, val_numbers: int, test_numbers: int,
                   split_seed: int = 0, seed: int = 0, workers: int = 2,
                   splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Clips]:
    """The corpus's splits (made once, then memory-mapped from the cache). train: `train_clips` numbers per
    language from the training pool (pairs.sample_numbers), training voices; val: `val_numbers` held-out
    numbers in every language, training voices; test: `test_numbers` other held-out numbers, test voices."""
    version = espeak_version()
    train_variants = tuple(v for v in VARIANTS if v not in TEST_VARIANTS)
    key = {"format": FORMAT, "langs": list(langs), "train_clips": train_clips, "val_numbers": val_numbers,
           "test_numbers": test_numbers, "split_seed": split_seed, "seed": seed, "espeak": version,
           "variants": train_variants, "test_variants": TEST_VARIANTS, "speeds": SPEEDS, "pitches": PITCHES}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "speech" / f"spoken-numbers-{digest}"
    pool, val, test = P.split_numbers(val_numbers, test_numbers, split_seed)
    todo = [s for s in splits if not (folder / f"{s}.json").is_file()]
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(key, indent=1), encoding="utf-8")
        rng = {s: random.Random(f"{seed}-{split_seed}-{s}") for s in ("train", "val", "test")}
        plans = {"train": lambda: [c for lang in langs for c in _plan(P.sample_numbers(pool, train_clips, rng["train"]),
                                                                      (lang,), train_variants, rng["train"])],
                 "val": lambda: _plan(val, langs, train_variants, rng["val"]),
                 "test": lambda: _plan(test, langs, TEST_VARIANTS, rng["test"])}
        for s in todo:
            t0 = time.perf_counter()
            plan = plans[s]()
            _make(plan, folder, workers, s)
            print(f"dlforge: spoken-numbers {s}: {len(plan):,} clips spoken by eSpeak NG in "
                  f"{time.perf_counter() - t0:.1f} s ({folder})", file=sys.stderr)
    return {s: _load(folder, s) for s in splits}
