"""Fit the budget table: which model, context, batch and learning rate train the best char-level language
model on tinyshakespeare in M minutes on this machine (a small compute-optimal sweep, as in Chinchilla's
first approach: several sizes trained to each budget, the best one kept).

    flock /tmp/dlforge-cpu.lock python -m benchmarks.budget_sweep --save          # gpt and lstm, 3/10/30 min
    python -m benchmarks.budget_sweep --models gpt --budgets 3 --candidates gpt-s gpt-m
    python -m benchmarks.budget_sweep --fit-only --save     # the table and plot from the runs already made
    python -m benchmarks.budget_sweep --replay gpt:10 lstm:3  # those rows again by their steps, raw and averaged
    python -m benchmarks.budget_sweep --replay gpt:10 --set lr=0.004  # ... with an option changed
    python -m benchmarks.budget_sweep --replay gpt:30 --ema-decays 0.995 0.998  # ... and other averages beside its own
    python -m benchmarks.budget_sweep --replay gpt:30 --set seed=1  # ... at another seed: the row's figure, their mean

Every (budget, candidate) is one real `dlforge train MODEL --max-time M` with the candidate's flags and a
cosine schedule that ends with the budget; its full-validation loss is read from the run's report (the moving
average of the weights, as the run loads it; val_loss_raw: the same checkpoint's raw weights). Runs are
kept in benchmarks/results/budget-sweep.json as they finish, and a run already there is not run again
(--rerun to redo them), so a sweep can be stopped and continued. With --save the table
dlforge/recipes/budgets.json (what `dlforge train gpt --max-time M` uses when no size is given) is rewritten
from the sweep: at each budget, the candidate with the lowest loss, and the shortfall cost by which a budget
between rows picks one (dlforge.recipes.language_model.budget_recipe). Replays (--replay) that changed only
options that keep a step's time (SAME_STEP_TIME: learning rate, weight decay, optimizer...) join the fit as
runs of the machine whose row they replayed (benchmarks/results/budget-replay.json); one with --set seed=S is
another seed of the candidate its other changes name, whose figure is then the mean over its seeds, compared with
another candidate's over the seeds both have (seeds_averaged). A replay with
--ema-decays keeps moving averages of those decays beside the run's own (the training is unchanged by them: each
one only reads the weights after every step) and scores each, and the run's own, at the last step; the fit
gives the row the decay that scored lowest there (benchmarks.budget_sweep.averaging). The plot,
benchmarks/results/budget-sweep.png, shows the loss of every candidate against the budget.
Run it alone on the machine: the budgets are wall-clock minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.pairs import cpu_name, train_cli
from dlforge.recipes.base import option_argv
from dlforge.recipes.language_model import EMA_DECAY as LM_EMA_DECAY, SPEEDS, machine_speed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEP = RESULTS / "budget-sweep.json"
TABLE = ROOT / "dlforge" / "recipes" / "budgets.json"
# Earlier sweeps, on other machines: their budgets' bests are not this table's, but what a candidate lost at a
# budget it was not kept for is a measurement of the shortfall cost all the same.
ARCHIVES = [RESULTS / "budget-sweep-sapphire-rapids.json", RESULTS / "budget-sweep-epyc-avx512.json"]
REPLAYS = RESULTS / "budget-replay.json"
# Options whose change leaves a step's time as it was: a row replayed by its steps with only these changed is what
# that variant would have done in the row's minutes on the row's machine, so it joins the fit as that machine's run.
SAME_STEP_TIME = {"lr", "weight_decay", "weight_decay_on", "optimizer", "warmup_steps", "beta2", "grad_clip",
                  "min_lr_ratio", "ema_decay", "sampling"}
# The GPT runs recorded before --sampling drew their windows at random (what gpt runs now get with it "random"):
# their rows say so (table() fills it in; a replay trains by its row's options), so that a row trains as it was
# measured until a replay of it with "shuffled" wins (a new run's default, which no sweep run had measured).
BEFORE_SAMPLING = {"gpt": {"sampling": "random"}}
SWEEP_SAMPLING = {"gpt": {"sampling": "shuffled"}}  # what a sweep run made now records (and trains with)

# What every candidate shares: AdamW, warm-up then a cosine to lr/10 at the budget's end, β2 0.99, clip 1.
COMMON = {"lr_schedule": "cosine", "beta2": 0.99, "weight_decay": 0.0, "grad_clip": 1.0}
# Candidates from small to large. gpt: nanoGPT's shapes without biases; dropout once a budget means many epochs
# of a 1 MB corpus.
CANDIDATES = {
    "gpt": {
        "gpt-s": {"layers": 4, "heads": 4, "width": 128, "block_size": 64, "batch_size": 32, "lr": 2e-3,
                  "warmup_steps": 50, "dropout": 0.0, "bias": False, "eval_every": 250},
        "gpt-s16": {"layers": 4, "heads": 4, "width": 128, "block_size": 64, "batch_size": 16, "lr": 2e-3,
                    "warmup_steps": 100, "dropout": 0.0, "bias": False, "eval_every": 500},
        "gpt-s16-lr3": {"layers": 4, "heads": 4, "width": 128, "block_size": 64, "batch_size": 16, "lr": 3e-3,
                        "warmup_steps": 100, "dropout": 0.0, "bias": False, "eval_every": 500},
        # the 30-minute row's model with twice the context at the same tokens per step, with what the replays
        # found for that row: weight decay 0.1 under AdamW and a 0.999 moving average
        "gpt-s128": {"layers": 4, "heads": 4, "width": 128, "block_size": 128, "batch_size": 16, "lr": 2e-3,
                     "warmup_steps": 50, "dropout": 0.0, "bias": False, "eval_every": 250, "weight_decay": 0.1,
                     "optimizer": "adamw", "ema_decay": 0.999},
        "gpt-m": {"layers": 4, "heads": 4, "width": 192, "block_size": 128, "batch_size": 32, "lr": 2e-3,
                  "warmup_steps": 50, "dropout": 0.0, "bias": False, "eval_every": 250},
        "gpt-m-drop": {"layers": 4, "heads": 4, "width": 192, "block_size": 128, "batch_size": 32, "lr": 2e-3,
                       "warmup_steps": 50, "dropout": 0.1, "bias": False, "eval_every": 250},
        "gpt-l": {"layers": 6, "heads": 6, "width": 240, "block_size": 128, "batch_size": 32, "lr": 1.5e-3,
                  "warmup_steps": 100, "dropout": 0.1, "bias": False, "eval_every": 250},
    },
    "lstm": {
        "lstm-xs": {"layers": 1, "width": 256, "block_size": 64, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20,
                    "eval_every": 100},
        "lstm-s": {"layers": 1, "width": 384, "block_size": 64, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20,
                   "eval_every": 100},
        "lstm-s-drop": {"layers": 1, "width": 384, "block_size": 64, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20,
                        "dropout": 0.1, "eval_every": 100},
        "lstm-m": {"layers": 1, "width": 512, "block_size": 64, "batch_size": 128, "lr": 3e-3, "warmup_steps": 20,
                   "eval_every": 100},
        "lstm-m-drop": {"layers": 1, "width": 512, "block_size": 64, "batch_size": 128, "lr": 3e-3,
                        "warmup_steps": 20, "dropout": 0.25, "eval_every": 100},
        "lstm-l": {"layers": 2, "width": 512, "block_size": 64, "batch_size": 128, "lr": 2e-3, "warmup_steps": 20,
                   "dropout": 0.1, "eval_every": 100},
    },
}
# The speed each model's minutes are converted by (dlforge.recipes.language_model.SPEEDS), each its own step's: the
# LSTM runs in oneDNN's RNN kernels, 2.5-3.5x slower on an AVX2 EPYC than on an AVX-512 one at nearly the same
# matmul peak; a GPT step mixes MKL's products with attention, GELU and LayerNorm, 2x slower there at a peak
# 20-33% lower.
SPEED = {"gpt": "gpt_gflops", "lstm": "lstm_gflops"}
DEFAULT_GRID = {  # which candidates each budget tries: the neighbours of the expected optimum, not all of them
    "gpt": {3: ["gpt-s", "gpt-s16", "gpt-s16-lr3"], 10: ["gpt-s", "gpt-s16", "gpt-s16-lr3"], 30: ["gpt-s"]},
    "lstm": {3: ["lstm-xs", "lstm-s"], 10: ["lstm-xs", "lstm-s", "lstm-s-drop"], 30: ["lstm-s-drop", "lstm-m-drop"]},
}


def run(model: str, name: str, minutes: float, work: Path) -> dict:
    options = {**COMMON, **SWEEP_SAMPLING.get(model, {}), **CANDIDATES[model][name]}
    out = work / f"{name}-{minutes:g}"
    argv = [model, *option_argv(options), "--data", "tinyshakespeare", "--tokenizer", "char", "--max-time", f"{minutes:g}",
            "--eval-tokens", "32768"]
    from dlforge.perf import matmul_peak
    peak = matmul_peak(2048, 10)  # this run's machine speed: the table converts minutes by it
    speeds = {SPEED[model]: round(machine_speed(SPEED[model]), 1)}  # and its model's own
    report, meta, wall = train_cli(argv, out)
    raw = _raw_weights(out)
    return {"model": model, "candidate": name, "minutes": minutes, "options": options,
            "val_loss": report["loss"], "val_loss_raw": raw.evaluate()["loss"], "steps": meta["step"],
            "parameters": sum(p.numel() for p in raw.model.parameters()),
            "tokens": meta["step"] * options["batch_size"] * options["block_size"],
            "wall_s": round(wall, 1), "peak_gflops": round(peak, 1), **speeds, "machine": cpu_name(),
            "command": "dlforge train " + " ".join(argv)}


def _raw_weights(run: Path):
    """The run's best checkpoint without its moving average (the report scored the average)."""
    import dlforge
    return dlforge.load(run, ema=False)


def averages_entry(argv: list[str]) -> int:
    """`python -m benchmarks.budget_sweep _averages OUT D1,D2,... train ...`: dlforge's CLI, keeping beside the
    run's own moving average of the weights one more for each decay D (the same update, AveragedWeights.after_step,
    after every optimiser step); at the end they are saved to OUT as D/NAME."""
    from safetensors.torch import save_file
    from dlforge.cli import main as cli
    from dlforge.train.tasks import AveragedWeights, LanguageModelTask

    class Average(AveragedWeights):
        def __init__(self, decay: float):
            self.ema_decay = decay
            self._init_ema()

    extra = [Average(float(d)) for d in argv[1].split(",")]
    step = LanguageModelTask.after_step

    def after_step(self, model):
        step(self, model)
        for a in extra:
            a.after_step(model)

    LanguageModelTask.after_step = after_step
    try:
        code = cli(argv[2:])
    finally:
        LanguageModelTask.after_step = step
    save_file({f"{a.ema_decay:g}/{k}": v.contiguous() for a in extra for k, v in (a.ema or {}).items()}, argv[0])
    return code


def averages_cli(path: Path, decays) -> tuple:
    """train_cli's entry that keeps side averages of `decays` (averages_entry) and saves them to `path`; () for
    dlforge's plain CLI when there are none."""
    return ("-m", "benchmarks.budget_sweep", "_averages", str(path), ",".join(map(str, decays))) if decays else ()


def averages_scored(run: Path, averages: Path) -> dict[str, float]:
    """Full-validation loss of the run's last checkpoint with its own moving average and with each of `averages`."""
    import dlforge
    from safetensors.torch import load_file
    from dlforge.train.checkpoint import restore_averaged
    h = dlforge.load(run, which="last")
    scores = {f"{h.config.task_options['ema_decay']:g}": h.evaluate()["loss"]}
    by_decay: dict[str, dict] = {}
    for k, v in load_file(averages).items():
        decay, _, name = k.partition("/")
        by_decay.setdefault(decay, {})[name] = v
    for decay, averaged in by_decay.items():
        restore_averaged(h.model, averaged, averages)
        scores[decay] = h.evaluate()["loss"]
    return scores


def replay(model: str, minutes: float, work: Path, changes: dict | None = None, decays: list[float] = ()) -> dict:
    """The table's row for (model, minutes) trained again by its run's step count instead of the clock: on any
    machine, the training the sweep's run did (its cosine then follows the steps, not the minutes), scored with
    and without the moving average of the weights, which the sweep's runs were made without. `changes`: options
    that differ from the row's (--set lr=0.004). A change that keeps the model's shape keeps its step time, so
    the replay is what that candidate would have done in the row's minutes on the row's machine."""
    rows = [r for r in json.loads(TABLE.read_text())["recipes"][model] if r["minutes"] == minutes]
    if not rows:
        sys.exit(f"--replay: the table has no {model} row of {minutes:g} minutes")
    row = rows[0]
    out = work / f"replay-{row['candidate']}-{minutes:g}"
    argv = [model, *option_argv({**row["options"], **(changes or {})}), "--data", "tinyshakespeare", "--tokenizer", "char",
            "--max-steps", str(row["steps"]), "--epochs", "1000", "--eval-tokens", "32768"]
    averages = work / "averages.safetensors"
    report, meta, wall = train_cli(argv, out, averages_cli(averages, decays))
    r = {"model": model, "minutes": minutes, "candidate": row["candidate"], "changes": changes or {},
         # what it trained with: the row's options (with a decay the table chose) and the changes, but the seed
         "options": {k: v for k, v in {**row["options"], **(changes or {})}.items() if k != "seed"},
         "steps": meta["step"],
         "table_val_loss": row["val_loss"], "table_machine": row["machine"],
         "val_loss": report["loss"], "val_loss_raw": _raw_weights(out).evaluate()["loss"],
         "wall_s": round(wall, 1), "machine": cpu_name(), "command": "dlforge train " + " ".join(argv)}
    if decays:  # the last step's loss by moving average's decay (the run's own among them)
        r["val_loss_last_by_ema_decay"] = averages_scored(out, averages)
    return r


def joined_replays(sweep: list[dict], replays: list[dict]) -> list[dict]:
    """The replays that changed only SAME_STEP_TIME options, as runs of the row's machine: the sweep's run they
    replayed (its speeds, steps, parameters), with the changed options, the replay's losses and where it ran.
    The candidate is named by the change: gpt-s16-lr3+weight_decay=0.1,optimizer=adamw. Its val_loss is the
    moving average's, or the raw weights' where the sweep's run was made before runs kept an average."""
    out = []
    for rp in replays:
        changes = dict(rp.get("changes") or {})
        seed = changes.pop("seed", 0)  # another seed of the candidate its other changes name (seeds_averaged)
        if not (changes or seed) or not set(changes) <= SAME_STEP_TIME:
            continue
        # a row that a replay made (gpt-s+weight_decay=0.1,optimizer=adamw) is its sweep run with those changes
        candidate, _, made = rp["candidate"].partition("+")
        changes = {**dict(_setting(kv) for kv in made.split(",") if kv), **changes}
        base = [r for r in sweep if (r["model"], r["candidate"], r["minutes"], r.get("machine")) ==
                (rp["model"], candidate, rp["minutes"], rp["table_machine"]) and r["steps"] == rp["steps"]]
        if base:
            name = candidate + ("+" + ",".join(f"{k}={v}" for k, v in changes.items()) if changes else "")
            raw_only = "val_loss_raw" not in base[-1]  # a run from before the moving average: raw against raw
            # the options it trained with: the sweep run's, those the table had added to its row (a moving
            # average's decay: `options`, recorded by replays made since) and the changes
            out.append({**base[-1], "candidate": name, "options": {**base[-1]["options"], **rp.get("options", {}),
                                                                   **changes},
                        "val_loss": rp["val_loss_raw"] if raw_only else rp["val_loss"],
                        "val_loss_raw": rp["val_loss_raw"], "val_loss_averaged": rp["val_loss"],
                        **({"seed": seed} if seed else {}), "replayed_on": rp["machine"], "command": rp["command"]})
    return out


def seeds_averaged(sweep: list[dict]) -> list[dict]:
    """One run per (model, budget, candidate): where a candidate was trained at several seeds (replays with
    --set seed=S; a run without one is seed 0), its first seed's run with val_loss the mean over its seeds
    (val_loss_raw too) and each seed's in val_loss_by_seed; at a seed run twice, the later run counts."""
    groups: dict[tuple, dict[int, dict]] = {}
    for r in sweep:
        groups.setdefault((r["model"], r["minutes"], r["candidate"]), {})[r.get("seed", 0)] = r
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(next(iter(runs.values())))
            continue
        first = next(iter(runs.values()))  # its options, steps and machine are every seed's
        mean = {k: statistics.mean(r[k] for r in runs.values()) for k in ("val_loss", "val_loss_raw")
                if all(k in r for r in runs.values())}
        out.append({**{k: v for k, v in first.items() if k != "seed"}, **mean,
                    "val_loss_by_seed": {str(s): round(runs[s]["val_loss"], 4) for s in sorted(runs)}})
    return out


def table(sweep: list[dict], archives: list[list[dict]] = (), replays: list[dict] = ()) -> dict:
    """At each (model, budget): the candidate with the lowest full-validation loss, with the fp32 matmul peak
    of its run's machine, by which a slower or faster machine's minutes are converted (rows may come from
    different machines or days); and the shortfall cost by which a budget between rows picks one. A machine's
    peak is the median of its runs' (one measurement before a run moves by ±10% and more). archives: earlier
    sweeps (other machines or days), which add their mismatch measurements to the shortfall cost only.
    replays: a row's replays by its steps with --ema-decays choose its moving average's decay (averaging)."""
    sweep = seeds_averaged([{**r, "options": {**BEFORE_SAMPLING.get(r["model"], {}), **r["options"]}} for r in sweep])
    measured = [r for r in sweep if not r.get("replayed_on")]  # a replay carries its row's speeds: not a measurement
    medians = {key: statistics.median(xs) for key in sorted(set(SPEED.values()) | {"peak_gflops"})
               if (xs := [r[key] for r in measured if r.get(key)])}
    sweep = _machine_speeds(sweep)
    best = _best(sweep)
    recipes: dict[str, list] = {}
    for (model, minutes), r in sorted(best.items()):
        decay, by_decay = averaging(model, minutes, r, replays)
        recipes.setdefault(model, []).append({"minutes": minutes, "candidate": r["candidate"],
                                              "options": {**r["options"], **decay},
                                              **({"val_loss_last_by_ema_decay": by_decay} if by_decay else {}),
                                              "val_loss": round(r["val_loss"], 4),
                                              **({k: r[k] for k in ["val_loss_by_seed"] if k in r}),
                                              "steps": r["steps"], "parameters": r["parameters"],
                                              "peak_gflops": r.get("peak_gflops"),
                                              **({k: r[k] for k in [SPEED.get(model)] if k and k in r}),
                                              "machine": r.get("machine")})
    short, long = mismatch_costs(sweep, best)
    for runs in archives:
        runs = _machine_speeds(runs)
        s, lg = mismatch_costs(runs, _best(runs))
        short, long = short + s, long + lg
    return {"about": "dlforge train gpt|lstm --max-time M without sizes converts M minutes into t minutes of "
                     "each row's machine (M x this machine's speed / the row's: the fp32 matmul peak, peak_gflops, "
                     "or for the models named in `speed` that measure: gpt_gflops or lstm_gflops, dlforge.perf's "
                     "speed of a small GPT's step or of an LSTM layer) and uses "
                     "the row of least cost: ln(t/b) for a row of b minutes given t > b, shortfall_cost x ln(b/t) "
                     "given t < b (shortfall_cost: measured, see mismatch; null: the longest budget that fits). "
                     "Fitted on tinyshakespeare (char) by the command below; the losses are those measured in "
                     "the sweep (a row trained at several seeds: their mean, each in val_loss_by_seed). The "
                     "speeds at the top: the median of the runs', for rows without their own. "
                     "A row's ema_decay, where it has one, is the moving average's decay that scored lowest at "
                     "the last step of its replay (val_loss_last_by_ema_decay), the family's default elsewhere.",
            "command": "flock /tmp/dlforge-cpu.lock python -m benchmarks.budget_sweep --save",
            **{"peak_gflops": None, **medians},
            "speed": dict(SPEED),
            "shortfall_cost": round(statistics.mean(short) / statistics.mean(long), 2) if short and long else None,
            "mismatch": {"shorter_budget_than_sized": [round(c, 4) for c in short],
                         "longer_budget_than_sized": [round(c, 4) for c in long],
                         "unit": "loss above the budget's best, per unit of |ln(budget / the budget it won)|"},
            "recipes": recipes}


# How much lower than the default's another decay of the moving average must score to be a row's: a gain of a
# few ten-thousandths in one seed's replay is within what another seed would move it.
EMA_MARGIN = 0.001


def averaging(model: str, minutes: float, row: dict, replays: list[dict]) -> tuple[dict, dict]:
    """The decay of the moving average a row trains with: of its unchanged replays (same candidate and steps)
    that kept other averages beside their own (--ema-decays), the last one's decay of lowest loss at the last
    step; none chosen (the family's default) where no other decay scores EMA_MARGIN lower or no such replay
    exists.
    -> ({"ema_decay": d} or {}, that replay's losses by decay)."""
    mine = [rp for rp in replays if (rp["model"], rp["minutes"], rp["candidate"], rp["steps"]) ==
            (model, minutes, row["candidate"], row["steps"]) and not rp.get("changes")
            and rp.get("val_loss_last_by_ema_decay")]
    if not mine:
        return {}, {}
    by_decay = {k: round(v, 4) for k, v in mine[-1]["val_loss_last_by_ema_decay"].items()}
    own = row["options"].get("ema_decay", LM_EMA_DECAY)
    best = min(by_decay, key=lambda d: (by_decay[d], float(d) != own))
    kept = by_decay.get(f"{own:g}", math.inf)
    if by_decay[best] > kept - EMA_MARGIN:  # not lower by the margin: the default stays
        return {}, by_decay
    return {"ema_decay": float(best)}, by_decay


def _machine_speeds(sweep: list[dict]) -> list[dict]:
    """The runs with each one's speeds (matmul peak, LSTM speed) replaced by the median of its machine's runs':
    a speed is the machine's, so a run made before the sweep measured one gets its machine's median too."""
    by_machine: dict[tuple, list] = {}
    for r in sweep:
        if r.get("replayed_on"):  # its speeds are its row's run's, already counted
            continue
        for key in set(SPEED.values()) | {"peak_gflops"}:
            if r.get(key) and r.get("machine"):
                by_machine.setdefault((r["machine"], key), []).append(r[key])
    return [{**r, **{key: round(statistics.median(xs), 1) for (m, key), xs in by_machine.items()
                     if m == r.get("machine")}} for r in sweep]


# How much lower a run that a replay made (a row with an option changed) must score than what its budget had,
# to replace it: the LSTM's 3-minute row with weight decay on its matrices only (its biases undecayed) ended
# 0.0001 below the same row decaying everything, a change no other seed would keep.
REPLAY_MARGIN = 0.001


def _best(sweep: list[dict]) -> dict[tuple, dict]:
    """(model, minutes) -> the run of lowest full-validation loss. The runs compete in order (the sweep's runs,
    then the replays' in the order they were made), and one that a replay made (replayed_on) replaces the
    budget's best only when lower by REPLAY_MARGIN."""
    best: dict[tuple, dict] = {}
    for r in sweep:
        key = (r["model"], r["minutes"])
        margin = REPLAY_MARGIN if r.get("replayed_on") else 0.0
        if key not in best or _paired(r, best[key]) < _paired(best[key], r) - margin:
            best[key] = r
    return best


def _paired(r: dict, other: dict) -> float:
    """r's loss over the seeds both runs were trained at (seeds_averaged), its mean over its own where they share
    none: two seeds' mean against one seed's run would compare the seeds' luck as much as the candidates."""
    mine, theirs = r.get("val_loss_by_seed") or {}, other.get("val_loss_by_seed") or {}
    seeds = (set(mine) or {str(r.get("seed") or 0)}) & (set(theirs) or {str(other.get("seed") or 0)})
    if not mine or not seeds:
        return r["val_loss"]
    return statistics.mean(mine[s] for s in seeds)


def mismatch_costs(sweep: list[dict], best: dict[tuple, dict]) -> tuple[list[float], list[float]]:
    """What a kept candidate loses at a budget it was not kept for, per unit of log budget ratio, against that
    budget's best: (run for less time than its row's, run for more), over the seeds both were trained at
    (_paired). Only candidates kept at one budget and beaten at the other count: one that wins both says nothing
    about the cost of a mismatch."""
    short, long = [], []
    for r in sweep:
        here = best.get((r["model"], r["minutes"]))
        if here is None or here["candidate"] == r["candidate"]:
            continue
        for (model, minutes), kept in best.items():
            if model == r["model"] and kept["candidate"] == r["candidate"] and minutes != r["minutes"]:
                ratio = compute(r, kept) / compute(kept, r)  # runs on different days differ by their peaks too
                cost = (_paired(r, here) - _paired(here, r)) / abs(math.log(ratio))
                (short if ratio < 1 else long).append(cost)
    return short, long


def _speed_key(model: str, runs: list[dict]) -> str | None:
    """The speed runs of `model` compare by: its SPEED where all of them have it, else the matmul peak where all
    have that, else None (minutes alone)."""
    for key in (SPEED.get(model), "peak_gflops"):
        if key and all(r.get(key) for r in runs):
            return key
    return None


def compute(r: dict, other: dict | None = None) -> float:
    """A run's budget as minutes × its machine's speed (GFLOP/s·min), by the speed it and the run it is compared
    with share (_speed_key); its minutes alone if none."""
    key = _speed_key(r["model"], [r] if other is None else [r, other])
    return r["minutes"] * r[key] if key else r["minutes"]


# The CI machine's kind (a 2-vCPU EPYC Zen 3 with AVX2): the plot's budgets are minutes at these speeds (the LSTM's:
# dlforge.perf.lstm_gflops there, gemm-backends-epyc-avx2.json; the GPT's: the median of its sweep runs there).
REFERENCE = {"peak_gflops": 179.0, "lstm_gflops": 93.5, "gpt_gflops": 71.3}


def plot(sweep: list[dict], path: Path) -> None:
    """Loss against budget, each run placed at its minutes × its machine's speed / REFERENCE's (runs of
    different days are comparable by compute) and labelled with its wall-clock minutes and speed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    sweep = _machine_speeds(sweep)
    models = sorted({r["model"] for r in sweep})
    entries = max(len({r["candidate"] for r in sweep if r["model"] == m}) for m in models)
    # the legend goes below each panel (inside, the replays' names covered the 30-minute points)
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5.2 + 0.13 * entries), squeeze=False)
    for ax, model in zip(axes[0], models):
        key = _speed_key(model, [r for r in sweep if r["model"] == model])
        joined = sorted({r["candidate"] for r in sweep if r["model"] == model} - set(CANDIDATES[model]))
        top = max(r["val_loss"] for r in sweep if r["model"] == model and not r.get("replayed_on")) + 0.03
        for name in [*CANDIDATES[model], *joined]:
            runs = sorted((r for r in sweep if r["model"] == model and r["candidate"] == name), key=compute)
            if not runs:
                continue
            xs = [r["minutes"] * r[key] / REFERENCE[key] if key else r["minutes"] for r in runs]
            replayed = any(r.get("replayed_on") for r in runs)  # joined_replays: dashed, squares
            off = [f"{r['val_loss']:.2f}" for r in runs if r["val_loss"] > top]  # a diverged variant: named, not drawn
            ax.plot(xs, [r["val_loss"] for r in runs], "s--" if replayed else "o-",
                    label=name + (" (replayed by steps)" if replayed else "") + (f" (off the chart: {', '.join(off)})"
                                                                                if off else ""))
            for x, r in zip(xs, runs):
                ax.annotate(f"{r['minutes']:g} min @ {r.get(key) or 0:.0f}", (x, r["val_loss"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=6, color="0.35")
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 3, 5, 10, 20, 30, 60, 100], ["1", "2", "3", "5", "10", "20", "30", "60", "100"])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ref, what = REFERENCE.get(key, 0.0), SPEEDS.get(key, "speed")
        ax.set_xlabel(f"budget in minutes on a machine whose {what} is {ref:.0f} GFLOP/s (the CI machine's)\n(minutes × the "
                      f"machine's {what} / {ref:.0f}; labels: minutes @ that speed)", fontsize=8)
        ax.set_ylabel("full-validation loss (nats/char)")
        ax.set_title(f"{model}: tinyshakespeare, char level")
        ax.set_ylim(top=top)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["gpt", "lstm"], choices=sorted(CANDIDATES))
    ap.add_argument("--budgets", nargs="+", type=float, help="minutes (default: each model's grid, 3 10 30)")
    ap.add_argument("--candidates", nargs="+", help="only these candidates (default: each budget's grid)")
    ap.add_argument("--rerun", action="store_true", help="run again what the sweep file already holds")
    ap.add_argument("--save", action="store_true", help="rewrite dlforge/recipes/budgets.json and the plot")
    ap.add_argument("--fit-only", action="store_true", help="run nothing: refit the table from the sweep file")
    ap.add_argument("--replay", nargs="+", metavar="MODEL:MINUTES",
                    help="instead: train these rows of the table again by their steps, with and without the moving "
                         "average (appended to benchmarks/results/budget-replay.json), e.g. gpt:10 lstm:3")
    ap.add_argument("--set", nargs="+", metavar="OPTION=VALUE",
                    help="with --replay: options that differ from the row's, e.g. lr=0.004 ema_decay=0.998")
    ap.add_argument("--ema-decays", nargs="+", type=float, default=[], metavar="D",
                    help="with --replay: moving averages of these decays kept beside the run's own, each scored at "
                         "the last step (the training is unchanged by them), e.g. 0.995 0.998")
    if sys.argv[1:2] == ["_averages"]:
        sys.exit(averages_entry(sys.argv[2:]))
    args = ap.parse_args()
    if (args.set or args.ema_decays) and not args.replay:
        sys.exit("--set and --ema-decays: only with --replay")
    if any(not 0 < d < 1 for d in args.ema_decays):
        sys.exit(f"--ema-decays: expected decays in (0, 1), got {' '.join(map(str, args.ema_decays))}")
    if args.replay:
        return replay_rows(args.replay, dict(_setting(kv) for kv in args.set or ()), args.ema_decays)
    if args.candidates and not args.fit_only:  # all checked before the first run; each model runs its own names
        known = [c for m in args.models for c in CANDIDATES[m]]
        for name in args.candidates:
            if name not in known:
                sys.exit(f"--candidates: {name!r} is not a candidate of --models {' '.join(args.models)} "
                         f"({', '.join(known)})")
        for model in args.models:
            if not set(args.candidates) & set(CANDIDATES[model]):
                sys.exit(f"--candidates: none of them is a {model} candidate ({', '.join(CANDIDATES[model])})")
    sweep = json.loads(SWEEP.read_text())["runs"] if SWEEP.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        if args.fit_only:
            args.models = []
        for model in args.models:
            grid = DEFAULT_GRID[model]
            for minutes in args.budgets or sorted(grid):
                names = ([n for n in args.candidates if n in CANDIDATES[model]] if args.candidates
                         else grid.get(minutes) or list(CANDIDATES[model]))
                for name in names:
                    done = [r for r in sweep if (r["model"], r["candidate"], r["minutes"]) == (model, name, minutes)]
                    if done and not args.rerun:
                        continue
                    r = run(model, name, minutes, Path(tmp))
                    print(json.dumps(r), file=sys.stderr)
                    sweep = [s for s in sweep if s not in done] + [r]
                    SWEEP.write_text(json.dumps({"runs": sweep}, indent=1) + "\n")
    replays = json.loads(REPLAYS.read_text())["runs"] if REPLAYS.exists() else []
    sweep = sweep + joined_replays(sweep, replays)
    fitted = table(sweep, [json.loads(p.read_text())["runs"] for p in ARCHIVES if p.exists()], replays)
    if args.save:
        TABLE.write_text(json.dumps(fitted, indent=1) + "\n")
        plot(seeds_averaged(sweep), RESULTS / "budget-sweep.png")
    print(json.dumps(fitted["recipes"]))


def _setting(text: str) -> tuple[str, float | int | str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        sys.exit(f"--set: expected OPTION=VALUE, e.g. lr=0.004; got {text!r}")
    for kind in (int, float):
        try:
            return key.replace("-", "_"), kind(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def replay_rows(specs: list[str], changes: dict, decays: list[float] = ()) -> None:
    path = REPLAYS
    for spec in specs:
        model, _, minutes = spec.partition(":")
        if model not in CANDIDATES or not minutes.replace(".", "", 1).isdigit():
            sys.exit(f"--replay: expected MODEL:MINUTES with MODEL one of {', '.join(CANDIDATES)}, e.g. gpt:10; got {spec!r}")
        with tempfile.TemporaryDirectory() as tmp:
            r = replay(model, float(minutes), Path(tmp), changes, decays)
        print(json.dumps(r))
        runs = json.loads(path.read_text())["runs"] if path.exists() else []
        path.write_text(json.dumps({"runs": runs + [r]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
