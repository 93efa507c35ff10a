"""What evaluate.py does, as a function of its config (so tests and other stages can call it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from rws.evaluation.results import ResultsWriter, level_str, now, read_results
from rws.evaluation.suites import Cell, CorruptFn, resolve_device, run_cell, suite_cells
from rws.evaluation.summary import format_table, summarize
from rws.utils.provenance import git_commit, provenance
from rws.weights import specs as specs_mod


def _plain(v: Any) -> Any:
    return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v


def collect_specs(cfg: DictConfig) -> list[dict[str, Any]]:
    """Specs from ``models`` (export dirs) and ``specs`` (dicts or spec-file paths), deduplicated."""
    out: list[dict[str, Any]] = []
    models = _plain(cfg.get("models")) or []
    specs = _plain(cfg.get("specs")) or []
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
    inline = _plain(cfg.get("suites"))
    if inline:
        raw = [{"name": s} if isinstance(s, str) else dict(s) for s in inline]
    else:
        group = _plain(cfg.get("suite")) or {}
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


def _skipper(spec_id: str, existing: set[tuple[str, str, str, str]]) -> Callable[[Cell], bool]:
    adv_done = any(k[0] == spec_id and k[1] == "adversarial" for k in existing)

    def skip(cell: Cell) -> bool:
        if cell.suite == "adversarial":
            return adv_done
        return (spec_id, cell.suite, cell.condition, level_str(cell.level)) in existing
    return skip


def _config_dict(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # interpolations that need a running Hydra app (e.g. logger save_dir)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def evaluate(cfg: DictConfig, build_fn: Callable[..., Any] | None = None,
             corrupt_fn: CorruptFn | None = None, datamodule: Any = None) -> dict[str, Any]:
    """Evaluate every spec on every suite; write results.jsonl/.csv and summary.json into cfg.out.
    ``build_fn``/``corrupt_fn``/``datamodule`` replace the real ones (tests)."""
    from hydra.utils import instantiate
    from tqdm import tqdm

    out = Path(str(cfg.out))
    specs = collect_specs(cfg)
    suites = collect_suites(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    build_fn = build_fn or specs_mod.build

    dm = datamodule if datamodule is not None else instantiate(cfg.data)
    if hasattr(dm, "prepare_data"):
        dm.prepare_data()
    dm.setup()

    git = git_commit()
    plan = [(s, suite, cell) for s in specs for suite in suites for cell in suite_cells(suite)]
    with ResultsWriter(out) as writer:
        existing = writer.existing_keys() if cfg.get("resume", True) else set()
        bar = tqdm(total=len(plan), desc="eval", unit="cell", file=sys.stderr,
                   disable=not cfg.get("progress", True))
        for spec in specs:
            sid = specs_mod.spec_id(spec)
            name = specs_mod.spec_name(spec)
            spec_json = specs_mod.to_json(spec)
            skip = _skipper(sid, existing)
            model = None
            for _s, suite, cell in (p for p in plan if p[0] is spec):
                bar.set_postfix_str(f"{name} {cell.condition} {cell.level}".strip())
                if skip(cell):
                    bar.update(1)
                    continue
                if model is None:  # built only when a cell needs it, so a finished model costs nothing on resume
                    model = _build(build_fn, spec, device, dm)
                rows = run_cell(model, cell, dm, suite, device, corrupt_fn)
                stamp = now()
                writer.write({"spec_id": sid, "spec": spec_json, "model": name, **r, "seed": suite["seed"],
                              "git": git, "timestamp": stamp} for r in rows)
                bar.update(1)
            del model
        bar.close()

        rows = writer.rows()
        baseline_rows = read_results(cfg.baseline_results) if cfg.get("baseline_results") else None
        per_model = summarize(rows, baseline_rows, cfg.get("baseline_model"))
        summary = {"models": per_model,
                   "mce_normalization": (f"baseline {cfg.get('baseline_model') or ''} from {cfg.baseline_results}"
                                         if baseline_rows else "none (mCE_unnormalized = 1 - RA)"),
                   "config": _config_dict(cfg), **provenance()}
        writer.write_summary(summary)
    if cfg.get("print_table", True):
        print(format_table(per_model))
        print(f"results: {out / 'results.jsonl'}")
    _log_wandb(cfg, rows, summary, out)
    return summary


def _build(build_fn: Callable[..., Any], spec: dict[str, Any], device: Any, dm: Any) -> Any:
    if spec.get("kind") == "soup" and spec.get("bn") == "recalibrate" and hasattr(dm, "calibration_batches"):
        n_batches = int(spec.get("calibration_batches", 20))
        calib = dm.calibration_batches(n_batches, getattr(dm, "batch_size", 128))
        return build_fn(spec, device=device, calibration=calib)
    return build_fn(spec, device=device)


def _log_wandb(cfg: DictConfig, rows: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> None:
    """One wandb run with the result rows as a table, when logger=wandb is selected."""
    lcfg = cfg.get("logger") or {}
    if "wandb" not in lcfg:
        return
    import wandb

    w = lcfg.wandb

    def sel(key: str, default: Any = None) -> Any:
        try:
            v = OmegaConf.select(w, key, default=default)
            return _plain(v)
        except Exception:  # e.g. an interpolation that needs the Hydra runtime
            return default

    mode = os.environ.get("WANDB_MODE") or ("offline" if sel("offline", False) else None)
    run = wandb.init(project=sel("project", "rws"), entity=sel("entity"), name=sel("name"), group=sel("group"),
                     tags=sel("tags") or None, job_type="evaluate", dir=str(out), mode=mode,
                     config=summary["config"])
    try:
        cols = ["spec_id", "model", "suite", "condition", "level", "metric", "value", "n", "seed"]
        run.log({"results": wandb.Table(columns=cols, data=[[json.dumps(r.get(c)) if c == "level" else r.get(c)
                                                             for c in cols] for r in rows])})
        for sid, s in summary["models"].items():
            run.summary[f"{s.get('model')}/{sid}"] = {k: v for k, v in s.items()
                                                      if isinstance(v, (int, float)) and v is not None}
    finally:
        wandb.finish()
