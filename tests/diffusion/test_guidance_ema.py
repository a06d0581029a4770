"""Classifier-free guidance, condition dropout and the moving average of the weights."""
import pytest
import torch

from dlforge.diffusion.pipeline import check_guidance, guided_eps
from dlforge.errors import DlforgeError
from dlforge.registry import create_model
from dlforge.train.tasks import DenoiseTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = create_model("unet-tiny", vocab_size=10, img_size=8).eval()
    for p in m.parameters():
        if p.dim() > 1 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, 0, 0.2)
    return m


def test_guidance_1_is_the_conditional_prediction_and_g_extrapolates(model):
    x, cond, null = torch.randn(2, 1, 8, 8), torch.tensor([[1, 4, 5], [1, 6, 0]]), torch.tensor([[1, 0, 0]] * 2)
    t = torch.tensor([400, 400])
    with torch.no_grad():
        eps_c, eps_u = model(x, t, cond), model(x, t, null)
        assert torch.allclose(guided_eps(model, x, 400, cond, null, 1.0), eps_c, atol=1e-6)
        assert torch.allclose(guided_eps(model, x, 400, cond, null, 0.0), eps_u, atol=1e-6)
        # one batched forward of 2B = the two separate ones
        assert torch.allclose(guided_eps(model, x, 400, cond, null, 3.0), eps_u + 3 * (eps_c - eps_u), atol=1e-5)
    for bad in (-0.5, 31):
        with pytest.raises(DlforgeError, match="--guidance"):
            check_guidance(bad)


def test_condition_dropout_gives_the_empty_caption():
    task = DenoiseTask(num_train_timesteps=100)
    ids = torch.tensor([[1, 4, 5, 0], [1, 6, 7, 8]])
    assert torch.equal(task.drop_condition(ids, 0.999999), torch.tensor([[1, 0, 0, 0]] * 2))
    assert torch.equal(task.drop_condition(ids, 0.0), ids)
    assert torch.equal(task.drop_condition(torch.ones(2, 1, 3), 0.999999), torch.zeros(2, 1, 3))
    torch.manual_seed(0)
    kept = (task.drop_condition(ids.repeat(5000, 1), 0.1)[:, 1] != 0).float().mean().item()
    assert kept == pytest.approx(0.9, abs=0.02)
    with pytest.raises(DlforgeError, match="--cond-drop"):
        DenoiseTask(cond_drop=1.0)


def test_ema_math_swap_and_checkpoint_round_trip():
    net = torch.nn.Linear(2, 1, bias=False)
    task = DenoiseTask(num_train_timesteps=10, ema_decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    task.after_step(net)                       # update 1: decay min(0.9, 2/11) -> ema = 1 (initialised to θ)
    with torch.no_grad():
        net.weight.fill_(3.0)
    task.after_step(net)                       # update 2: d = min(0.9, 3/12) = 0.25 -> 0.25·1 + 0.75·3
    assert task.ema["weight"][0, 0].item() == pytest.approx(2.5)
    for _ in range(200):
        task.after_step(net)
    assert task.ema["weight"][0, 0].item() == pytest.approx(3.0, abs=1e-6)  # decay capped at 0.9: converges
    with torch.no_grad():
        net.weight.fill_(7.0)
    task.swap_ema(net)
    assert net.weight[0, 0].item() == pytest.approx(3.0) and task.ema["weight"][0, 0].item() == 7.0
    task.swap_ema(net)
    assert net.weight[0, 0].item() == 7.0
    saved = task.state_tensors()
    other = DenoiseTask(num_train_timesteps=10, ema_decay=0.9)
    other.load_state_tensors({**saved, "model.weight": torch.zeros(1, 2)}, torch.device("cpu"))
    assert other.ema_updates == 202 and torch.equal(other.ema["weight"], task.ema["weight"])


@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_denoise_step_is_the_min_snr_weighted_epsilon_mse(model, gamma):
    task = DenoiseTask(num_train_timesteps=1000, cond_drop=0.0, snr_gamma=gamma)
    x0, ids = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([[1, 4, 5]] * 4)
    torch.manual_seed(3)
    loss, stats = task.step(model, (x0, ids))
    torch.manual_seed(3)
    t = torch.randint(0, 1000, (4,))
    eps = torch.randn_like(x0)
    a = task.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    per_image = ((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, ids) - eps) ** 2).mean((1, 2, 3))
    snr = (a / (1 - a)).view(-1)
    w = torch.minimum(snr, torch.tensor(gamma)) / snr if gamma else torch.ones(4)
    assert loss.item() == pytest.approx((w * per_image).mean().item(), rel=1e-5) and stats["count"] == 4
    if gamma:  # noisy steps (SNR < γ) keep weight 1, nearly clean ones are scaled down by γ/SNR
        assert task.loss_weight[-1] == 1 and task.loss_weight[0] == pytest.approx(gamma / snr_at(task, 0), rel=1e-5)


def snr_at(task: DenoiseTask, t: int) -> float:
    a = task.scheduler.alphas_cumprod[t].item()
    return a / (1 - a)


def test_snr_gamma_must_be_non_negative():
    with pytest.raises(DlforgeError, match="--snr-gamma"):
        DenoiseTask(snr_gamma=-1.0)
