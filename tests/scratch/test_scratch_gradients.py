"""Every gradient of the scratch engine against central finite differences and torch.autograd.

float64 throughout; relative error ||a - b|| / max(||a||, ||b||) < 1e-6.
"""
import numpy as np
import pytest
import torch

from dlforge.scratch import (MLP, BCEWithLogitsLoss, CrossEntropyLoss, Dense, MSELoss, ReLU,
                             Sigmoid, Softmax, Tanh)

TOL = 1e-6
TORCH_ACT = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh,
             "softmax": lambda z: torch.softmax(z, dim=-1)}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / 2 eps, x modified in place."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def away_from_zero(rng, shape):
    """Inputs at least 0.05 from 0, so finite differences never straddle ReLU's kink."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.05, 2.0, size=shape)


@pytest.mark.parametrize("act_cls", [Sigmoid, ReLU, Tanh, Softmax])
def test_activation_gradient(act_cls):
    rng = np.random.default_rng(1)
    z, upstream = away_from_zero(rng, (5, 7)), rng.normal(size=(5, 7))
    act = act_cls()
    act.forward(z)
    analytic = act.backward(upstream)                       # J^T g
    numeric = numeric_grad(lambda: float((act_cls().forward(z) * upstream).sum()), z)
    zt = torch.tensor(z, requires_grad=True)
    (TORCH_ACT[act.name](zt) * torch.tensor(upstream)).sum().backward()
    assert rel_err(analytic, numeric) < TOL
    assert rel_err(analytic, zt.grad.numpy()) < TOL


@pytest.mark.parametrize("act_cls", [Sigmoid, ReLU, Tanh])
def test_elementwise_derivative(act_cls):
    z = away_from_zero(np.random.default_rng(2), (50,))
    zt = torch.tensor(z, requires_grad=True)
    TORCH_ACT[act_cls.name](zt).sum().backward()
    assert rel_err(act_cls().derivative(z), zt.grad.numpy()) < TOL


def test_softmax_full_jacobian_matches_torch():
    z = np.random.default_rng(3).normal(size=(3, 6))
    ours = Softmax().jacobian(z)                                                 # (3, 6, 6)
    theirs = np.stack([torch.autograd.functional.jacobian(
        lambda r: torch.softmax(r, -1), torch.tensor(row)).numpy() for row in z])
    assert rel_err(ours, theirs) < TOL


def test_dense_gradients():
    rng = np.random.default_rng(4)
    layer = Dense(6, 4, rng, "float64")
    x, upstream = rng.normal(size=(5, 6)), rng.normal(size=(5, 4))
    layer.forward(x)
    dx = layer.backward(upstream)

    def objective():
        return float((layer.forward(x) * upstream).sum())

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.W.data, requires_grad=True)
    bt = torch.tensor(layer.b.data, requires_grad=True)
    ((xt @ wt + bt) * torch.tensor(upstream)).sum().backward()
    for ours, array, theirs in ((dx, x, xt), (layer.W.grad, layer.W.data, wt),
                                (layer.b.grad, layer.b.data, bt)):
        assert rel_err(ours, numeric_grad(objective, array)) < TOL
        assert rel_err(ours, theirs.grad.numpy()) < TOL


def _loss_cases(rng):
    logits = rng.normal(size=(6, 4)) * 3
    return [
        (MSELoss(), logits, rng.normal(size=(6, 4)),
         lambda z, y: torch.nn.functional.mse_loss(z, y)),
        (BCEWithLogitsLoss(), logits, rng.integers(0, 2, (6, 4)).astype(np.float64),
         lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y)),
        (BCEWithLogitsLoss(), logits, rng.uniform(0, 1, (6, 4)),          # soft labels
         lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y)),
        (CrossEntropyLoss(), logits, rng.integers(0, 4, (6,)),
         lambda z, y: torch.nn.functional.cross_entropy(z, y)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_loss_value_and_gradient(case):
    loss, logits, target, torch_loss = _loss_cases(np.random.default_rng(5))[case]
    value = loss.forward(logits, target)
    analytic = loss.backward()
    numeric = numeric_grad(lambda: type(loss)().forward(logits, target), logits)
    zt = torch.tensor(logits, requires_grad=True)
    reference = torch_loss(zt, torch.tensor(target))
    reference.backward()
    assert abs(value - reference.item()) <= TOL * abs(reference.item())
    assert rel_err(analytic, numeric) < TOL
    assert rel_err(analytic, zt.grad.numpy()) < TOL


def test_classification_losses_are_stable_for_huge_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-800.0, 900.0, 5.0]])
    y = np.array([1, 1])
    zt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    ref.backward()
    ce = CrossEntropyLoss()
    assert np.isclose(ce.forward(logits, y), ref.item(), rtol=1e-12)
    assert np.allclose(ce.backward(), zt.grad.numpy(), atol=1e-15)
    bce_target = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits),
                                                               torch.tensor(bce_target))
    value = BCEWithLogitsLoss().forward(logits, bce_target)
    assert np.isfinite(value) and np.isclose(value, ref.item(), rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_whole_mlp_gradient(activation):
    """Backprop through Dense -> act -> Dense -> act -> Dense -> cross-entropy."""
    rng = np.random.default_rng(6)
    net = MLP((5, 6, 4, 3), activation, "cross_entropy", "float64", seed=7)
    x, y = rng.normal(size=(8, 5)), rng.integers(0, 3, 8)
    net.loss(net.forward(x), y)
    dx = net.backward()
    model = torch.nn.Sequential(*[
        torch.nn.Linear(d.n_in, d.n_out).double() if i % 2 == 0 else
        {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[activation]()
        for i, d in enumerate(net.layers)])
    with torch.no_grad():
        for ours, lin in zip(net.dense_layers(), model[::2]):
            lin.weight.copy_(torch.tensor(ours.W.data.T))
            lin.bias.copy_(torch.tensor(ours.b.data))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(model(xt), torch.tensor(y)).backward()
    assert rel_err(dx, xt.grad.numpy()) < TOL
    for ours, lin in zip(net.dense_layers(), model[::2]):
        assert rel_err(ours.W.grad, lin.weight.grad.numpy().T) < TOL
        assert rel_err(ours.b.grad, lin.bias.grad.numpy()) < TOL
    first = net.dense_layers()[0]
    numeric = numeric_grad(lambda: net.loss(net.forward(x), y), first.W.data)
    assert rel_err(first.W.grad, numeric) < TOL
