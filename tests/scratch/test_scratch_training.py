"""The scratch engine learns, fails with clear errors, and its CLI entry point reports."""
import json
import re

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from dlforge.errors import DlforgeError
from dlforge.scratch import MLP, SGD, Adam
from dlforge.scratch.data import load_arrays
from dlforge.scratch.plots import plot_activations
from dlforge.scratch.train import BackpropConfig, run_backprop


def test_moons_reaches_full_training_accuracy():
    data = load_arrays("moons", seed=0, dtype="float64")
    net = MLP((2, 64, 64, 1), "relu", "bce", "float64", seed=0)     # one logit: sigmoid + BCE
    net.optimizer = Adam(net.parameters(), lr=0.03)
    accuracy = 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(3000):                                       # full batch of 800
            net.train_step(data.train_x, data.train_y)
            if net.steps % 25 == 0:
                accuracy = float((net.predict(data.train_x) == data.train_y).mean())
                if accuracy == 1.0:
                    break
    assert accuracy == 1.0
    assert (net.predict(data.test_x) == data.test_y).mean() >= 0.98


def test_shape_mismatch_names_layer_and_shapes():
    net = MLP((64, 64, 32, 10))
    with pytest.raises(DlforgeError, match=re.escape(
            "Dense layer 1 expects inputs of shape (B, 64), got (32, 10)")):
        net.forward(np.zeros((32, 10)))
    with pytest.raises(DlforgeError, match=re.escape(
            "Dense layer 2 expects inputs of shape (B, 64), got (32, 10)")):
        net.layers[2].forward(np.zeros((32, 10)))
    with pytest.raises(DlforgeError, match=re.escape("expects targets of shape (4,)")):
        net.loss(net.forward(np.zeros((4, 64))), np.zeros((5,), dtype=int))


def test_nan_loss_names_step_and_suggests_lower_lr():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)) * 10, rng.integers(0, 3, 64)
    net = MLP((8, 16, 3), "relu", "cross_entropy", "float32", seed=0)
    net.optimizer = SGD(net.parameters(), lr=1e12, momentum=0.9)
    with np.errstate(all="ignore"), pytest.raises(DlforgeError) as info:
        for _ in range(100):
            net.train_step(x, y)
    message = str(info.value)
    assert f"at step {net.steps + 1}" in message and "lower learning rate" in message
    assert net.steps >= 1


def test_config_validation_messages():
    with pytest.raises(DlforgeError, match=re.escape(
            "--activation: expected one of relu, sigmoid, tanh; got 'x'")):
        BackpropConfig(activation="x")
    cases = ((dict(optimizer="rmsprop"), "--optimizer"), (dict(data="cifar"), "--data"),
             (dict(dtype="float16"), "--dtype"), (dict(lr=0.0), "--lr"),
             (dict(epochs=0), "--epochs"), (dict(hidden=(64, 0)), "--hidden"))
    for kwargs, option in cases:
        with pytest.raises(DlforgeError, match=f"^{option}: expected"):
            BackpropConfig(**kwargs)


def test_run_backprop_digits_json_and_trace(capsys):
    result = run_backprop(BackpropConfig(data="digits", epochs=2, trace=True, json=True))
    out, err = capsys.readouterr()
    last = json.loads(out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result))
    assert 0.0 <= last["accuracy"] <= 1.0 and last["steps_per_s"] > 0
    assert last["history"][1]["loss"] < last["history"][0]["loss"]       # the loss fell
    assert last["loss"] == last["history"][-1]["loss"]
    for heading in ("Step 1 - forward pass", "Step 2 - loss calculation",
                    "Step 3 - backward pass", "Step 4 - weight update"):
        assert heading in err
    assert "dead units" in err and "||ΔW||/||W||" in err
    assert re.search(r"\[Epoch 2\] loss = \d+\.\d{4} \| accuracy = \d+\.\d{2}%", err)
    assert "precision" in err and "recall" in err                        # classification report
    assert len(out.strip().splitlines()) == 1                            # only JSON on stdout


def test_run_backprop_human_output_goes_to_stdout(capsys):
    run_backprop(BackpropConfig(data="moons", hidden=(16,), activation="tanh", optimizer="sgd",
                                lr=0.1, epochs=2, dtype="float64"))
    out, err = capsys.readouterr()
    assert "[Epoch 1] loss = " in out and "[Epoch 2] loss = " in out
    assert "Step 1 - forward pass" not in out
    assert "\r" not in out and "Epoch 1/2" in err  # the progress bar on stderr, as train's (it was on stdout)


def test_plot_activations_writes_png(tmp_path):
    path = tmp_path / "plots" / "activations.png"
    plot_activations(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


@pytest.mark.parametrize("data", ["digits", "moons"])
def test_a_data_dir_for_data_made_in_memory_is_refused(data, tmp_path):
    # before: `backprop --data digits --data-dir /nonexistent` trained on digits, the folder silently ignored
    with pytest.raises(DlforgeError, match=f"^--data-dir: {data} is made in memory"):
        run_backprop(BackpropConfig(data=data, data_dir=str(tmp_path), epochs=1))
