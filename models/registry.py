"""Model registry: `create_model`, `list_models`, `get_settings` (the timm pattern).

A model module registers a builder with its default settings:

    @register_model(AimSettings())
    def aim(settings: AimSettings) -> AimModel: ...

`create_model(name, checkpoint=None, **overrides)` replaces settings fields by keyword,
builds the model in eval mode and, given a checkpoint, loads it strictly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import torch

from mattrt.errors import InputError, UnknownModelError
from mattrt.models.settings import ModelSettings

if TYPE_CHECKING:
    from mattrt.models.base import MattingModel


@dataclass(frozen=True)
class _Entry:
    settings: ModelSettings
    builder: Callable[[ModelSettings], "MattingModel"]


_REGISTRY: dict[str, _Entry] = {}


def register_model(settings: ModelSettings):
    """Decorator: register `builder(settings) -> MattingModel` under `settings.name`."""
    if not settings.name:
        raise ValueError("settings.name is empty")

    def decorate(builder: Callable[[ModelSettings], "MattingModel"]):
        if settings.name in _REGISTRY:
            raise ValueError(f"model {settings.name!r} is registered twice")
        _REGISTRY[settings.name] = _Entry(settings, builder)
        return builder

    return decorate


def list_models(include_variants: bool = True) -> list[str]:
    """Registered names, the published models first; reduced variants only if asked."""
    names = [n for n, e in _REGISTRY.items() if include_variants or e.settings.variant_of is None]
    return sorted(names, key=lambda n: (_REGISTRY[n].settings.variant_of is not None, n))


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; registered models: {known}") from None


def get_settings(name: str, /, **overrides) -> ModelSettings:
    """The settings of a registered model, with fields replaced by keyword."""
    entry = _entry(name)
    if not overrides:
        return entry.settings
    fields = {f.name for f in dataclasses.fields(entry.settings)}
    unknown = sorted(set(overrides) - fields - {"name"})
    if unknown or "name" in overrides:
        bad = unknown or ["name"]
        raise InputError(
            f"cannot override {', '.join(bad)} of model {name!r}; settable fields: "
            + ", ".join(sorted(fields - {"name"}))
        )
    return dataclasses.replace(entry.settings, **overrides)


# The seed the deployment chain draws the initial weights of a model named without a checkpoint from.
INIT_SEED = 0


def create_model(
    name: str, /, checkpoint: str | Path | Mapping[str, str | Path] | None = None, *, seed: int | None = None,
    **overrides
) -> "MattingModel":
    """Build a registered model in eval mode; with `checkpoint` (a file, or {part: file} for
    models assembled from separately distributed networks), load its weights strictly. With
    `seed`, the initial weights are drawn from that seed (torch's global random state is left as
    it was): what the deployment chain does for a model named without a checkpoint, so that the
    same name gives the same weights in every process (the artifact cache keys them by name)."""
    settings = get_settings(name, **overrides)
    if seed is None:
        model = _entry(name).builder(settings)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _entry(name).builder(settings)
    model.eval()
    if checkpoint is not None:
        model.load_weights(checkpoint)
    return model
