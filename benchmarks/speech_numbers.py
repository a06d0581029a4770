"""Speech recognition on spoken numbers (pt, es, pl, it, sr, en; eSpeak NG): test word error rate per language on
held-out numbers spoken by held-out voice variants, after at most --minutes of training on this CPU; greedy
against prefix beam search, with and without a character language model; the real-time factor on one core.

    python -m benchmarks.speech_numbers --minutes 30 --save       # train both, evaluate, write the JSON
    python -m benchmarks.speech_numbers --run RUN --lm LM --save  # evaluate runs already trained

Steps: (1) `dlforge train asr-lstm --data spoken-numbers ... --max-time M` (the real command line, in a
subprocess); (2) the character language model: `dlforge train lstm-small --data-file transcripts.txt
--max-time L` on the training transcripts, one per line (the language-model family); (3) the LM weight
picked on the validation clips (held-out numbers, training voices), never on the test clips; (4) the test
clips decoded greedy, beam 8, beam 8 + LM, in a process with one thread (OMP_NUM_THREADS=1): the
real-time factor is processing seconds (features, network, decoding) per second of audio on one core.
Run it alone: it measures the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The 30-minute recipe (2 CPU cores): 3 bidirectional LSTM layers of 256 over 80 log-mel bands, time / 4,
# 24,000 training clips (4,000 per language, ~22 h of audio), batches of 32 clips, cosine decay to the end.
RECIPE = ["asr-lstm", "--data", "spoken-numbers", "--train-clips", "4000", "--batch-size", "32", "--lr", "2e-3",
          "--warmup-steps", "100", "--lr-schedule", "cosine", "--min-lr-ratio", "0.05", "--eval-every", "400",
          "--grad-clip", "5"]
LM_RECIPE = ["lstm-small", "--batch-size", "32", "--block-size", "64", "--lr", "3e-3", "--lr-schedule", "cosine",
             "--eval-every", "200", "--beta2", "0.99"]
WEIGHTS = (0.2, 0.4, 0.6)


def _run(cmd: list[str], env: dict | None = None) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - t0


def train(out: Path, minutes: float) -> dict:
    _, seconds = _run([sys.executable, "-m", "dlforge", "train", *RECIPE, "--max-time", str(minutes), "--out",
                       str(out), "--no-progress"])
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    return {"command": "dlforge train " + " ".join(RECIPE) + f" --max-time {minutes:g}", "wall_s": seconds,
            "train_s": metrics[-1]["time"], "steps": metrics[-1]["step"], "facts": cfg["facts"],
            "val_curve": [(m["step"], round(m["time"]), round(m["val_wer"], 4), round(m["val_cer"], 4))
                          for m in metrics if "val_wer" in m]}


def train_lm(run: Path, out: Path, minutes: float) -> dict:
    """The character LM on the ASR run's training transcripts, one per line."""
    sys.path.insert(0, str(ROOT))
    from dlforge.recipes.transcribe import SpeechDataConfig, prepare
    cfg = json.loads((run / "config.json").read_text())
    data = prepare(SpeechDataConfig(**cfg["data"]), cfg["facts"].get("data_seed", 0))
    text = out.with_suffix(".txt")
    text.write_text("".join(t + "\n" for t in data.train.texts), encoding="utf-8")
    _, seconds = _run([sys.executable, "-m", "dlforge", "train", *LM_RECIPE, "--data-file", str(text),
                       "--max-time", str(minutes), "--out", str(out), "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    return {"command": f"dlforge train {' '.join(LM_RECIPE)} --data-file transcripts.txt --max-time {minutes:g}",
            "wall_s": seconds, "val_bpc": report.get("bpc"), "transcripts": len(data.train.texts)}


EVAL = """
import json, sys, torch
import dlforge
torch.set_num_threads(1)
h = dlforge.load(sys.argv[1], device="cpu")
kw = json.loads(sys.argv[2])
r = h.evaluate(**kw)
print(json.dumps(r))
"""


def evaluate(run: Path, **kw) -> dict:
    stdout, _ = _run([sys.executable, "-c", EVAL, str(run), json.dumps(kw)],
                     {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    r = json.loads(stdout.strip().splitlines()[-1])
    return {"decoding": r["decoding"], "clips": r["test_clips"], "audio_s": round(r["audio_seconds"], 1),
            "wer": r["wer"], "cer": r["cer"], "real_time_factor": r["real_time_factor"], "threads": r["threads"],
            "per_language": {g: {"wer": v["wer"], "cer": v["cer"]} for g, v in r["per_language"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="ASR training budget (--max-time)")
    ap.add_argument("--lm-minutes", type=float, default=2.0, help="character LM training budget")
    ap.add_argument("--run", type=Path, help="an ASR run already trained (skip step 1)")
    ap.add_argument("--lm", type=Path, help="a character LM run already trained (skip step 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-speech-numbers")
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--save", action="store_true", help=f"write {RESULTS / 'speech-numbers.json'}")
    args = ap.parse_args()
    result: dict = {"machine": f"{os.cpu_count()} CPU cores", "torch_threads_training": "default"}
    run = args.run or args.out
    if args.run is None:
        result["training"] = train(run, args.minutes)
        print(json.dumps(result["training"]), flush=True)
    lm = args.lm or run.with_name(run.name + "-char-lm")
    if args.lm is None:
        result["char_lm"] = train_lm(run, lm, args.lm_minutes)
        print(json.dumps(result["char_lm"]), flush=True)
    val = {w: evaluate(run, beam=args.beam, lm=str(lm), lm_weight=w, split="val") for w in WEIGHTS}
    best_w = min(WEIGHTS, key=lambda w: val[w]["wer"])
    result["lm_weight_on_validation"] = {str(w): v["wer"] for w, v in val.items()} | {"picked": best_w}
    result["test"] = {"greedy": evaluate(run), f"beam{args.beam}": evaluate(run, beam=args.beam),
                      f"beam{args.beam}+lm": evaluate(run, beam=args.beam, lm=str(lm), lm_weight=best_w)}
    table = {name: {g: round(100 * v["wer"], 2) for g, v in r["per_language"].items()} | {"all": round(100 * r["wer"], 2)}
             for name, r in result["test"].items()}
    result["test_wer_percent"] = table
    result["real_time_factor_one_core"] = {name: round(r["real_time_factor"], 4) for name, r in result["test"].items()}
    print(json.dumps(result, indent=1))
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "speech-numbers.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
