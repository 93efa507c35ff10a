"""``create_model``: the one way rws builds a classifier (see docs/models.md).

The names come from the registry (rws/models/registry.py); this module only does what every model
shares: argument checks, the width/pretrained rules, the name tag layer_groups reads, and the
``Normalized`` wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from rws.models.normalize import Normalized
from rws.models.registry import MODEL_NAME_ATTR, lookup

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)


def _no_width(name: str, width: float) -> None:
    # A silently ignored width would make a "narrow" run train the full model.
    if float(width) != 1.0:
        raise ValueError(f"model {name!r} has no width multiplier; width must be 1.0, got {width}")


def _check_no_normalization(name: str, mean: Sequence[float], std: Sequence[float]) -> None:
    # The model standardizes its input itself; a second standardization would silently shift it.
    given = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if given not in ((DEFAULT_MEAN, DEFAULT_STD), (IDENTITY_MEAN, IDENTITY_STD)):
        raise ValueError(f"model {name!r} normalizes its input itself (pixels in [0, 1]); leave mean/std "
                         f"out of its model config (got mean={list(given[0])} std={list(given[1])})")


def create_model(name: str, num_classes: int, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, width: float = 1.0, pretrained: bool = False,
                 drop_rate: float = 0.0, adapter: str | None = None, heads: dict | None = None,
                 **kwargs: Any) -> Normalized:
    """Build classifier ``name`` wrapped in :class:`Normalized` (input pixels in [0, 1]).

    ``name`` is one of ``rws.models.list_models()`` or ``<family>/<name>`` for a registered family
    (``timm/<timm model name>``, ``robustbench/<RobustBench model name>``). ``kwargs`` go to the
    architecture (``small_cnn``: ``bn``; ``wrn28_10``: ``depth``, ``widen_factor``; ViT and
    ``timm/*``: timm keyword arguments; ``robustbench/*``: ``dataset``, ``threat_model``,
    ``model_dir``). Only ``timm/*`` and ``resnet50`` can load pretrained weights (which needs the
    internet or a filled timm/HF cache); ``robustbench/*`` always loads its published weights.

    ``adapter`` (one of ``rws.models.adapters.ADAPTER_KINDS``) converts the built network into a
    ``DualModeNetwork`` with the modes clean/robust (``model.net`` is then that wrapper and
    ``model.net.net`` the architecture); None builds the plain model.

    ``heads`` (``{names, default, tuned_stages | tuned_fraction, head_fraction, dropout}``, see
    ``rws.models.multihead``) cuts the network into a frozen trunk and per-head copies of its last
    stages: a multi-head distillation student (``model.net`` is then a ``MultiHeadStudent``).
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    width = float(width)
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    drop_rate = float(drop_rate)

    if adapter is not None:
        from rws.models.adapters import check_adapter_kind

        check_adapter_kind(adapter)  # before building anything
        if heads is not None:
            raise ValueError("model.adapter and model.heads cannot be combined (one wrapper per network)")
    if heads is not None:
        from rws.models.multihead import heads_options

        heads_options(heads)  # before building anything

    entry, arch = lookup(name)
    if not entry.width:
        _no_width(name, width)
    if pretrained and not entry.pretrained:
        raise ValueError(f"{name} has no pretrained weights; {entry.no_pretrained_hint}")
    if entry.normalizes_inside:
        _check_no_normalization(name, mean, std)
        mean, std = IDENTITY_MEAN, IDENTITY_STD  # (x - 0) / 1 is exactly x: logits are the model's own

    args = () if arch is None else (arch,)
    options: dict[str, Any] = {"drop_rate": drop_rate, **kwargs}
    if entry.width:
        options["width"] = width
    if entry.pretrained:
        options["pretrained"] = bool(pretrained)
    _check_options(name, entry.build, args, num_classes, options)
    net = entry.build(*args, num_classes, **options)
    setattr(net, MODEL_NAME_ATTR, name)
    if adapter is not None:
        from rws.models.adapters import apply_adapter

        # The name tag stays on the architecture; layer_groups sees the wrapper as a module of unknown
        # class and groups its keys with the generic fallback.
        net = apply_adapter(net, adapter)
    if heads is not None:
        from rws.models.multihead import MultiHeadStudent

        net = MultiHeadStudent(net, heads)
    return Normalized(net, mean=mean, std=std)


def _check_options(name: str, build: Any, args: tuple, num_classes: int, options: dict[str, Any]) -> None:
    """An option the architecture does not take is the user's mistake (a misspelt key in a model
    config): say which one and what it takes, instead of Python's TypeError from inside the build.
    Builders that forward ``**kwargs`` (timm families) are left to their own checks."""
    try:
        sig = inspect.signature(build)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    try:
        sig.bind(*args, num_classes, **options)
    except TypeError:
        taken = [p for p in sig.parameters if p not in ("num_classes", "arch", "name")]
        unknown = sorted(set(options) - set(sig.parameters))
        what = f"unknown option(s) {', '.join(repr(u) for u in unknown)}" if unknown else "options that do not fit"
        raise ValueError(f"{what} for model {name!r} (model.{unknown[0] if unknown else name}), "
                         f"expected options among {taken}") from None
