"""--sampling: how a GPT's training windows are drawn (shuffled: every token once an epoch; random: nanoGPT's)."""
import json

import torch

import dlforge
from dlforge.cli import main
from dlforge.train.checkpoint import load_checkpoint

TEXT = "the cat sat on the mat. a dog ran in the fog. " * 40
OPTS = dict(block_size=16, batch_size=4, eval_every=10, progress=False)


def _weights(run) -> dict:
    return {k: v for k, v in load_checkpoint(run.path / "checkpoints" / "last.safetensors")[0].items()
            if k.startswith("model.")}


def test_new_runs_shuffle_and_random_is_another_run(tmp_path):
    shuffled = dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "s", max_steps=12, **OPTS)
    random = dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "r", max_steps=12, sampling="random", **OPTS)
    assert shuffled.config.data["sampling"] == "shuffled" and random.config.data["sampling"] == "random"
    a, b = _weights(shuffled), _weights(random)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the same seed, other windows


def test_a_run_made_before_the_option_resumes_with_random_windows_bit_exact(tmp_path):
    """A run directory from before --sampling has no such key: it drew random windows, and resumes doing so."""
    whole = dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "whole", max_steps=20, sampling="random", **OPTS)
    dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "old", max_steps=10, sampling="random", **OPTS)
    config = tmp_path / "old" / "config.json"
    saved = json.loads(config.read_text())
    del saved["data"]["sampling"]
    config.write_text(json.dumps(saved))
    old = dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "old", resume=True, max_steps=20, **OPTS)
    assert "sampling" not in old.config.data or old.config.data["sampling"] is None
    a, b = _weights(whole), _weights(old)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_sampling_and_recurrent_models_refuse_random(tmp_path, capsys):
    dlforge.train("gpt-tiny", data=TEXT, out=tmp_path / "g", max_steps=4, **OPTS)
    code = main(["train", "gpt-tiny", "--out", str(tmp_path / "g"), "--resume", "--max-steps", "8",
                 "--sampling", "random", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"dlforge: error: --resume {tmp_path / 'g'}: this run was made with sampling = "
                                     f"'shuffled', not 'random'; a resumed run keeps its data, model and task (only "
                                     f"the training options may change)")
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    code = main(["train", "lstm-small", "--data-file", str(text), "--out", str(tmp_path / "l"), "--max-steps", "2",
                 "--block-size", "16", "--batch-size", "4", "--sampling", "random", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("dlforge: error: --sampling random: lstm-small is recurrent and reads the text "
                                     "as contiguous streams (truncated backpropagation through time), each epoch "
                                     "once; only gpt draws random windows")
    code = main(["train", "gpt-tiny", "--data-file", str(text), "--out", str(tmp_path / "x"), "--sampling", "rand"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "dlforge: error: --sampling: expected one of shuffled, random; got 'rand'"
