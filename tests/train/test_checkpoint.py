import pickle

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.registry import create_model
from dlforge.train import checkpoint as ckpt


def _model_and_opt():
    torch.manual_seed(0)
    m = create_model("mlp", in_features=6, num_classes=3, hidden=(5,))
    opt = torch.optim.Adam(m.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 6)).sum().backward()
        opt.step()
    return m, opt


def test_roundtrip_model_optimizer_rng_and_meta(tmp_path):
    m, opt = _model_and_opt()
    torch.manual_seed(123)
    ckpt.save_checkpoint(tmp_path / "c.safetensors", m, {"model": {"name": "mlp"}, "step": 3}, opt)
    expected_next = torch.rand(3)
    tensors, meta = ckpt.load_checkpoint(tmp_path / "c.safetensors")
    assert meta["step"] == 3 and meta["format"] == ckpt.CKPT_FORMAT
    m2 = create_model("mlp", in_features=6, num_classes=3, hidden=(5,))
    opt2 = torch.optim.Adam(m2.parameters(), 1e-2, weight_decay=1e-4)
    ckpt.restore_model(m2, tensors)
    ckpt.restore_optimizer(opt2, tensors, meta)
    ckpt.restore_rng(tensors)
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    for pa, pb in zip(m.parameters(), m2.parameters()):
        sa, sb = opt.state[pa], opt2.state[pb]
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_not_a_checkpoint(tmp_path, reliability):
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DlforgeError, match="not a valid dlforge checkpoint"):
        ckpt.load_checkpoint(p)
    reliability.record("a pickle named `.safetensors` given as a checkpoint", "refused, never unpickled")


def test_weights_of_another_model(tmp_path, reliability):
    m, _ = _model_and_opt()
    ckpt.save_checkpoint(tmp_path / "c.safetensors", m, {})
    tensors, _ = ckpt.load_checkpoint(tmp_path / "c.safetensors")
    with pytest.raises(DlforgeError, match="do not fit"):
        ckpt.restore_model(create_model("mlp", in_features=7, num_classes=3, hidden=(5,)), tensors)
    reliability.record("checkpoint of a model of other shapes", "refused with a one-line error")


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, reliability):
    m, _ = _model_and_opt()
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, m, {"step": 1})
    good = path.read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(DlforgeError, match="No space left.*previous checkpoint is kept"):
        ckpt.save_checkpoint(path, m, {"step": 2})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left behind
    reliability.record("disk full while writing a checkpoint (ENOSPC on fsync)",
                       "one-line error; the previous checkpoint intact, no temporary file left")


def test_channels_last_model_with_fused_adam_resumes_exactly(tmp_path):
    """Moment buffers must come back with the parameters' (channels-last) strides: the fused kernel
    pairs elements by memory offset, so a contiguous buffer would silently scramble the update."""
    def fresh():
        torch.manual_seed(0)
        m = create_model("cnn", img_size=8).to(memory_format=torch.channels_last)
        return m, torch.optim.Adam(m.parameters(), 1e-3, fused=True)

    def step(m, opt, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        m.eval()(x).square().mean().backward()
        opt.step()

    a, opt_a = fresh()
    for s in range(3):
        step(a, opt_a, s)
    ckpt.save_checkpoint(tmp_path / "c.safetensors", a, {}, opt_a)
    step(a, opt_a, 3)
    b, opt_b = fresh()
    tensors, meta = ckpt.load_checkpoint(tmp_path / "c.safetensors")
    ckpt.restore_model(b, tensors)
    ckpt.restore_optimizer(opt_b, tensors, meta)
    step(b, opt_b, 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_a_process_refused_the_lock_leaves_the_new_folder_and_its_lock_to_their_holder(tmp_path, monkeypatch):
    """Two `dlforge train` started together into a new --out both saw no folder; the one refused the lock then
    removed the folder and .lock of the one training (its later --resume refusals were lost)."""
    import fcntl

    from dlforge.runs import training_lock

    def taken(fd, op):  # another process holds it: it made the folder a moment after this one looked
        raise BlockingIOError
    monkeypatch.setattr(fcntl, "flock", taken)
    run = tmp_path / "new" / "run"
    with pytest.raises(DlforgeError, match="another dlforge process is training this run now"):
        with training_lock(run):
            pass
    assert (run / ".lock").is_file()
