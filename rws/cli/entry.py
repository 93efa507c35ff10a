"""The one wrapper every Hydra entry point goes through (train, evaluate, sweep, rws.stages.*).

    @hydra_entry("train")
    def main(cfg: DictConfig) -> float | None: ...

is ``@hydra.main(config_path=rws/conf, config_name="train", version_base="1.3")`` plus the error
rule (``rws.errors``): a user mistake, whether the config does not compose (unknown key or option, a
missing ``???`` value) or the task rejects an input, prints one line on stderr,

    error: <what was wrong>, <which file or option>, <what was expected>

and exits with status 2, no traceback; any other exception is a bug and keeps its traceback.

Nothing half-written: Hydra creates the run directory and writes ``.hydra/*.yaml`` and ``<job>.log``
before the task starts. ``OutputGuard`` (a Hydra callback, ``hydra.callbacks.rws_output_guard`` in
the configs) notes what was there before; on a user error those files are put back as they were and
the directories the run created are removed again if they are empty. The tasks themselves check
their inputs before they write anything.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from hydra.experimental.callback import Callback

from rws.errors import UserError, one_line, user_error

TaskFunction = Callable[[Any], Any]


def report(err: UserError) -> NoReturn:
    """Print the one line and exit with status 2."""
    sys.stdout.flush()
    print(err.line(), file=sys.stderr, flush=True)
    raise SystemExit(2)


class OutputGuard(Callback):
    """Hydra callback: on_run_start records the run directory's state, ``undo()`` restores it."""

    _state: dict[str, Any] | None = None

    def __init__(self, **_: Any) -> None:
        pass

    def on_run_start(self, config: Any, **_: Any) -> None:
        from omegaconf import OmegaConf

        OutputGuard._state = None
        try:
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
            subdir = OmegaConf.select(config, "hydra.output_subdir")
            job = str(OmegaConf.select(config, "hydra.job.name"))
        except Exception:  # an interpolation that cannot resolve yet: Hydra reports it itself
            return
        created = []
        d = run_dir
        while not d.exists() and d != d.parent:
            created.append(d)
            d = d.parent
        files = [run_dir / f"{job}.log"]
        if subdir is not None:
            files += [run_dir / str(subdir) / f for f in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        dirs = created + ([run_dir / str(subdir)] if subdir is not None else [])
        OutputGuard._state = {"created": dirs, "files": {f: f.read_bytes() if f.is_file() else None
                                                         for f in files}}

    @staticmethod
    def undo() -> None:
        """Put back what Hydra wrote for this run; remove the directories it created if empty."""
        import logging

        state, OutputGuard._state = OutputGuard._state, None
        if state is None:
            return
        root = logging.getLogger()  # close the job log before removing it
        for h in list(root.handlers):
            if isinstance(h, logging.FileHandler):
                root.removeHandler(h)
                h.close()
        for f, old in state["files"].items():
            try:
                if old is None:
                    f.unlink(missing_ok=True)
                else:
                    f.write_bytes(old)
            except OSError:
                pass
        for d in sorted(state["created"], key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): leave it
                pass


def check_required(cfg: Any) -> None:
    """Every ``???`` value of the composed config is set (before the task does any work)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def walk(node: Any, prefix: str) -> list[str]:  # without resolving interpolations
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        out = []
        for k in keys:
            name = f"{prefix}{k}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{k}]"
            if OmegaConf.is_missing(node, k):
                out.append(name)
            elif not OmegaConf.is_interpolation(node, k):
                child = node._get_node(k)
                if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
                    out += walk(child, f"{name}.")
        return out

    missing = walk(cfg, "") if isinstance(cfg, DictConfig) else []
    if missing:
        raise UserError(f"missing required value{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                        f"option{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                        f"set on the command line, e.g. {missing[0]}=VALUE")


def run_task(task: TaskFunction, cfg: Any) -> Any:
    """Run a task function; a user error undoes Hydra's writes and becomes the one line."""
    try:
        check_required(cfg)
        return task(cfg)
    except Exception as e:
        _report_user_error_or_reraise(e)


def _report_user_error_or_reraise(e: Exception) -> NoReturn:
    """A user error undoes Hydra's writes and becomes the one line (exit 2); anything else is a bug
    and is re-raised with its traceback. Call it from an ``except`` block."""
    err = user_error(e)
    if err is None:
        raise e
    OutputGuard.undo()
    report(err)


def hydra_entry(config_name: str) -> Callable[[TaskFunction], Callable[[], Any]]:
    """``@hydra.main`` on ``rws/conf/<config_name>.yaml`` with the error rule (module docstring)."""
    import hydra

    from rws.config import CONF_DIR

    def decorate(task: TaskFunction) -> Callable[[], Any]:
        @functools.wraps(task)
        def guarded(cfg: Any) -> Any:
            return run_task(task, cfg)

        app = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(guarded)

        @functools.wraps(task)
        def main(*args: Any, **kwargs: Any) -> Any:
            if args or kwargs:  # called with a config (tests, other code): the plain task
                return task(*args, **kwargs)
            # Hydra prints composition errors itself and exits 1 unless HYDRA_FULL_ERROR is set,
            # which makes it re-raise them here instead.
            old = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return app()
            except Exception as e:
                _report_user_error_or_reraise(e)
            finally:
                if old is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = old

        main.task = task  # type: ignore[attr-defined]
        return main

    return decorate


__all__ = ["OutputGuard", "UserError", "hydra_entry", "one_line", "report", "run_task"]


def script_entry(main: Callable[[], Any]) -> Any:
    """The error rule for the argparse drivers (``python -m rws.pipelines.<study>``): a UserError
    becomes the one line and exit status 2; anything else keeps its traceback."""
    try:
        return main()
    except UserError as e:
        report(e)
