"""Text corpora larger than memory (issue 16): tokenization throughput and peak resident memory of training
`gpt-small` against the corpus size, and tokens/s of the token-file path against the in-memory one.

    python -m benchmarks.data_scale --sizes 250,1000,2000 --save

The corpus is real text found on this machine (every .py file of the virtual environment's
site-packages, /usr/share/doc's text files, ../shared's tinyshakespeare; ASCII files only), concatenated in a fixed order and
repeated until it reaches each size (the machine holds about 0.35 GB of such text). Each training run is a
fresh process (`dlforge train gpt-small --data-file FOLDER --max-steps 30`) whose peak RSS is read by
/usr/bin/time; the token cache of each corpus is made in that run (a fresh cache folder every time the
benchmark runs; `data prepare`'s throughput is measured in a cache of its own), so the figure includes
tokenizing.
Results: printed; --save writes benchmarks/results/data-scale.json. Corpora, caches and runs: --work (default
runs/bench-data-scale).

Images (`--images`; --save writes benchmarks/results/data-scale-images.json):

    python -m benchmarks.data_scale --images --save

writes Fashion-MNIST's 60,000 training and 10,000 test images as a PNG folder (train/<class>/, test/<class>/),
decodes it into the image cache (timed: the first run's cost), then trains `cnn-small` for one epoch at 28×28
on it (`--data folder`, images read from the cache a batch at a time) and on `--data fashion-mnist` (the IDX
files decoded into one tensor in memory), interleaved A B A B, each a fresh process whose peak RSS
/usr/bin/time reads; and times the batch pipeline alone (an epoch of batches with augmentation, no model) on
both, and the alternative design — decoding the PNG files on the fly in DataLoader worker processes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.pairs import command, cpu_name, report, save_options, saved_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def sources() -> list[Path]:
    site = Path(sys.prefix) / "lib"
    files = sorted(site.rglob("*.py")) + sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file()
                                                 and p.suffix in ("", ".txt", ".md") and p.stat().st_size < 1 << 22)
    if SHAKESPEARE.is_file():
        files.append(SHAKESPEARE)
    out = []
    for f in files:  # ASCII text only: a char vocabulary of ~100 symbols whatever the size (source code and
        try:         # docs in other scripts would give thousands of rare characters and a huge softmax)
            f.read_bytes().decode("ascii")
            out.append(f)
        except (OSError, UnicodeDecodeError):
            continue
    return out


def build(folder: Path, megabytes: int, files: list[Path]) -> Path:
    """folder/part-NNN.txt files of about 64 MB holding the sources in order, repeated, up to megabytes."""
    if (folder / "DONE").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    target, written, part = megabytes * 10 ** 6, 0, 0
    out = open(folder / f"part-{part:03d}.txt", "wb")
    while written < target:
        for f in files:
            data = f.read_bytes()
            out.write(data if data.endswith(b"\n") else data + b"\n")
            written += len(data) + 1
            if out.tell() > 64 << 20:
                out.close()
                part += 1
                out = open(folder / f"part-{part:03d}.txt", "wb")
            if written >= target:
                break
    out.close()
    (folder / "DONE").write_text(str(written))
    return folder


def peak_rss_run(argv: list[str], env: dict) -> tuple[float, float, str]:
    """-> (peak RSS in MB, wall seconds, stderr) of one process."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{r.stderr[-2000:]}")
    kb = int(re.search(r"MAXRSS_KB=(\d+)", r.stderr).group(1))
    return kb / 1024, wall, r.stderr


def tokenize_throughput(folder: Path, kind: str, env: dict) -> dict:
    rss, wall, err = peak_rss_run([sys.executable, "-m", "dlforge", "data", "prepare", "--data-file", str(folder),
                                   "--tokenizer", kind, "--no-progress"] + (["--vocab-size", "512"] if kind == "bpe"
                                                                            else []), env)
    return {"tokenizer": kind, "wall_s": wall, "peak_rss_mb": rss}


def train_rss(folder: Path, out: Path, env: dict) -> dict:
    argv = [sys.executable, "-m", "dlforge", "train", "gpt-small", "--data-file", str(folder), "--max-steps", "30",
            "--batch-size", "32", "--block-size", "128", "--val-fraction", "0.0005", "--eval-tokens", "16384",
            "--no-progress", "--out", str(out)]
    rss, wall, err = peak_rss_run(argv, env)
    m = re.search(r"tokenized ([\d,.]+) MB into ([\d,]+) tokens in ([\d.]+) s \(([\d.]+) MB/s\)", err)
    facts = json.loads((out / "config.json").read_text())["facts"]  # the line is printed only past 1 s: a small
    # corpus said "None tokens"; the run's own count is always there (tokens/s: only where the line says it)
    return {"peak_rss_mb": rss, "wall_s": wall, "tokenize_mb_s": float(m.group(4)) if m else None,
            "tokens": facts["train_tokens"] + facts["val_tokens"]}


def disk_vs_memory(out: Path) -> dict:
    """gpt-small on tinyshakespeare, 60 steps: batches read from the uint16 token file (TokenArray) against
    the same ids as one int64 tensor in memory (the previous release's layout), interleaved twice; tokens/s
    of the training steps."""
    import torch

    import dlforge
    from dlforge.data import tokens
    real = tokens.tokenize
    rates: dict[str, list[float]] = {"disk": [], "memory": []}
    for rep in range(2):
        for mode in ("disk", "memory"):
            if mode == "memory":
                tokens.tokenize = lambda *a, **k: (lambda t: (setattr(t, "ids", t.ids.read().long()), t)[1])(
                    real(*a, **k))
            torch.manual_seed(0)
            run = out / f"{mode}-{rep}"
            dlforge.train("gpt-small", data="tinyshakespeare" if not SHAKESPEARE.is_file() else str(SHAKESPEARE),
                          out=run, max_steps=60, batch_size=32, block_size=128, eval_every=10 ** 6,
                          eval_tokens=4096, progress=False)
            tokens.tokenize = real
            rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            steps = rec[-1]["step"]
            rates[mode].append(steps * 32 * 128 / rec[-1]["time"])
    best = {k: max(v) for k, v in rates.items()}
    return {"tokens_per_s": rates, "best": best, "ratio_disk_over_memory": best["disk"] / best["memory"]}


# ---------------------------------------------------------------- images
def write_png_folder(root: Path) -> Path:
    """Fashion-MNIST (the system copy, else the cache) as root/{train,test}/<class>/NNNNN.png."""
    import numpy as np
    from PIL import Image

    from dlforge.data import images
    if (root / "DONE").is_file():
        return root
    d = images.mnist_dir("fashion-mnist", None)
    for split, (xs, ys) in images.MNIST_SPLITS.items():
        x, y = (images.read_idx(images._find([d], s)) for s in (xs, ys))
        for c in range(10):
            (root / split / f"{c}-{images.FASHION_CLASSES[c].replace('/', '-')}").mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in (root / split).iterdir())
        for i in range(len(x)):
            Image.fromarray(np.ascontiguousarray(x[i])).save(root / split / names[y[i]] / f"{i:05d}.png")
    (root / "DONE").write_text("70000")
    return root


def cache_build(root: Path) -> dict:
    """Decode the folder into the image cache (a fresh cache folder): the first run's one-time cost."""
    import dlforge.data.images as images
    t0 = time.perf_counter()
    d = images.load_dataset("folder", data_dir=str(root), img_size=28)
    wall = time.perf_counter() - t0
    n = len(d.train_y) + len(d.test_y)
    t0 = time.perf_counter()
    images.load_dataset("folder", data_dir=str(root), img_size=28)
    return {"images": n, "build_s": wall, "images_per_s": n / wall, "reopen_s": time.perf_counter() - t0,
            "cache_mb": sum(p.stat().st_size for p in (Path(os.environ["DLFORGE_CACHE"]) / "images").glob("*.u8")) / 1e6}


def train_epoch(data: list[str], out: Path, env: dict) -> dict:
    import shutil
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time the benchmark runs
    argv = [sys.executable, "-m", "dlforge", "train", "cnn-small", *data, "--img-size", "28", "--epochs", "1",
            "--batch-size", "128", "--no-progress", "--out", str(out)]
    rss, wall, _ = peak_rss_run(argv, env)
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in rec if "images_per_s" in r)
    return {"peak_rss_mb": rss, "wall_s": wall, "images_per_s": epoch["images_per_s"],
            "test_accuracy": json.loads((out / "report.json").read_text())["accuracy"]}


def pipeline_epoch(root: Path) -> dict:
    """An epoch of augmented batches (the training transform, batch 128), no model: from the cache against
    from memory; and the alternative, PNG files decoded on the fly by 2 DataLoader workers."""
    import numpy as np
    import torch

    from dlforge.data import images
    from dlforge.data.loader import BatchLoader
    from dlforge.data.transforms import ImageTransform, TransformConfig
    torch.set_num_threads(2)
    out = {}
    for name, kw in (("cache", {"name": "folder", "data_dir": str(root)}), ("memory", {"name": "fashion-mnist"})):
        d = images.load_dataset(kw["name"], kw.get("data_dir"), 28)
        tf = ImageTransform(TransformConfig(img_size=28, channels=3, mean=d.mean, std=d.std), train=True)
        loader = BatchLoader(d.train_x, d.train_y, 128, shuffle=True, seed=0, transform=tf)
        best = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            n = sum(len(yb) for _, yb in loader.epoch(0))
            best = max(best, n / (time.perf_counter() - t0))
        out[name] = best

    files, labels, _ = images._scan_folder(root / "train")

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return torch.from_numpy(images.decode_image(files[i], 28, "L").copy()), labels[i]
    loader = torch.utils.data.DataLoader(Files(), batch_size=128, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    n = sum(len(yb) for _, yb in loader)
    out["decode_workers_2"] = n / (time.perf_counter() - t0)
    t0, k = time.perf_counter(), 3000  # one process decoding, for the CPU cost per image
    for i in np.random.default_rng(0).permutation(len(files))[:k]:
        images.decode_image(files[i], 28, "L")
    out["decode_one_process"] = k / (time.perf_counter() - t0)
    return out


def images_benchmark(out: Path, env: dict, pairs: int) -> dict:
    import shutil
    root = write_png_folder(out / "fashion-png")
    shutil.rmtree(out / "cache" / "images", ignore_errors=True)  # the cache's build is part of the figure
    results = {"command": command(), "machine": cpu_name(), "folder": str(root), "cache": cache_build(root)}
    c = results["cache"]
    print(f"image cache: {c['images']:,} PNG files decoded in {c['build_s']:.1f} s ({c['images_per_s']:,.0f} "
          f"images/s), {c['cache_mb']:.0f} MB; reopened in {c['reopen_s']:.2f} s", flush=True)
    runs: dict[str, list[dict]] = {"cache": [], "memory": []}
    for rep in range(pairs):
        for name, data in (("cache", ["--data", "folder", "--data-dir", str(root)]), ("memory", ["--data", "fashion-mnist"])):
            r = train_epoch(data, out / f"img-{name}-{rep}", env)
            runs[name].append(r)
            print(f"{name} {rep}: {r['images_per_s']:.0f} images/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"test accuracy {r['test_accuracy']:.4f}", flush=True)
    ratios = [a["images_per_s"] / b["images_per_s"] for a, b in zip(runs["cache"], runs["memory"])]
    results.update(train_epoch_runs=runs, ratio_cache_over_memory=ratios,
                   median_ratio=statistics.median(ratios), pipeline_images_per_s=pipeline_epoch(root))
    print(f"training epoch, cache / memory: {', '.join(f'{r:.3f}' for r in ratios)}; pipeline alone "
          f"{results['pipeline_images_per_s']}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250,1000,2000", help="corpus sizes in MB")
    ap.add_argument("--skip-disk-vs-memory", action="store_true")
    ap.add_argument("--images", action="store_true", help="the image benchmark instead of the text one "
                                                          "(--save writes benchmarks/results/data-scale-images.json)")
    ap.add_argument("--pairs", type=int, default=2, help="--images: interleaved cache/memory training epochs")
    save_options(ap, RESULTS / "data-scale.json", work="runs/bench-data-scale")
    args = ap.parse_args()
    out = args.work
    out.mkdir(parents=True, exist_ok=True)
    os.environ["DLFORGE_CACHE"] = str((out / "cache").resolve())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.images:
        return report(images_benchmark(out, env, args.pairs), saved_path(args, RESULTS / "data-scale-images.json"),
                      indent=2)
    # the corpora are kept between runs; token caches and training runs are made again, so that tokenizing is
    # measured every time, not read from an earlier run's cache (a downloaded corpus in the cache stays)
    for old in [out / "cache" / "tokens", out / "cache-prepare", *out.glob("run-*"), *out.glob("disk-*"),
                *out.glob("memory-*")]:
        shutil.rmtree(old, ignore_errors=True)
    files = sources()
    available = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files):,} source files, {available:,.0f} MB of real text", flush=True)
    results = {"command": command(), "machine": cpu_name(), "source_files": len(files), "source_mb": available,
               "sizes": []}
    sizes = [int(s) for s in args.sizes.split(",")]
    small = build(out / f"corpus-{sizes[0]}", sizes[0], files)
    prepare_env = {**env, "DLFORGE_CACHE": str((out / "cache-prepare").resolve())}  # not the training runs' cache
    results["tokenize"] = [tokenize_throughput(small, k, prepare_env) for k in ("char", "bpe")]
    for r in results["tokenize"]:
        r["mb_s"] = sizes[0] / r["wall_s"]
        print(f"tokenize {r['tokenizer']}: {sizes[0]} MB in {r['wall_s']:.1f} s = {r['mb_s']:.1f} MB/s end to end "
              f"(fit, digest, tokenize); peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    for mb in sizes:
        folder = build(out / f"corpus-{mb}", mb, files)
        r = {"corpus_mb": mb, **train_rss(folder, out / f"run-{mb}", env)}
        results["sizes"].append(r)
        rate = f"tokenized at {r['tokenize_mb_s']} MB/s" if r["tokenize_mb_s"] else "tokenized in under 1 s"
        print(f"{mb} MB: peak RSS {r['peak_rss_mb']:.0f} MB, {r['wall_s']:.0f} s, {r['tokens']:,} tokens, {rate}",
              flush=True)
    if not args.skip_disk_vs_memory:
        from dlforge.errors import DlforgeError
        try:
            results["disk_vs_memory"] = disk_vs_memory(out)
        except DlforgeError as e:  # e.g. no ../shared and no network to download tinyshakespeare
            sys.exit(f"benchmarks.data_scale, the token file against memory: {e} (--skip-disk-vs-memory skips it)")
        print(f"tokens/s disk / memory: {results['disk_vs_memory']['ratio_disk_over_memory']:.3f} "
              f"{results['disk_vs_memory']['best']}", flush=True)
    report(results, saved_path(args), indent=2)


if __name__ == "__main__":
    main()
