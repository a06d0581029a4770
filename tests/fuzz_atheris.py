"""Coverage-guided fuzzing (atheris, i.e. libFuzzer for Python) of the readers that take untrusted bytes:
the IDX reader, the image decoder, the checkpoint loader and the --init-from weights loader. The first
byte picks the reader, the rest is the file. A result or a DlforgeError is fine; any other exception is a
crash, and so is a hang (-timeout) or more memory than -rss_limit_mb.

    python tests/fuzz_atheris.py -runs=100000 -seed=1 [CORPUS_DIR ...]     # libFuzzer's options

With DLFORGE_FUZZ_STATS=FILE set, it keeps {reader: {"result": n, "refused": n}} in FILE as it goes
(libFuzzer ends the process with exit(), so nothing runs after the last input).
tests/test_fuzz.py runs it for a bounded number of inputs.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["dlforge", "PIL"]):  # coverage feedback from our code and Pillow's
    from PIL import Image
    Image.init()  # load the format plugins now, inside the instrumented block
    from dlforge.data.images import decode_image, read_idx
    from dlforge.errors import DlforgeError
    from dlforge.train.checkpoint import load_checkpoint, load_weights

READERS = {
    "IDX": read_idx,
    "image": lambda p: decode_image(p, 8, "RGB"),
    "checkpoint": load_checkpoint,
    "--init-from weights": load_weights,
}
NAMES = list(READERS)
INPUT = os.path.join(tempfile.mkdtemp(prefix="dlforge-fuzz-"), "input")
STATS = {name: {"result": 0, "refused": 0} for name in NAMES}


def selector(name: str) -> bytes:
    """The first byte that routes an input to the reader `name` (for seed files)."""
    return bytes([NAMES.index(name)])


def test_one_input(data: bytes) -> None:
    if not data:
        return
    name = NAMES[data[0] % len(NAMES)]
    with open(INPUT, "wb") as f:
        f.write(data[1:])
    try:
        READERS[name](INPUT)
        STATS[name]["result"] += 1
    except DlforgeError:
        STATS[name]["refused"] += 1
    if os.environ.get("DLFORGE_FUZZ_STATS"):
        with open(os.environ["DLFORGE_FUZZ_STATS"], "w") as f:
            json.dump(STATS, f)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
