"""The NumPy MLP and a torch MLP, started from the same weights and fed the same batches, follow
the same loss trajectory (float64, 20 steps, relative difference < 1e-8)."""
import numpy as np
import pytest
import torch

from dlforge.registry import create_model
from dlforge.scratch import MLP, make_optimizer

SIZES, STEPS, BATCH = (64, 64, 32, 10), 20, 32


def torch_mlp(sizes: tuple[int, ...], activation: str) -> torch.nn.Module:
    """The registry's `mlp`: Flatten, then Linear layers with `activation` between them."""
    return create_model("mlp", in_features=sizes[0], num_classes=sizes[-1],
                        hidden=tuple(sizes[1:-1]), activation=activation)


def linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def copy_weights(net: MLP, model: torch.nn.Module) -> None:
    """torch stores W as (out, in): weight = W^T."""
    with torch.no_grad():
        for dense, lin in zip(net.dense_layers(), linears(model), strict=True):
            lin.weight.copy_(torch.from_numpy(dense.W.data.T.copy()))
            lin.bias.copy_(torch.from_numpy(dense.b.data.copy()))


def batches():
    """STEPS fixed mini-batches of digit-like data: x (BATCH, 64), y (BATCH,)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, SIZES[0])), rng.integers(0, SIZES[-1], 256)
    order = np.concatenate([rng.permutation(256) for _ in range(3)])
    return [(x[order[i * BATCH:(i + 1) * BATCH]], y[order[i * BATCH:(i + 1) * BATCH]])
            for i in range(STEPS)]


OPTIMISERS = {
    "sgd_momentum": (dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.0),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd_momentum_wd": (dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "adam_wd": (dict(name="adam", lr=3e-3, momentum=0.0, weight_decay=1e-2),
                lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2)),
}


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("opt", list(OPTIMISERS))
def test_loss_trajectory_matches_torch(opt, activation):
    ours_cfg, make_torch_opt = OPTIMISERS[opt]
    net = MLP(SIZES, activation, "cross_entropy", "float64", seed=0)
    net.optimizer = make_optimizer(ours_cfg["name"], net.parameters(), ours_cfg["lr"],
                                   ours_cfg["momentum"], ours_cfg["weight_decay"])
    model = torch_mlp(SIZES, activation).double()
    copy_weights(net, model)
    torch_opt = make_torch_opt(model.parameters())
    ours, theirs = [], []
    for x, y in batches():
        logits = net.forward(x)                                     # 1. forward
        ours.append(net.loss(logits, y))                            # 2. loss
        net.backward()                                              # 3. backward
        net.step()                                                  # 4. update
        torch_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        torch_opt.step()
        theirs.append(loss.item())
    ours, theirs = np.array(ours), np.array(theirs)
    assert ours[-1] < ours[0]                                       # it does learn
    assert np.max(np.abs(ours - theirs) / np.abs(theirs)) < 1e-8
    for dense, lin in zip(net.dense_layers(), linears(model)):
        w = lin.weight.detach().numpy().T
        assert np.linalg.norm(dense.W.data - w) / np.linalg.norm(w) < 1e-8


def test_float32_stays_float32():
    net = MLP(SIZES, "relu", "cross_entropy", "float32", seed=0)
    net.optimizer = make_optimizer("adam", net.parameters(), 1e-3, weight_decay=1e-4)
    for x, y in batches()[:3]:
        logits = net.forward(x)
        assert logits.dtype == np.float32
        net.loss(logits, y)
        assert net.backward().dtype == np.float32
        net.step()
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in net.parameters())
    assert all(m.dtype == np.float32 for m in net.optimizer.m + net.optimizer.v)
