"""The one error type for user mistakes, and how other exceptions map onto it.

A user mistake (a missing, truncated or foreign file, a value of the wrong type or out of range, an
unknown name, an empty dataset, a malformed spec, an unknown config key) is reported by every entry
point as one line on stderr, exit status 2 (``rws.cli.entry``)::

    error: <what was wrong>, <which file or option>, <what was expected>

Anything else is a bug and keeps its traceback. ``UserError`` subclasses ValueError, so code that
catches ValueError keeps working; ``SpecError``, ``SignatureMismatchError`` and
``DatasetNotFoundError`` are UserErrors. ``user_error(exc)`` maps the rest at the entry points:
Hydra/OmegaConf config errors, missing files, and a ValueError raised by rws's own code (rws raises
ValueError only for bad input; a ValueError from a library is a bug).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_RWS_DIR = str(Path(__file__).resolve().parent)


class UserError(ValueError):
    """A mistake in what the user gave: ``what`` was wrong, ``where`` (the file or option),
    ``expected`` (what would have been right). A single message works too: ``UserError(message)``."""

    def __init__(self, what: Any, where: Any = None, expected: Any = None) -> None:
        self.what, self.where, self.expected = str(what), None if where is None else str(where), \
            None if expected is None else str(expected)
        super().__init__(", ".join(p for p in (self.what, self.where, self.expected) if p))

    def line(self) -> str:
        """The one line an entry point prints."""
        return f"error: {one_line(str(self))}"


def one_line(text: str, max_parts: int = 6) -> str:
    """A multi-line message as one line: stripped lines joined with '; ' (at most ``max_parts``)."""
    parts = [" ".join(p.split()) for p in str(text).splitlines() if p.strip()]
    if len(parts) > max_parts:
        parts = parts[:max_parts] + [f"... ({len(parts) - max_parts} more)"]
    return "; ".join(parts) or "unknown error"


def _raised_in_rws(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a statement in rws's own code (its innermost frame)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_RWS_DIR)


def _config_error(exc: BaseException) -> UserError | None:
    """Hydra / OmegaConf errors about the config the user composed."""
    try:
        from hydra.errors import (HydraException, InstantiationException, MissingConfigException,
                                  OverrideParseException)
        from omegaconf.errors import (ConfigKeyError, InterpolationResolutionError, MissingMandatoryValue,
                                      OmegaConfBaseException)
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MissingConfigException):
        group, _, name = str(exc.missing_cfg_file or "").rpartition("/")
        if exc.options and group:
            return UserError(f"unknown {group} {name!r}", f"option {group}={name}",
                             f"one of: {', '.join(sorted(exc.options))}")
        return UserError(one_line(str(exc)), exc.missing_cfg_file or None)
    if isinstance(exc, OverrideParseException):
        return UserError(f"cannot parse override {exc.override!r}", one_line(exc.message),
                         "key=value with a YAML value (quote lists and dicts)")
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", None) or ""
        return UserError(f"missing required value {key}".strip(), f"option {key}" if key else None,
                         f"set it on the command line, e.g. {key or 'KEY'}=VALUE")
    if isinstance(exc, InstantiationException):
        cause = exc.__cause__
        if cause is not None and (user_error(cause) is not None
                                  or (isinstance(cause, TypeError) and "argument" in str(cause))):
            inner = user_error(cause) or UserError(one_line(str(cause)))
            return UserError(one_line(f"{one_line(str(exc)).split(';')[0].rstrip(':')}: {inner}"))
        return None
    if isinstance(exc, HydraException):
        cause = exc.__cause__
        if isinstance(cause, ConfigKeyError) or "not in struct" in str(exc):
            key = getattr(cause, "full_key", None) or ""
            return UserError(one_line(str(exc)).split(";")[0].rstrip("."),
                             f"option {key}" if key else None,
                             "a key of the composed config (print it with --cfg job), or +KEY=VALUE to add one")
        return UserError(one_line(str(exc)))
    if isinstance(exc, (InterpolationResolutionError, OmegaConfBaseException)):
        key = getattr(exc, "full_key", None) or ""
        msg = one_line(str(exc)).split("; full_key")[0]
        return UserError(msg, f"option {key}" if key and key not in msg else None)
    return None


def user_error(exc: BaseException) -> UserError | None:
    """``exc`` as a UserError when it is a user mistake; None when it is a bug."""
    if isinstance(exc, UserError):  # DatasetNotFoundError, SpecError, ... included
        return exc
    mapped = _config_error(exc)
    if mapped is not None:
        return mapped
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        name = getattr(exc, "filename", None)
        msg = one_line(str(exc))
        return UserError(msg, None if not name or str(name) in msg else str(name))
    if type(exc) is ValueError and _raised_in_rws(exc):
        return UserError(one_line(str(exc)))
    return None
