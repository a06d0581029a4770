"""`dlforge train gpt|lstm --max-time M` without sizes takes its recipe from the budget table
(dlforge/recipes/budgets.json, fitted by benchmarks/budget_sweep.py); flags given win; --no-bias."""
import json
from pathlib import Path

import pytest

from dlforge.cli import main
from dlforge.recipes import language_model as lm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model, budgets", [("gpt", {3, 10, 30}), ("lstm", {3, 10, 30})])
def test_the_shipped_table_covers_the_budgets_it_was_fitted_for(model, budgets):
    table = json.loads(lm.BUDGETS.read_text())
    assert "budget_sweep" in table["command"]
    rows = table["recipes"][model]
    assert [r["minutes"] for r in rows] == sorted(r["minutes"] for r in rows)
    assert budgets <= {r["minutes"] for r in rows}
    for r in rows:  # every row was measured, and builds a valid run configuration
        assert 0 < r["val_loss"] < 3 and r["steps"] > 0
        lm.LanguageModelRecipe().split_options(model, {**r["options"], "max_time": r["minutes"]})


@pytest.fixture
def table(tmp_path, monkeypatch):
    rows = {"gpt-tiny": [
        {"minutes": 1, "options": {"layers": 1, "heads": 2, "width": 32, "block_size": 16, "batch_size": 8,
                                   "lr": 3e-3, "bias": False}, "val_loss": 2.0, "steps": 1},
        {"minutes": 10, "options": {"layers": 2, "heads": 2, "width": 48, "block_size": 32, "batch_size": 16,
                                    "lr": 2e-3}, "val_loss": 1.5, "steps": 1}]}
    p = tmp_path / "budgets.json"
    p.write_text(json.dumps({"command": "test", "peak_gflops": 400.0, "recipes": rows}))
    monkeypatch.setattr(lm, "BUDGETS", p)
    monkeypatch.setattr(lm, "machine_peak", lambda: 400.0)  # as fast as the fitting machine
    return rows


@pytest.mark.parametrize("minutes, row", [(0.5, 0), (1, 0), (9.9, 0), (10, 1), (45, 1)])
def test_the_longest_budget_that_fits_is_chosen(table, minutes, row):
    assert lm.budget_recipe("gpt-tiny", minutes) == (table["gpt-tiny"][row], minutes)
    assert lm.budget_recipe("rnn", minutes) is None  # no rows: the model's own defaults


@pytest.mark.parametrize("minutes, row", [(0.5, 0), (4.5, 0), (4.7, 1), (9, 1), (45, 1)])
def test_with_a_measured_shortfall_cost_the_row_of_least_cost_is_chosen(table, monkeypatch, minutes, row):
    """k = 2: a row of b minutes given t costs ln(t/b) for t > b and 2·ln(b/t) for t < b, so between the 1- and
    10-minute rows the 10-minute one wins from 10^(2/3) = 4.64 minutes on, and 9 minutes (a machine 10% slower
    than the fitting one, given 10) keep the 10-minute row instead of dropping to the 1-minute one."""
    p = lm.BUDGETS
    p.write_text(json.dumps({**json.loads(p.read_text()), "shortfall_cost": 2.0}))
    lm._budget_table.cache_clear()
    assert lm.budget_recipe("gpt-tiny", minutes) == (table["gpt-tiny"][row], minutes)


def test_the_sweep_fits_the_shortfall_cost_from_candidates_run_off_their_budget():
    """Candidate a wins 1 minute and b 10; a at 10 loses 0.1 to b, b at 1 loses 0.3 to a: per unit of ln 10,
    0.1/ln 10 and 0.3/ln 10, so k = 3. A candidate that wins at both budgets says nothing, and is left out."""
    from benchmarks.budget_sweep import table as fit

    def run(model, candidate, minutes, loss):
        return {"model": model, "candidate": candidate, "minutes": minutes, "val_loss": loss, "options": {},
                "steps": 1, "parameters": 1, "peak_gflops": 100.0}
    sweep = [run("gpt", "a", 1, 2.0), run("gpt", "b", 1, 2.3), run("gpt", "a", 10, 1.6), run("gpt", "b", 10, 1.5),
             run("lstm", "c", 1, 2.0), run("lstm", "c", 10, 1.5), run("lstm", "d", 10, 1.7)]
    t = fit(sweep)
    assert t["shortfall_cost"] == 3.0
    assert t["mismatch"]["shorter_budget_than_sized"] == [round(0.3 / 2.302585, 4)]
    assert [r["candidate"] for r in t["recipes"]["gpt"]] == ["a", "b"]
    assert fit(sweep[4:])["shortfall_cost"] is None  # no mismatch measured: the longest budget that fits
    # a budget's best trained at two seeds is compared with a one-seed run on the seed both have, not its mean
    two_seeds = [run("gpt", "a", 1, 2.0), run("gpt", "b", 1, 2.3), run("gpt", "a", 10, 1.6),
                 {**run("gpt", "b", 10, 1.5), "seed": 0}, {**run("gpt", "b", 10, 1.7), "seed": 1}]
    assert fit(two_seeds)["mismatch"]["longer_budget_than_sized"] == [round(0.1 / 2.302585, 4)]  # not -0.0
    archived = fit(sweep[4:], archives=[sweep[:4]])  # an earlier sweep's mismatches count; its rows do not
    assert archived["shortfall_cost"] == 3.0 and list(archived["recipes"]) == ["lstm"]


def test_a_replay_that_keeps_the_step_time_joins_the_fit_as_the_rows_machine():
    """A row replayed by its steps with only the weight decay changed is that variant's run on the row's machine
    (its speeds, steps): it joins and wins its budget when lower; one with dropout (another step time) does not."""
    from benchmarks.budget_sweep import joined_replays, table as fit
    row = {"model": "gpt", "candidate": "a", "minutes": 10, "val_loss": 1.6, "options": {"lr": 0.003,
           "weight_decay": 0.0}, "steps": 500, "parameters": 7, "peak_gflops": 100.0, "gpt_gflops": 50.0,
           "machine": "zen3"}
    other = {**row, "candidate": "b", "val_loss": 1.7}
    replay = {"model": "gpt", "candidate": "a", "minutes": 10, "steps": 500, "table_machine": "zen3",
              "machine": "xeon", "val_loss": 1.55, "val_loss_raw": 1.56, "command": "dlforge train ...",
              "changes": {"weight_decay": 0.1, "optimizer": "adamw"}}
    joined = joined_replays([row, other], [replay, {**replay, "changes": {"dropout": 0.1}, "val_loss": 1.0},
                                           {**replay, "changes": {}, "val_loss": 1.0},
                                           {**replay, "steps": 499, "val_loss": 1.0}])  # not the sweep's run
    assert len(joined) == 1
    j = joined[0]
    assert j["candidate"] == "a+weight_decay=0.1,optimizer=adamw" and j["replayed_on"] == "xeon"
    assert j["options"] == {"lr": 0.003, "weight_decay": 0.1, "optimizer": "adamw"}
    assert (j["steps"], j["gpt_gflops"], j["machine"]) == (500, 50.0, "zen3")
    assert j["val_loss"] == 1.56  # the sweep's run has no averaged loss: raw weights against raw weights
    kept = fit([row, other, j])["recipes"]["gpt"][0]
    assert kept["candidate"] == j["candidate"] and kept["val_loss"] == 1.56 and kept["gpt_gflops"] == 50.0
    assert joined_replays([{**row, "val_loss_raw": 1.61}], [replay])[0]["val_loss"] == 1.55  # both averaged
    # a row that a replay made, replayed again with a change: its sweep run with both changes
    again = {**replay, "candidate": j["candidate"], "changes": {"weight_decay": 0.2}, "val_loss_raw": 1.54}
    j2 = joined_replays([row, other], [again])[0]
    assert j2["candidate"] == "a+weight_decay=0.2,optimizer=adamw" and j2["val_loss"] == 1.54
    assert j2["options"] == {"lr": 0.003, "weight_decay": 0.2, "optimizer": "adamw"}
    # a replay of a row to which the table added a moving average's decay trained with it: its options keep it
    decayed = {**replay, "changes": {"sampling": "shuffled", "seed": 1},
               "options": {"lr": 0.003, "weight_decay": 0.0, "ema_decay": 0.998, "sampling": "shuffled"}}
    assert joined_replays([row, other], [decayed])[0]["options"] == {"lr": 0.003, "weight_decay": 0.0,
                                                                    "ema_decay": 0.998, "sampling": "shuffled"}
    # a change found by replay replaces what the budget had only when lower by the margin, as replays are made
    tie = {**replay, "changes": {"weight_decay_on": "matrices"}, "val_loss": 1.5595}
    near = joined_replays([row, other], [replay, {**tie, "val_loss_raw": 1.5595}])
    assert fit([row, other, *near])["recipes"]["gpt"][0]["candidate"] == j["candidate"]  # 0.0005 lower: kept
    far = joined_replays([row, other], [replay, {**tie, "val_loss_raw": 1.5585}])
    assert fit([row, other, *far])["recipes"]["gpt"][0]["candidate"] == "a+weight_decay_on=matrices"
    # a replay carries its row's speeds: it is not one more measurement of the machine's
    slow = {**row, "candidate": "c", "minutes": 3, "gpt_gflops": 10.0}
    assert fit([row, slow, j])["gpt_gflops"] == fit([row, slow])["gpt_gflops"] == 30.0


def test_minutes_on_a_slower_machine_buy_a_shorter_budgets_recipe(table, monkeypatch, capsys):
    """The table holds minutes of the machine it was fitted on: 12 minutes at half its matmul speed are 6
    minutes there, so the 1-minute recipe, not the 10-minute one."""
    assert lm.budget_recipe("gpt-tiny", 12, speed=200.0) == (table["gpt-tiny"][0], 6.0)
    assert lm.budget_recipe("gpt-tiny", 12, speed=800.0) == (table["gpt-tiny"][1], 24.0)
    monkeypatch.setattr(lm, "machine_peak", lambda: 200.0)
    assert lm.LanguageModelRecipe().budget_options("gpt-tiny", {"max_time": 12})["width"] == 32
    assert "(200 GFLOP/s) makes that 6 min" in capsys.readouterr().err


@pytest.mark.parametrize("minutes, warned", [(12, False), (15, False), (16, True), (16.0 * 8, True)])
def test_a_budget_well_past_the_tables_longest_says_the_model_may_overfit(table, capsys, minutes, warned):
    """The table's longest row is 10 minutes: past 1.5× that, no row is sized for the time, and the longest one's
    model, trained longer, can overfit (the LSTM's 30-minute row at 62.7 minutes did). The budget line says so
    and how to stop early, unless --early-stop is given."""
    assert lm.LanguageModelRecipe().budget_options("gpt-tiny", {"max_time": minutes})["width"] == 48
    err = capsys.readouterr().err
    assert ("may overfit" in err and "--early-stop 10" in err) == warned and len(err.splitlines()) == 1
    lm.LanguageModelRecipe().budget_options("gpt-tiny", {"max_time": minutes, "early_stop": 3})
    assert "overfit" not in capsys.readouterr().err


def test_each_row_converts_by_the_peak_of_the_machine_it_was_measured_on(table):
    """Rows measured on different machines: the 1-minute row at 100 GFLOP/s, the 10-minute one at 400. 12
    minutes at 200 GFLOP/s are 24 minutes of the first row's machine and 6 of the second's. Longest that fits:
    the 1-minute row; with k = 2 the 10-minute row (2·ln(10/6) = 1.02 against ln(24/1) = 3.18)."""
    p = lm.BUDGETS
    t = json.loads(p.read_text())
    t["recipes"]["gpt-tiny"][0]["peak_gflops"], t["recipes"]["gpt-tiny"][1]["peak_gflops"] = 100.0, 400.0
    p.write_text(json.dumps(t))
    lm._budget_table.cache_clear()
    rows = t["recipes"]["gpt-tiny"]
    assert lm.budget_recipe("gpt-tiny", 12, speed=200.0) == (rows[0], 24.0)
    p.write_text(json.dumps({**t, "shortfall_cost": 2.0}))
    lm._budget_table.cache_clear()
    assert lm.budget_recipe("gpt-tiny", 12, speed=200.0) == (rows[1], 6.0)
    assert lm.budget_recipe("gpt-tiny", 12, speed=800.0) == (rows[1], 24.0)


def test_a_model_whose_table_names_another_speed_converts_by_it(table, monkeypatch, capsys):
    """The LSTM's step runs in oneDNN's RNN kernels, whose speed the matmul peak does not predict across CPUs,
    so the table converts its rows by lstm_gflops. Here the matmul peak equals the rows' machine's, but the
    LSTM measure is half of theirs: 12 minutes are 6 there, the 1-minute row. A row without that measure (and
    no median for it) turns it off: the matmul peak converts, 12 minutes stay 12, the 10-minute row."""
    import dlforge.perf
    p = lm.BUDGETS
    t = json.loads(p.read_text())
    for r in t["recipes"]["gpt-tiny"]:
        r["lstm_gflops"] = 50.0
    p.write_text(json.dumps({**t, "speed": {"gpt-tiny": "lstm_gflops"}}))
    lm._budget_table.cache_clear()
    monkeypatch.setattr(dlforge.perf, "lstm_gflops", lambda: 25.0)
    assert lm.speed_measure("gpt-tiny") == "lstm_gflops"
    assert lm.LanguageModelRecipe().budget_options("gpt-tiny", {"max_time": 12})["width"] == 32
    assert "LSTM layer speed (25 GFLOP/s) makes that 6 min of the machine (50 GFLOP/s)" in capsys.readouterr().err
    del t["recipes"]["gpt-tiny"][1]["lstm_gflops"]
    p.write_text(json.dumps({**t, "speed": {"gpt-tiny": "lstm_gflops"}}))
    lm._budget_table.cache_clear()
    assert lm.speed_measure("gpt-tiny") == "peak_gflops"
    assert lm.LanguageModelRecipe().budget_options("gpt-tiny", {"max_time": 12})["width"] == 48


def test_the_step_speeds_are_measured_and_leave_the_global_seed_alone():
    import torch
    from dlforge.perf import gpt_gflops, lstm_gflops
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    assert 0.1 < lstm_gflops(width=32, batch=4, steps=8, reps=1) < 1e5
    assert 0.1 < gpt_gflops(width=32, layers=1, heads=2, batch=2, context=8, reps=1) < 1e5
    assert torch.equal(torch.rand(1), expected)  # a seeded run that measures first still draws its own numbers


@pytest.mark.parametrize("model, measure", [("gpt", "gpt_gflops"), ("lstm", "lstm_gflops")])
def test_each_family_of_the_shipped_table_converts_by_its_own_steps_speed(model, measure):
    """The matmul peak predicts neither step across CPUs (at a peak 20-33% lower a Zen 3 took twice a Zen 4's
    time per gpt-s step and 2.5-3.5x per LSTM step), so every shipped row carries its machine's own measure."""
    lm._budget_table.cache_clear()
    table = json.loads(lm.BUDGETS.read_text())
    assert lm.speed_measure(model) == measure
    assert all(r.get(measure) for r in table["recipes"][model])


def test_flags_given_win_and_a_size_flag_turns_the_table_off(table, capsys):
    r = lm.LanguageModelRecipe()
    assert r.budget_options("gpt-tiny", {"max_time": 12, "lr": 1e-3}) == {
        **table["gpt-tiny"][1]["options"], "max_time": 12, "lr": 1e-3}
    assert "10-minute recipe was measured on; that recipe: --layers 2" in capsys.readouterr().err
    given = {"max_time": 12, "width": 64}
    assert r.budget_options("gpt-tiny", given) == given  # the user sizes the model
    assert r.budget_options("gpt-tiny", {"epochs": 1}) == {"epochs": 1}  # no time budget


@pytest.mark.parametrize("minutes", ["0", "-1"])
def test_a_budget_that_is_not_positive_is_one_error_before_any_speed_is_measured(table, tmp_path, monkeypatch, capsys,
                                                                                 minutes):
    def no_speed(key):
        raise AssertionError("the machine's speed was measured for a budget that is refused")
    monkeypatch.setattr(lm, "machine_speed", no_speed)
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\n" * 200)
    assert main(["train", "gpt-tiny", "--data-file", str(text), "--max-time", minutes, "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"dlforge: error: --max-time: expected a positive number of minutes, got "
                                        f"{float(minutes)}"]
    assert not (tmp_path / "run").exists()


def test_a_timed_run_without_sizes_trains_the_tables_model(table, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\n" * 200)
    main(["train", "gpt-tiny", "--data-file", str(text), "--max-time", "1", "--max-steps", "3", "--no-progress",
          "--eval-tokens", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "--layers 1 --heads 2 --width 32 --block-size 16 --batch-size 8 --lr 0.003 --no-bias" in err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["kwargs"] == {"vocab_size": cfg["model"]["kwargs"]["vocab_size"], "block_size": 16,
                                      "n_layer": 1, "n_head": 2, "d_model": 32, "bias": False}
    assert cfg["train"]["batch_size"] == 8 and cfg["train"]["lr"] == 3e-3
    from dlforge.train.checkpoint import load_checkpoint
    tensors = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[0]
    assert not [k for k in tensors if k.endswith(".bias")]  # --no-bias: no bias anywhere in the model
    # resuming keeps the recipe the run was made with, with or without the table
    main(["train", "gpt-tiny", "--resume", "--out", str(tmp_path / "run"), "--max-steps", "4", "--no-progress"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == cfg["model"]


def test_the_fit_gives_a_row_the_moving_average_decay_its_replay_scored_lowest():
    from benchmarks.budget_sweep import table as fit
    from dlforge.recipes.language_model import EMA_DECAY
    row = {"model": "gpt", "candidate": "a", "minutes": 30, "val_loss": 1.5, "options": {"lr": 0.003}, "steps": 900,
           "parameters": 7, "peak_gflops": 100.0, "gpt_gflops": 50.0, "machine": "zen3"}
    short = {**row, "minutes": 3, "steps": 90}
    scored = {f"{EMA_DECAY:g}": 1.51, "0.995": 1.505, "0.999": 1.499}
    replay = {"model": "gpt", "candidate": "a", "minutes": 30, "steps": 900, "changes": {},
              "val_loss_last_by_ema_decay": scored}
    not_it = [{**replay, "steps": 899, "val_loss_last_by_ema_decay": {"0.9": 1.0}},      # another run's steps
              {**replay, "changes": {"lr": 0.001}, "val_loss_last_by_ema_decay": {"0.9": 1.0}},  # another recipe
              {**replay, "minutes": 3, "steps": 90, "val_loss_last_by_ema_decay": {f"{EMA_DECAY:g}": 1.7, "0.999": 1.7}}]
    rows = {r["minutes"]: r for r in fit([row, short], replays=[*not_it, replay])["recipes"]["gpt"]}
    assert rows[30]["options"] == {"sampling": "random", "lr": 0.003, "ema_decay": 0.999}
    assert rows[30]["val_loss_last_by_ema_decay"] == scored and rows[30]["val_loss"] == 1.5
    assert rows[3]["options"] == {"sampling": "random", "lr": 0.003}  # a tie keeps the default
    barely = {**replay, "val_loss_last_by_ema_decay": {f"{EMA_DECAY:g}": 1.51, "0.999": 1.5095}}
    assert fit([row], replays=[barely])["recipes"]["gpt"][0]["options"] == {"sampling": "random", "lr": 0.003}  # within the margin
    assert fit([row], replays=[])["recipes"]["gpt"][0]["options"] == {"sampling": "random", "lr": 0.003}
    # the row's own decay is what the table's recipe trains with
    assert lm.LanguageModelRecipe().split_options("gpt", {**rows[30]["options"], "max_time": 30})[3] == \
        {"ema_decay": 0.999}

def test_a_replays_side_averages_are_the_runs_own_update_and_leave_training_alone(tmp_path):
    """budget_sweep --ema-decays: the averages kept beside a run's own are the same arithmetic (the run's own
    decay kept beside it equals its task.ema.*, bit for bit), the weights trained are those of a run without
    them, and each is scored at the last step."""
    import torch
    from benchmarks.budget_sweep import averages_scored, averages_entry
    from dlforge.train.checkpoint import load_checkpoint
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. a dog ran in the fog.\n" * 100)
    argv = ["train", "gpt-tiny", "--data-file", str(text), "--max-steps", "12", "--batch-size", "4",
            "--block-size", "16", "--ema-decay", "0.9", "--eval-tokens", "0", "--no-progress", "--seed", "3"]
    averages = tmp_path / "averages.safetensors"
    assert averages_entry([str(averages), "0.9,0.5", *argv, "--out", str(tmp_path / "with")]) == 0
    main([*argv, "--out", str(tmp_path / "without")])
    with_, _ = load_checkpoint(tmp_path / "with" / "checkpoints" / "last.safetensors")
    without, _ = load_checkpoint(tmp_path / "without" / "checkpoints" / "last.safetensors")
    assert with_.keys() == without.keys() and all(torch.equal(with_[k], without[k]) for k in with_)
    from safetensors.torch import load_file
    side = load_file(averages)
    own = {k[len("task.ema."):]: v for k, v in with_.items() if k.startswith("task.ema.")}
    assert own and all(torch.equal(side[f"0.9/{k}"], v) for k, v in own.items())
    assert not all(torch.equal(side[f"0.5/{k}"], v) for k, v in own.items())
    scores = averages_scored(tmp_path / "with", averages)
    assert set(scores) == {"0.9", "0.5"} and scores["0.9"] != scores["0.5"]
    assert all(0 < v < 10 for v in scores.values())


def test_gpt_runs_recorded_before_sampling_train_random_windows_until_a_shuffled_replay_wins():
    """The sweep's GPT runs drew random windows (before --sampling); their rows say so, so that a run sized by the
    table trains as the row was measured. A replay with sampling=shuffled keeps a step's time and joins the fit."""
    from benchmarks.budget_sweep import table as fit, joined_replays
    gpt = {"model": "gpt", "candidate": "a", "minutes": 30, "val_loss": 1.5, "options": {"lr": 0.003}, "steps": 900,
           "parameters": 7, "peak_gflops": 100.0, "gpt_gflops": 50.0, "val_loss_raw": 1.52, "machine": "zen3"}
    lstm = {**gpt, "model": "lstm", "lstm_gflops": 40.0}
    rows = fit([gpt, lstm])["recipes"]
    assert rows["gpt"][0]["options"] == {"sampling": "random", "lr": 0.003}
    assert rows["lstm"][0]["options"] == {"lr": 0.003}  # recurrent models read streams: no such option
    replay = {"model": "gpt", "minutes": 30, "candidate": "a", "steps": 900, "table_machine": "zen3",
              "changes": {"sampling": "shuffled"}, "val_loss": 1.49, "val_loss_raw": 1.51, "machine": "zen4",
              "command": "dlforge train gpt ..."}
    joined = joined_replays([gpt], [replay])
    assert [r["candidate"] for r in joined] == ["a+sampling=shuffled"]
    row = fit([gpt, *joined])["recipes"]["gpt"][0]
    assert row["candidate"] == "a+sampling=shuffled" and row["options"] == {"sampling": "shuffled", "lr": 0.003}
    assert fit([gpt, *joined_replays([gpt], [{**replay, "val_loss": 1.4995}])])["recipes"]["gpt"][0]["candidate"] == "a"


def test_a_candidates_seeds_are_averaged_and_compared_on_the_seeds_both_have():
    """Replays with --set seed=S are more seeds of the candidate their other changes name: the row's figure is the
    mean over its seeds, and a one-seed challenger is compared with it on that seed only."""
    from benchmarks.budget_sweep import joined_replays, table as fit
    row = {"model": "gpt", "candidate": "a", "minutes": 30, "val_loss": 1.50, "val_loss_raw": 1.52,
           "options": {"lr": 0.002}, "steps": 900, "parameters": 7, "peak_gflops": 100.0, "gpt_gflops": 50.0,
           "machine": "zen3"}
    rp = {"model": "gpt", "minutes": 30, "candidate": "a", "steps": 900, "table_machine": "zen3", "machine": "zen4",
          "command": "dlforge train gpt ..."}
    wd5 = {**rp, "changes": {"weight_decay": 0.5}, "val_loss": 1.44, "val_loss_raw": 1.47}
    wd5_seed1 = {**rp, "candidate": "a+weight_decay=0.5", "changes": {"seed": 1}, "val_loss": 1.46,
                 "val_loss_raw": 1.49}
    joined = joined_replays([row], [wd5, wd5_seed1])
    assert [(j["candidate"], j.get("seed", 0)) for j in joined] == [("a+weight_decay=0.5", 0), ("a+weight_decay=0.5", 1)]
    kept = fit([row, *joined])["recipes"]["gpt"][0]
    assert kept["candidate"] == "a+weight_decay=0.5" and kept["options"]["weight_decay"] == 0.5
    assert kept["val_loss"] == 1.45 and kept["val_loss_by_seed"] == {"0": 1.44, "1": 1.46}
    # the row's own candidate at another seed: averaged with the sweep's run
    alone = fit([row, *joined_replays([row], [{**rp, "changes": {"seed": 1}, "val_loss": 1.48,
                                                "val_loss_raw": 1.5}])])["recipes"]["gpt"][0]
    assert alone["candidate"] == "a" and alone["val_loss"] == 1.49 and alone["val_loss_by_seed"] == {"0": 1.5, "1": 1.48}
    # a later one-seed challenger at 1.445: above 1.44 on seed 0, though below the two seeds' mean of 1.45
    wd7 = {**rp, "candidate": "a+weight_decay=0.5", "changes": {"weight_decay": 0.7}, "val_loss": 1.445,
           "val_loss_raw": 1.46}
    assert fit([row, *joined_replays([row], [wd5, wd5_seed1, wd7])])["recipes"]["gpt"][0]["candidate"] == "a+weight_decay=0.5"
    # ... and at 1.43 on seed 0 it wins, with its one seed's figure
    won = fit([row, *joined_replays([row], [wd5, wd5_seed1, {**wd7, "val_loss": 1.43}])])["recipes"]["gpt"][0]
    assert won["candidate"] == "a+weight_decay=0.7" and won["val_loss"] == 1.43 and "val_loss_by_seed" not in won
    # a seed that a replay redid: the later run counts
    redo = joined_replays([row], [wd5, wd5_seed1, {**wd5_seed1, "val_loss": 1.45}])
    assert fit([row, *redo])["recipes"]["gpt"][0]["val_loss_by_seed"] == {"0": 1.44, "1": 1.45}


@pytest.mark.parametrize("argv, message", [
    (["--models", "gpt", "lstm", "--candidates", "gpt-s"], "--candidates: none of them is a lstm candidate"),
    (["--models", "gpt", "--candidates", "gpt-s", "nope"], "--candidates: 'nope' is not a candidate of --models gpt")])
def test_the_sweep_checks_every_candidate_before_its_first_run(argv, message):
    """Before, each model's names were checked when the sweep reached it: `--models gpt lstm --candidates gpt-s`
    trained the gpt runs and then stopped at lstm."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "benchmarks.budget_sweep", *argv, "--budgets", "0.01"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert r.returncode == 1 and r.stderr.startswith(message) and len(r.stderr.splitlines()) == 1
