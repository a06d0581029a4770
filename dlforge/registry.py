"""Models are plain nn.Modules created by name: register_model / create_model / list_models.

A registered entry is a small function of keyword arguments (a variant); `task` names what a
batch means for it (see train/tasks.py), so the CLI and tests know how to drive any model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from dlforge.errors import DlforgeError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    task: str  # "classify" | "language-model" | "seq2seq" | "denoise" | "speech"
    doc: str


_MODELS: dict[str, ModelEntry] = {}
ALIASES = {"diffusion": "unet"}  # `dlforge train diffusion`: the default text-to-image denoiser


def canonical(name: str) -> str:
    """A model's registered name (an alias is the model it stands for; anything else as it is)."""
    return ALIASES.get(name, name) if isinstance(name, str) else name


def register_model(name: str, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _MODELS[name] = ModelEntry(name, fn, task, doc)
        return fn
    return wrap


def _load_families() -> None:
    importlib.import_module("dlforge.models")  # each family module registers its variants on import


def get_entry(name: str) -> ModelEntry:
    _load_families()
    if canonical(name) not in _MODELS:
        raise DlforgeError(f"unknown model {name!r}; expected one of: {', '.join(sorted([*_MODELS, *ALIASES]))}")
    return _MODELS[canonical(name)]


def create_model(name: str, **kwargs) -> nn.Module:
    entry = get_entry(name)
    try:
        return entry.fn(**kwargs)
    except TypeError as e:  # an option the variant does not take
        raise DlforgeError(f"model {name!r}: {e}") from None


def list_models() -> list[str]:
    _load_families()
    return sorted(_MODELS)


def entries() -> list[ModelEntry]:
    _load_families()
    return [_MODELS[n] for n in sorted(_MODELS)]
