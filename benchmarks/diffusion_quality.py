"""Text-to-image diffusion quality on a 2-core CPU (issue 6).

1. a dlforge `cnn` classifier trained on the dataset (28×28) labels images and gives penultimate features;
2. `dlforge train diffusion` for a fixed budget (--minutes, the trainer's --max-time);
3. DDIM-50 on --n images: prompt accuracy (guidance 3) and Fréchet distance to as many real test images,
   with the floor (held-out real images) and the ceiling (noise);
4. DDPM-1000 and DDIM-50 on the same --n-ddpm images and seed: the quality ratio at equal sample count
   (the Fréchet distance is biased by the sample count, so only equal counts compare; the kernel distance is
   unbiased, with its spread over subsets) and the speed ratio.
Prints the results; --save writes benchmarks/results/diffusion-quality-<data>-<model>.json. The classifier and
the diffusion run are kept in --work (default runs/bench-diffusion): a second command there trains neither again.

    python -m benchmarks.diffusion_quality --data fashion-mnist --minutes 40 --save
    python -m benchmarks.diffusion_quality --data digits --minutes 5 --n 360 --n-ddpm 100 --save
    python -m benchmarks.diffusion_quality --data fashion-mnist --minutes 40 --model unet-fast \
        --guidance-sweep 3 5 8 --sweep-only --save  # prompt accuracy and Fréchet distance against the guidance
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.pairs import command, report, save_options, saved_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def dlforge(*argv: str) -> dict:
    """Run one dlforge command; -> its last stdout line as JSON (stderr passes through: progress, notes)."""
    t0 = time.perf_counter()
    print("$ dlforge " + " ".join(argv), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "dlforge", *argv], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode:  # its own error is already on stderr, above
        sys.exit(f"benchmarks.diffusion_quality: `dlforge {argv[0]}` failed (exit status {proc.returncode})")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--minutes", type=float, default=40.0, help="diffusion training budget (--max-time)")
    ap.add_argument("--classifier-epochs", type=int, default=8, help="the judge's epochs (cosine learning rate)")
    ap.add_argument("--n", type=int, default=5000, help="DDIM-50 images (and as many real test images)")
    ap.add_argument("--n-ddpm", type=int, default=500, help="images for the DDPM-1000 vs DDIM-50 comparison")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM's η (0: deterministic; 1: DDPM-like noise)")
    ap.add_argument("--also-eta", type=float, nargs="*", default=[], metavar="ETA",
                    help="also evaluate DDIM-50 with these η on --n and --n-ddpm images "
                         "(ddim50_eta<η> in the results)")
    ap.add_argument("--guidance-sweep", type=float, nargs="*", default=[], metavar="G",
                    help="also DDIM-50 at each guidance G with η = 0 and η = 1 on --sweep-n images "
                         "(guidance_sweep in the results)")
    ap.add_argument("--sweep-n", type=int, default=500)
    ap.add_argument("--sweep-only", action="store_true",
                    help="after training, only the guidance sweep: --save writes "
                         "diffusion-guidance-<data>-<model>.json")
    ap.add_argument("--suffix", default="", help="appended to the results file's name after a dash (e.g. seed1: "
                                                 "...-unet-fast-seed1.json): runs that differ only in --recipe keep "
                                                 "their own files")
    ap.add_argument("--recipe", default="--batch-size 256 --lr 2e-3 --lr-schedule cosine --warmup-steps 100 "
                                        "--min-lr-ratio 0.05 --eval-every 1000 --grad-clip 1",
                    help="extra `dlforge train diffusion` options (add --seed S for another training seed); batch 256: "
                         "higher prompt accuracy in the same minutes than 128 (README, Measured)")
    ap.add_argument("--model", default="diffusion", help="diffusion (= unet), unet-small, ...")
    save_options(ap, RESULTS / "diffusion-quality-<data>-<model>[-<suffix>].json", work="runs/bench-diffusion")
    args = ap.parse_args()
    suffix = "-" + args.suffix.lstrip("-") if args.suffix else ""  # a value may not start with a dash on the line
    out = args.work / args.data
    cls, dif = out / "classifier", out / "diffusion"
    res: dict = {"benchmark": "diffusion_quality", "command": command(), "data": args.data, "recipe": args.recipe,
                 "model": args.model}
    if not (cls / "report.json").is_file():
        r = dlforge("train", "cnn", "--data", args.data, "--img-size", "28", "--epochs", str(args.classifier_epochs),
                    "--lr-schedule", "cosine", "--out", str(cls), "--no-progress", "--json")
        res["classifier"] = {"test_accuracy": r["accuracy"], "wall_seconds": r["wall_seconds"]}
    else:
        res["classifier"] = {"test_accuracy": json.loads((cls / "report.json").read_text())["accuracy"]}
    if not (dif / "checkpoints" / "last.safetensors").is_file():
        r = dlforge("train", args.model, "--data", args.data, "--max-time", str(args.minutes), "--epochs", "1000",
                    "--out", str(dif), "--no-progress", "--json", *args.recipe.split())
        res["train"] = r
    metrics = [json.loads(x) for x in (dif / "metrics.jsonl").read_text().splitlines()]
    res["train_seconds"] = max(m.get("time", 0) for m in metrics)
    res["train_steps"] = max(m.get("step", 0) for m in metrics)
    res["val_loss"] = [(m["step"], round(m["val_loss"], 5)) for m in metrics if "val_loss" in m]
    sweep = [dlforge("eval", str(dif), "--n", str(args.sweep_n), "--sampler", "ddim", "--steps", "50", "--eta",
                     str(eta), "--classifier", str(cls), "--guidance", str(g), "--json", "--seed", "0")
             for g in args.guidance_sweep for eta in (0.0, 1.0)]
    if sweep:
        res["guidance_sweep"] = [{k: r[k] for k in ("guidance", "eta", "images", "prompt_accuracy", "per_class_accuracy",
                                                    "frechet", "frechet_real", "kid", "kid_std", "images_per_s")}
                                 for r in sweep]
    if args.sweep_only:
        return report(res, saved_path(args, RESULTS / f"diffusion-guidance-{args.data}-{args.model}{suffix}.json"))
    common = ["--classifier", str(cls), "--guidance", str(args.guidance), "--json", "--seed", "0"]
    ddim = lambda n, eta: dlforge("eval", str(dif), "--n", str(n), "--sampler", "ddim", "--steps", "50",  # noqa: E731
                                  "--eta", str(eta), *common)
    res["ddim50"], res["ddim50_small"] = ddim(args.n, args.eta), ddim(args.n_ddpm, args.eta)
    res["ddpm1000_small"] = dlforge("eval", str(dif), "--n", str(args.n_ddpm), "--sampler", "ddpm", *common)
    for eta in args.also_eta:
        res[f"ddim50_eta{eta:g}"], res[f"ddim50_small_eta{eta:g}"] = ddim(args.n, eta), ddim(args.n_ddpm, eta)
    a, b = res["ddim50_small"], res["ddpm1000_small"]
    res["ddim_vs_ddpm"] = {"images": args.n_ddpm, "speedup": a["images_per_s"] / b["images_per_s"],
                           "prompt_accuracy": [a["prompt_accuracy"], b["prompt_accuracy"]],
                           "frechet": [a["frechet"], b["frechet"]],
                           "frechet_ratio": a["frechet"] / b["frechet"],
                           "kid": [a["kid"], b["kid"]], "kid_std": [a["kid_std"], b["kid_std"]]}
    print(json.dumps({k: res[k] for k in ("data", "train_seconds", "train_steps", "ddim_vs_ddpm")}), file=sys.stderr)
    report(res, saved_path(args, RESULTS / f"diffusion-quality-{args.data}-{args.model}{suffix}.json"))


if __name__ == "__main__":
    main()
