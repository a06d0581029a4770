"""Checkpoints that describe themselves and load without pickle.

One `.safetensors` file per checkpoint: tensors under `model.*`, `optim.<i>.<key>`, `rng.*`,
and in the header's metadata one JSON document (format version, model name and config, step,
epoch, optimiser hyper-parameters, anything the trainer needs). One file, written atomically,
means weights and metadata can never disagree.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from dlforge.errors import DlforgeError
from dlforge.runs import atomic_write_bytes

CKPT_FORMAT = 1


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, extra: dict[str, torch.Tensor] | None = None) -> None:
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if v.untyped_storage().data_ptr() in seen:  # tied weights (one tensor, two names): safetensors
            v = v.clone()                            # refuses shared memory, so store a copy
        seen.add(v.untyped_storage().data_ptr())
        tensors[f"model.{k}"] = v
    meta = {"format": CKPT_FORMAT, **meta}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors.update(extra or {})
    data = st_save(tensors, metadata={"dlforge": json.dumps(meta)})
    try:
        atomic_write_bytes(Path(path), data)
    except DlforgeError as e:  # atomic_write_bytes: "PATH: cannot write (why)"
        raise DlforgeError(f"{e}; the previous checkpoint is kept") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (tensors, metadata). Never unpickles: safetensors holds only raw tensors and a JSON header."""
    path = Path(path)
    if not path.is_file():
        raise DlforgeError(f"{path}: checkpoint not found")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, then the JSON header
        meta = json.loads(json.loads(raw[8:8 + n]).get("__metadata__", {}).get("dlforge", "null"))
    except (SafetensorError, json.JSONDecodeError, ValueError, UnicodeDecodeError) as e:
        raise DlforgeError(f"{path}: not a valid dlforge checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != CKPT_FORMAT:
        raise DlforgeError(f"{path}: not a dlforge checkpoint of format {CKPT_FORMAT}")
    return tensors, meta


def read_meta(path: Path) -> dict | None:
    """A checkpoint's metadata from its header alone (not its tensors); None if absent or unreadable."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(json.loads(f.read(min(n, 100 << 20)))["__metadata__"]["dlforge"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if isinstance(meta, dict) else None


def restore_model(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path | str = "checkpoint") -> None:
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise DlforgeError(f"{path}: weights do not fit this model ({first[0].strip()})") from None


def restore_averaged(model: torch.nn.Module, averaged: dict[str, torch.Tensor], path: Path | str = "checkpoint") -> None:
    """The moving average of the weights (task.ema.NAME, one per parameter as named_parameters() names them:
    a tied weight once, no buffers) copied into the model's parameters."""
    params = dict(model.named_parameters())
    if set(params) != set(averaged):
        odd = sorted(set(params) ^ set(averaged))[0]
        raise DlforgeError(f"{path}: its moving average of the weights does not fit this model "
                           f"({'no task.ema.' + odd if odd in params else 'unexpected task.ema.' + odd})")
    with torch.no_grad():
        for k, p in params.items():
            if averaged[k].shape != p.shape:
                raise DlforgeError(f"{path}: task.ema.{k} has shape {tuple(averaged[k].shape)}, the model's "
                                   f"{tuple(p.shape)}")
            p.copy_(averaged[k])


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    saved = meta["optimizer"]
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in saved["plain_state"].items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": dict(sorted(state.items())), "param_groups": saved["param_groups"]})
    # Give every moment buffer its parameter's strides (e.g. channels-last): checkpoints store them
    # contiguous, and the fused optimisers pair parameter and buffer elements by memory offset.
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """Weights for --init-from: a safetensors file (a dlforge checkpoint or a plain state dict), or a
    PyTorch file read with torch.load(weights_only=True) — a pickle that would build anything but
    tensors and plain containers (i.e. run code) is refused."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise DlforgeError(f"--init-from {path}: file not found")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else 0
    if 0 < n < len(raw) and raw[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        try:
            tensors = st_load(raw)
        except (SafetensorError, ValueError) as e:
            raise DlforgeError(f"--init-from {path}: not a valid safetensors file ({e})") from None
        if any(k.startswith("model.") for k in tensors):
            return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        return tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise DlforgeError(f"--init-from {path}: refused, the file would load more than weights ({first})") from None
    except Exception as e:  # any other failure to parse untrusted bytes means: not a weights file
        raise DlforgeError(f"--init-from {path}: not a safetensors or PyTorch weights file "
                           f"({type(e).__name__}: {str(e)[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DlforgeError(f"--init-from {path}: expected a dict of tensors (a state dict)")
    return obj


def init_weights(model: torch.nn.Module, path: Path | str) -> None:
    """Load --init-from weights into model: every name and shape must match."""
    weights = load_weights(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise DlforgeError(f"--init-from {path}: names do not match this model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    bad = [k for k in own if own[k].shape != weights[k].shape]
    if bad:
        raise DlforgeError(f"--init-from {path}: {bad[0]} has shape {tuple(weights[bad[0]].shape)}, "
                           f"the model expects {tuple(own[bad[0]].shape)}")
    model.load_state_dict(weights)
