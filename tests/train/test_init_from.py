"""--init-from: weights only. A pickle that would run code is refused and runs nothing."""
import os

import pytest
import torch
from safetensors.torch import save_file

from dlforge.errors import DlforgeError
from dlforge.registry import create_model
from dlforge.train.checkpoint import load_weights, save_checkpoint


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this would create a file: code execution
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, reliability):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Exploit(str(marker))}, evil)
    with pytest.raises(DlforgeError, match="refused"):
        load_weights(evil)
    assert not marker.exists()
    reliability.record("`--init-from` a PyTorch file whose pickle would run code", "refused; the code never ran")


def test_plain_torch_state_dict_is_accepted(tmp_path):
    m = create_model("mlp", in_features=4, num_classes=2, hidden=(3,))
    torch.save({"state_dict": m.state_dict()}, tmp_path / "w.pt")
    w = load_weights(tmp_path / "w.pt")
    assert set(w) == set(m.state_dict())


def test_safetensors_state_dict_and_dlforge_checkpoint(tmp_path):
    m = create_model("mlp", in_features=4, num_classes=2, hidden=(3,))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    save_checkpoint(tmp_path / "c.safetensors", m, {"step": 1})
    assert set(load_weights(tmp_path / "w.safetensors")) == set(m.state_dict())
    got = load_weights(tmp_path / "c.safetensors")
    assert all(torch.equal(got[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", os.urandom(64)])
def test_garbage_is_a_clear_error(tmp_path, content, reliability):
    p = tmp_path / "x.bin"
    p.write_bytes(content)
    with pytest.raises(DlforgeError, match="--init-from"):
        load_weights(p)
    reliability.record("`--init-from` an empty, random or half-safetensors file", "refused with a one-line error")
