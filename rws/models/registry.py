"""The model registry: every architecture module registers its builder and its layer rule next to
its definition, so adding an architecture touches one file (and its config).

    @register_model("vgg16", layer_rule=conv_chain)
    def vgg16(num_classes: int, width: float, drop_rate: float, **kw) -> nn.Module: ...

A name ending in "/" registers a *family* ("timm/", "robustbench/"): ``create_model("timm/resnet18")``
finds the "timm/" entry and its builder gets the rest of the name ("resnet18") as first argument.
``create_model`` (rws/models/factory.py) does the checks every model shares; see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

# A layer rule maps the bare classifier to [(group name, [module-name prefixes]), ...] in forward
# order, or None for "no structure known": layer_groups then uses the generic fallback.
LayerSpec = list[tuple[str, list[str]]]
LayerRule = Callable[[nn.Module], LayerSpec | None]

# create_model writes the registered name onto the classifier it builds, so layer_groups finds
# the rule from the module alone (a plain attribute: not in the state dict, survives deepcopy).
MODEL_NAME_ATTR = "rws_model_name"

DEFAULT_NO_PRETRAINED_HINT = "train it or pass init=<export dir>"


@dataclass(frozen=True)
class ModelEntry:
    """One registered name and what ``create_model`` needs to know about it.

    ``build(num_classes, [width=], [pretrained=], drop_rate=, **kwargs)`` gets ``width`` only when
    ``width`` is True and ``pretrained`` only when ``pretrained`` is True (otherwise create_model
    rejects width != 1 / pretrained=True itself). A family's builder takes the arch name first.
    """

    name: str
    build: Callable[..., nn.Module]
    layer_rule: LayerRule | None = None          # None: one group per module (the generic fallback)
    width: bool = True                           # has a width multiplier
    pretrained: bool = False                     # can load published weights
    no_pretrained_hint: str = DEFAULT_NO_PRETRAINED_HINT
    # The classifier takes pixels in [0, 1] and normalizes itself (RobustBench): create_model wraps
    # it with mean 0 / std 1 so it is not normalized twice.
    normalizes_inside: bool = False

    @property
    def family(self) -> bool:
        return self.name.endswith("/")


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(name: str, *, layer_rule: LayerRule | None = None, width: bool = True,
                   pretrained: bool = False, no_pretrained_hint: str = DEFAULT_NO_PRETRAINED_HINT,
                   normalizes_inside: bool = False) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``name`` (or the family ``prefix/``) with its builder and layer rule."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ENTRIES:
            raise ValueError(f"model {name!r} is registered twice ({_ENTRIES[name].build.__module__} "
                             f"and {build.__module__})")
        if "/" in name.rstrip("/"):
            raise ValueError(f"model name {name!r}: only a family prefix may contain '/', at its end")
        _ENTRIES[name] = ModelEntry(name, build, layer_rule=layer_rule, width=width, pretrained=pretrained,
                                    no_pretrained_hint=no_pretrained_hint, normalizes_inside=normalizes_inside)
        return build

    return register


def list_models() -> tuple[str, ...]:
    """The registered model names, in registration order (families excluded)."""
    return tuple(n for n, e in _ENTRIES.items() if not e.family)


def list_families() -> tuple[str, ...]:
    """The registered family prefixes ("timm/", ...): any ``prefix<name>`` is a model name."""
    return tuple(n for n, e in _ENTRIES.items() if e.family)


def lookup(name: str) -> tuple[ModelEntry, str | None]:
    """The entry for ``name`` and, for a family member, the name after the prefix (else None)."""
    if name in _ENTRIES and not _ENTRIES[name].family:
        return _ENTRIES[name], None
    for prefix in list_families():
        if name.startswith(prefix) and len(name) > len(prefix):
            return _ENTRIES[prefix], name[len(prefix):]
    families = ", ".join(f"{p}<name>" for p in list_families())
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}, or {families}")
