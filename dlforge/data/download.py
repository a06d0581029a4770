"""Fetch a URL into the cache: pinned checksum, retries with back-off, resume of partial files,
atomic rename. Nothing half-written ever carries the final name."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from dlforge.errors import DlforgeError


def cache_dir() -> Path:
    """$DLFORGE_CACHE, else $XDG_CACHE_HOME/dlforge, else ~/.cache/dlforge."""
    if os.environ.get("DLFORGE_CACHE"):
        return Path(os.environ["DLFORGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlforge"


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str) -> bool:
    """checksum is 'sha256:<hex>' or 'md5:<hex>'."""
    algo, _, want = checksum.partition(":")
    return file_digest(path, algo) == want.lower()


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resumed = have and resp.status == 206
        expected = resp.headers.get("Content-Length")
        with open(part, "ab" if resumed else "wb") as f:
            got = 0
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                f.write(chunk)
                got += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and got < int(expected):
            raise urllib.error.URLError(f"truncated: got {got} of {expected} bytes")


def download(url: str, dest: Path, checksum: str, retries: int = 4, timeout: float = 60.0,
             backoff: float = 1.0) -> Path:
    """Download url to dest (verified against checksum) unless a verified copy is already there."""
    dest = Path(dest)
    if dest.exists() and verify(dest, checksum):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(dest.with_name(dest.name + ".lock")):  # several processes (torchrun): one downloads
        if dest.exists() and verify(dest, checksum):
            return dest
        return _download(url, dest, checksum, retries, timeout, backoff)


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """An advisory lock (flock) held by one process at a time; a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(url: str, dest: Path, checksum: str, retries: int, timeout: float, backoff: float) -> Path:
    part = dest.with_name(dest.name + ".part")
    last = ""
    for attempt in range(retries):
        try:
            _fetch_once(url, part, timeout)
            if verify(part, checksum):
                os.replace(part, dest)  # atomic: the final name only ever holds a verified file
                return dest
            last = f"checksum mismatch (expected {checksum})"
            part.unlink()  # a corrupt body is not worth resuming
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            if e.code == 416:  # our partial file is not a prefix the server can continue
                part.unlink(missing_ok=True)
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
            last = str(getattr(e, "reason", e)) or type(e).__name__
        if attempt + 1 < retries:
            time.sleep(backoff * 2 ** attempt)
    raise DlforgeError(f"download of {url} failed after {retries} tries: {last}")


def safe_extract(archive: Path, dest: Path, max_bytes: int = 8 << 30) -> Path:
    """Extract a zip or tar archive into dest, refusing absolute paths, '..', links and bombs."""
    import tarfile
    import zipfile

    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)

    def check(name: str, size: int, is_link: bool) -> None:
        target = (dest / name).resolve()
        if is_link or Path(name).is_absolute() or not target.is_relative_to(dest):
            raise DlforgeError(f"{archive}: refused unsafe member {name!r} (absolute, outside the target or a link)")
        check.total += size
        if check.total > max_bytes:
            raise DlforgeError(f"{archive}: refused, it would extract to more than {max_bytes} bytes")
    check.total = 0
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for m in z.infolist():
                    check(m.filename, m.file_size, (m.external_attr >> 16) & 0o170000 == 0o120000)
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    check(m.name, m.size, not (m.isfile() or m.isdir()))
                t.extractall(dest, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise DlforgeError(f"{archive}: cannot extract ({e})") from None
    return dest
