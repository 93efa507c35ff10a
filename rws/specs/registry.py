"""The spec-kind registry: each kind of model spec (export, patch, soup, ...) is a plug-in.

A kind says which keys it requires, how to check its own keys, which child specs it holds (so
validation can recurse without knowing the kind) and how to build its module. Only
``rws.specs.core`` recurses; a kind reaches its children through the ``BuildContext`` it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from rws.errors import UserError

if TYPE_CHECKING:  # the context imports core, which imports this module
    from rws.specs.context import BuildContext


class SpecError(UserError):
    """A malformed model spec (a user mistake: the entry points print it as one line)."""


@dataclass(frozen=True)
class SpecKind:
    name: str                                   # "export", "patch", ...
    required: tuple[str, ...]                   # required keys
    build: Callable[[dict, "BuildContext"], nn.Module]
    children: Callable[[dict], list[tuple[str, Any]]] = lambda spec: []   # (where-suffix e.g. ".base", child spec) for recursive validation
    check: Callable[[dict, str], None] = lambda spec, where: None        # validate own keys, raise SpecError(where...)
    display: Callable[[dict, Callable[[Any], str]], str] | None = None    # short name; gets spec_name for children


_KINDS: dict[str, SpecKind] = {}


def register_kind(kind: SpecKind) -> SpecKind:
    """Add ``kind`` to the registry (returns it, so a module can keep a handle). A second, different
    kind under a taken name is an error: two plug-ins must not silently fight over one name."""
    old = _KINDS.get(kind.name)
    if old is not None and old != kind:
        raise SpecError(f"spec kind {kind.name!r} is already registered (builder "
                        f"{getattr(old.build, '__module__', '?')}.{getattr(old.build, '__qualname__', '?')})")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> SpecKind:
    """The registered kind ``name``; SpecError listing the known kinds otherwise."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown spec kind {name!r}; kinds: {', '.join(kind_names())}") from None


def kind_names() -> list[str]:
    """Registered kind names, in registration order."""
    return list(_KINDS)
