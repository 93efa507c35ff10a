"""What evaluate.py does, as a function of its config (so tests and other stages can call it):
model specs x suites on the test stream, through the engine, then the summary."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

import rws.specs as specs_mod
from rws.evaluation.engine import Engine, ModelJob, PlannedCell, plan_cells
from rws.evaluation.results import cell_key, read_results
from rws.evaluation.shards import parse_shard
from rws.evaluation.sources import CorruptFn, TestStream
from rws.evaluation.suites import make_suite
from rws.evaluation.summary import format_table, summarize
from rws.utils.config import config_dict, to_plain
from rws.utils.provenance import provenance


def collect_specs(cfg: DictConfig) -> list[dict[str, Any]]:
    """Specs from ``models`` (export dirs) and ``specs`` (dicts or spec-file paths), deduplicated."""
    out: list[dict[str, Any]] = []
    models = to_plain(cfg.get("models")) or []
    specs = to_plain(cfg.get("specs")) or []
    if isinstance(models, str):
        models = [models]
    if isinstance(specs, (str, dict)):
        specs = [specs]
    for item in [*models, *specs]:
        out.append(specs_mod.load_spec(item))
    seen: set[str] = set()
    unique = []
    for s in out:
        sid = specs_mod.spec_id(s)
        if sid not in seen:
            seen.add(sid)
            unique.append(s)
    if not unique:
        raise ValueError("nothing to evaluate: pass models=[EXPORT_DIR,...] and/or specs=[{kind: ...}] "
                         "or specs=PATH.yaml")
    return unique


def collect_suites(cfg: DictConfig) -> list[dict[str, Any]]:
    """Inline ``suites`` (list of names or dicts) wins over the ``suite`` config group."""
    inline = to_plain(cfg.get("suites"))
    if inline:
        raw = [{"name": s} if isinstance(s, str) else dict(s) for s in inline]
    else:
        group = to_plain(cfg.get("suite")) or {}
        raw = [{"name": key, **(v or {})} if "name" not in (v or {}) else dict(v) for key, v in group.items()]
    if not raw:
        raise ValueError("no suites: pass suite=[clean,corruptions] or suites='[{name: clean}]'")
    cap = cfg.get("test_subset")
    out = []
    for s in raw:
        s.setdefault("seed", int(cfg.get("seed", 0)))
        # test_subset caps every suite (a quick CPU run), a suite's own n can only lower it.
        ns = [int(v) for v in (s.get("n"), cap) if v not in (None, "", "all")]
        s["n"] = min(ns) if ns else None
        out.append(s)
    return out


def draw_test_subset(dm: Any, cap: Any) -> None:
    """``test_subset=N`` as a seeded random draw of N test images (``data.test_subset``), not the first
    N: an image-folder test split is sorted by class, so the first 2,000 CIFAR-10 images are two
    classes. Only for a datamodule that draws nothing itself and has not built its test split yet;
    the draw is part of the data identity, so results of the old first-N runs are not resumed."""
    if cap in (None, "", "all") or not hasattr(dm, "test_subset") or "test" in getattr(dm, "_sets", {}):
        return
    if dm.test_subset is None and getattr(dm, "test_per_class", None) is None:
        dm.test_subset = int(cap)


def plan(suites: list[dict[str, Any]], datamodule: Any, corrupt_fn: CorruptFn | None = None) -> list[PlannedCell]:
    """Every cell of every suite, each on the test stream capped at the suite's ``n``."""
    cells: list[PlannedCell] = []
    for options in suites:
        cells += plan_cells(make_suite(options, corrupt_fn=corrupt_fn), TestStream(datamodule, options.get("n")))
    return cells


def evaluate(cfg: DictConfig, build_fn: Callable[..., Any] | None = None,
             corrupt_fn: CorruptFn | None = None, datamodule: Any = None) -> dict[str, Any]:
    """Evaluate every spec (this shard's share with ``shard=i/n``) on every suite; append rows to
    cfg.out and write summary.json from the rows of this plan there (every spec x every planned cell,
    other shards' rows included; rows of other settings, e.g. another ``test_subset``, severities or
    threats, stay in the files but are not summarized). ``build_fn``/``corrupt_fn``/``datamodule``
    replace the real ones (tests)."""
    from hydra.utils import instantiate

    out = Path(str(cfg.out))
    shard = parse_shard(cfg.get("shard"))
    specs = collect_specs(cfg)
    mine = shard.select(specs) if shard else specs
    suites = collect_suites(cfg)

    dm = datamodule if datamodule is not None else instantiate(cfg.data)
    draw_test_subset(dm, cfg.get("test_subset"))
    if hasattr(dm, "prepare_data"):
        dm.prepare_data()
    dm.setup()

    cells = plan(suites, dm, corrupt_fn)
    with Engine(out, device=cfg.get("device", "auto"), shard=shard, resume=cfg.get("resume", True),
                progress=cfg.get("progress", True)) as engine:
        context = specs_mod.BuildContext(device=engine.device, data=dm)  # one cache for every spec
        jobs = [ModelJob(specs_mod.spec_id(s), specs_mod.to_json(s), specs_mod.spec_name(s),
                         functools.partial(build_spec, s, engine.device, dm, build_fn, context)) for s in mine]
        engine.run(jobs, cells, desc=f"eval{f' shard {shard}' if shard else ''}")
        # Every spec's missing cells (other shards' too): the summary says whether it is complete.
        all_jobs = [ModelJob(specs_mod.spec_id(s), "", "", lambda: None) for s in specs]
        missing = sum(len(c) for _j, c in engine.todo(all_jobs, cells))

        # The rows of this plan only: a cell measured earlier with other settings (another
        # test_subset, severity list, threat list, ...) must not enter this run's numbers.
        planned = {p.row_key(specs_mod.spec_id(s)) for s in specs for p in cells}
        rows = [r for r in engine.rows() if cell_key(r) in planned]
        baseline_rows = read_results(cfg.baseline_results) if cfg.get("baseline_results") else None
        per_model = summarize(rows, baseline_rows, cfg.get("baseline_model"))
        # In the order the specs were given (rows arrive shard by shard): tables keep this order.
        rank = {specs_mod.spec_id(s): i for i, s in enumerate(specs)}
        per_model = {sid: per_model[sid] for sid in sorted(per_model, key=lambda k: rank.get(k, len(rank)))}
        summary = {"models": per_model,
                   "mce_normalization": (f"baseline {cfg.get('baseline_model') or ''} from {cfg.baseline_results}"
                                         if baseline_rows else "none (mCE_unnormalized = 1 - RA)"),
                   "complete": missing == 0, "missing_cells": missing,
                   "config": config_dict(cfg), **provenance()}
        engine.writer.write_summary(summary)
    if cfg.get("print_table", True):
        print(format_table(per_model))
        if missing:
            print(f"{missing} cells of this plan are not in {out} yet (other shards still running?)")
        print(f"results: {engine.writer.jsonl}")
    from rws.evaluation.wandb_log import log_results

    log_results(cfg, rows, out, job_type="evaluate", models=per_model, config=summary["config"])
    return summary


def build_spec(spec: dict[str, Any], device: Any, dm: Any, build_fn: Callable[..., Any] | None = None,
               context: specs_mod.BuildContext | None = None) -> Any:
    """The spec's model on ``device``. The datamodule being evaluated is the default data of the
    spec's calibration sources (a ``bn: recalibrate`` soup or patch)."""
    context = context or specs_mod.BuildContext(device=device, data=dm)
    return (build_fn or specs_mod.build)(spec, device=device, context=context)
