"""Learning-rate warm-up and cosine decay (TrainConfig.lr_schedule / warmup_steps)."""
import math

import pytest

from dlforge.errors import DlforgeError
from dlforge.train.trainer import TrainConfig, lr_factor


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(lr_schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(0.1)      # (0 + 1) / 10
    assert lr_factor(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 99, 1.0) == pytest.approx(0.1)
    assert lr_factor(cfg, 500, 3.0) == pytest.approx(0.1)    # past the budget: stays at the floor


def test_constant_is_unchanged_by_default():
    cfg = TrainConfig()
    assert all(lr_factor(cfg, s, s / 10) == 1.0 for s in range(10))
    assert lr_factor(TrainConfig(warmup_steps=4), 1, 0.5) == pytest.approx(0.5)
    assert math.isclose(lr_factor(TrainConfig(lr_schedule="cosine", min_lr_ratio=0), 0, 0.25), 0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("kw, opt", [({"lr_schedule": "step"}, "--lr-schedule"), ({"warmup_steps": -1}, "--warmup-steps"),
                                     ({"eval_every": 0}, "--eval-every"), ({"beta2": 1.0}, "--beta2")])
def test_bad_schedule_options(kw, opt):
    with pytest.raises(DlforgeError, match=opt):
        TrainConfig(**kw)


def test_the_cosine_starts_where_the_warm_up_ends_as_nanogpts():
    """A 1,574-step run with 50 warm-up steps: the rate of every step is nanoGPT's get_lr (train.py: warm-up
    lr·(it+1)/(warmup+1)... then a cosine over the steps after it down to min_lr), up to its +1 in the
    warm-up's denominator."""
    from types import SimpleNamespace

    from dlforge.train.trainer import Trainer
    cfg = TrainConfig(lr=2e-3, lr_schedule="cosine", warmup_steps=50, min_lr_ratio=0.1, max_steps=1574)
    run = SimpleNamespace(cfg=cfg, epochs=7, train=range(245), step=0)
    for step in (50, 51, 400, 800, 1200, 1573):
        run.step = step
        ours = cfg.lr * lr_factor(cfg, step, Trainer.progress(run))
        decay = (step - 50) / (1574 - 50)
        assert ours == pytest.approx(2e-4 + 0.5 * (1 + math.cos(math.pi * decay)) * (2e-3 - 2e-4))
    run.step = 49
    assert cfg.lr * lr_factor(cfg, 49, Trainer.progress(run)) == pytest.approx(2e-3)  # the warm-up's last step
