"""The sweep driver: specs from a generator x targets, measured by the evaluation engine on one fixed
random test subset, then the selection step (best per target, best average, few-shot study) and
figures, all from the result files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

import rws.specs as specs_mod
from rws.evaluation.correctness import CorrectnessStore
from rws.evaluation.engine import Engine, ModelJob, PlannedCell, plan_cells
from rws.evaluation.results import read_results
from rws.evaluation.selection import (TargetCells, base_image_groups, best_specs, correctness_matrix, few_shot_study,
                                      markdown_table, target_scores)
from rws.evaluation.shards import parse_shard
from rws.evaluation.sources import CorruptFn, FixedSubset, data_identity, load_test_subset
from rws.evaluation.summary import summarize
from rws.stages.sweep.generators import AdapterBetaGrid, SoupGrid, SpecGenerator, SpecList
from rws.stages.sweep.targets import Target, parse_targets
from rws.utils.config import to_plain
from rws.utils.io import save_safetensors, write_json, write_text

SWEEP_JSON = "sweep.json"


def make_generator(cfg: Mapping[str, Any], datamodule: Any = None) -> SpecGenerator:
    """``members`` -> a soup grid (``grid``, ``bn``); ``adapter.base`` -> a beta grid of one adapter
    export (``adapter.betas`` or ``adapter.plane``); else ``specs`` -> a spec list."""
    adapter = cfg.get("adapter") or {}
    if adapter.get("base"):
        if cfg.get("members") or cfg.get("specs"):
            raise ValueError("sweep: give one of members=[...] (soups), specs=[...] or adapter.base=<export> (a beta grid)")
        return AdapterBetaGrid(adapter["base"], adapter.get("betas"), adapter.get("plane"))
    if cfg.get("members"):
        calibration = None
        if datamodule is not None and hasattr(datamodule, "calibration_batches"):
            n, bs = int(cfg.get("calibration_batches", 8)), int(cfg.get("batch_size", 256))
            calibration = lambda: datamodule.calibration_batches(n, bs)  # noqa: E731
        return SoupGrid(cfg["members"], cfg.get("grid") or {}, cfg.get("member_names"), bn=cfg.get("bn", "combine"),
                        calibration=calibration)
    from rws.evaluation.pipeline import build_spec

    context = specs_mod.BuildContext(data=datamodule)  # one cache for every spec
    return SpecList(cfg.get("specs") or [], lambda spec, device: build_spec(spec, device, datamodule, context=context))


def _subset(cfg: Mapping[str, Any], targets: list[Target], datamodule: Any, x: torch.Tensor | None,
            y: torch.Tensor | None, device: torch.device) -> FixedSubset:
    seed, pool = int(cfg.get("seed", 0)), int(cfg.get("pool", 10000))
    if x is None:
        if datamodule is None:
            raise ValueError("run_sweep needs a datamodule or tensors x, y")
        x, y = load_test_subset(datamodule, max(t.k for t in targets), seed, pool)
        data = data_identity(datamodule)
    else:
        data = {"name": "tensors", "n": len(y)}
    table = getattr(datamodule, "corruption_table", None) or cfg.get("corruption_table", "cifar")
    return FixedSubset(x.to(device), y.to(device), seed=seed, pool=pool, data=data, corruption_table=table,
                       batch_size=int(cfg.get("batch_size", 256)))


def plan_targets(targets: list[Target], subset: FixedSubset, corrupt_fn: CorruptFn | None = None
                 ) -> tuple[list[PlannedCell], list[TargetCells]]:
    """The engine plan (cells shared by several targets appear once) and each target's cells."""
    from rws.evaluation.suites import make_suite

    plan: list[PlannedCell] = []
    seen: set[tuple[Any, str]] = set()
    selections = []
    for t in targets:
        suite = make_suite(t.options, corrupt_fn=corrupt_fn)
        source = subset.prefix(t.k)
        cells = plan_cells(suite, source, only=t.cells(suite, source))
        for p in cells:
            if (p.cell, p.key) not in seen:
                seen.add((p.cell, p.key))
                plan.append(p)
        selections.append(TargetCells(t.name, tuple((p.cell.suite, p.cell.condition, p.cell.level, p.key)
                                                    for p in cells)))
    return plan, selections


def run_sweep(cfg: Mapping[str, Any], datamodule: Any = None, x: torch.Tensor | None = None,
              y: torch.Tensor | None = None, figures: bool = True, log: Callable[[str], None] = print,
              corrupt_fn: CorruptFn | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep into cfg["out"]: either ``datamodule`` (instantiated from cfg.data) or
    tensors ``x, y``. With ``shard=i/n`` only this shard's specs are measured; the selection step runs
    once every spec has every target (returns {} before that)."""
    raw = cfg
    cfg = _plain_settings(cfg)
    out = Path(cfg["out"])
    shard = parse_shard(cfg.get("shard"))
    device = torch.device(cfg.get("device", "cpu"))
    generator = make_generator(cfg, datamodule)
    seed = int(cfg.get("seed", 0))
    targets = parse_targets(cfg["targets"], default_k=int(cfg.get("k", 100)),
                            suite_defaults={"seed": seed, "n_iter": int(cfg.get("attack_steps", 40)),
                                            "attacks": list(cfg.get("attacks") or ("apgd-ce", "apgd-t"))})
    subset = _subset(cfg, targets, datamodule, x, y, device)
    plan, selections = plan_targets(targets, subset, corrupt_fn)

    specs = generator.specs()
    generator.check(device)  # a bad member fails here, before sweep.json
    sids = [specs_mod.spec_id(s) for s in specs]
    labels, extras = generator.labels(), generator.extras()
    write_json(out / SWEEP_JSON, {"generator": generator.describe(), "noun": generator.noun, "spec_ids": sids,
                                  "labels": labels, "extras": extras, "references": generator.references(),
                                  "targets": [{**s.to_json(), "k": t.k, "suite": t.options}
                                              for t, s in zip(targets, selections)]})
    jobs = [ModelJob(sid, specs_mod.to_json(spec), label, (lambda i=i: generator.model(i, device)), extra)
            for i, (sid, spec, label, extra) in enumerate(zip(sids, specs, labels, extras))]
    mine = shard.select(jobs) if shard else jobs
    log(f"[sweep] {len(specs)} {generator.noun}s x {len(targets)} targets ({len(plan)} cells per {generator.noun})"
        f"{f'; shard {shard}: {len(mine)} {generator.noun}s' if shard else ''} -> {out}")
    with Engine(out, device=device, shard=shard, progress=bool(cfg.get("progress", True)), log=log) as engine:
        engine.run(mine, plan, desc="sweep")
        missing = sum(len(c) for _j, c in engine.todo(jobs, plan))
    if missing:
        log(f"[sweep] {missing} cells of other shards are not in {out} yet; the selection runs when they are "
            f"(or rerun without shard= into the same out)")
        return {}
    best = summarize_sweep(out, figures=figures, log=log)
    _log_wandb(raw, out)
    return best


def _plain_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain Python, resolved, except ``logger`` (its interpolations may need the Hydra
    runtime; only the wandb helper reads it)."""
    return to_plain({k: cfg[k] for k in cfg if k != "logger"})


def _log_wandb(cfg: Mapping[str, Any], out: Path) -> None:
    """One wandb run (job_type sweep) with the rows, the summary, best.json and the figures."""
    from omegaconf import DictConfig, OmegaConf

    from rws.evaluation.wandb_log import log_results, wandb_enabled
    from rws.utils.config import config_dict

    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    if not wandb_enabled(cfg):
        return
    summary = json.loads((out / "summary.json").read_text())
    log_results(cfg, read_results(out), out, job_type="sweep", models=summary["models"],
                extra_summary={"best": summary["best"]}, figures=sorted((out / "figures").glob("*.png")),
                config=config_dict(cfg))


def summarize_sweep(out: str | os.PathLike, figures: bool = True, few_shot_trials: int = 50,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """best.json, best.md, summary.json, correctness.safetensors, few_shot.json and figures/ of a
    sweep directory, from its files only (every shard's rows)."""
    out = Path(out)
    meta = json.loads((out / SWEEP_JSON).read_text())
    sids, labels, extras = meta["spec_ids"], meta["labels"], meta["extras"]
    targets = [TargetCells.from_json(t) for t in meta["targets"]]
    names = [t.name for t in targets]
    rows = read_results(out)
    scores = target_scores(rows, sids, targets)
    best = best_specs(scores, sids, names, extras)
    gen = meta["generator"]
    if "member_names" in gen:
        best["member_names"] = gen["member_names"]
    write_json(out / "best.json", best)
    write_text(out / "best.md", markdown_table(best, scores, sids, labels, [tuple(r) for r in meta["references"]],
                                               noun=meta.get("noun", "spec")))
    in_sweep = set(sids)  # rows of specs from an earlier grid into the same out are left out
    per_model = summarize([r for r in rows if r.get("spec_id") in in_sweep])
    write_json(out / "summary.json", {"models": per_model, "best": best})

    # One (S, N) matrix per target, in sweep order: the input of any post-hoc selection study.
    store = CorrectnessStore(out)
    mats = {t.name: m for t in targets if (m := correctness_matrix(store, sids, t)) is not None}
    if mats:
        # A multi-condition target's columns are its cells x the same k images: the few-shot study
        # splits by base image (base_image_groups), so no image is in both the selection and held-out set.
        n_cells = {t.name: len(t.cells) for t in targets if t.name in mats}
        save_safetensors(mats, out / "correctness.safetensors",
                         metadata={"spec_ids": json.dumps(sids), "n_cells": json.dumps(n_cells)})
        few_shot = {t: few_shot_study(m, trials=few_shot_trials, groups=base_image_groups(m.shape[1], n_cells[t]))
                    for t, m in mats.items()}
        write_json(out / "few_shot.json", few_shot)
        if figures and any(res["k"] for res in few_shot.values()):
            from rws.report.soup_figures import plot_few_shot

            (out / "figures").mkdir(parents=True, exist_ok=True)
            plot_few_shot({t: r for t, r in few_shot.items() if r["k"]}, out / "figures" / "few_shot.png")
    if figures and "weights" in (extras[0] if extras else {}):
        from rws.report.soup_figures import make_figures

        robust = [j for j, t in enumerate(targets) if all(c[0] == "adversarial" for c in t.cells)]
        make_figures(out / "figures", torch.tensor([e["weights"] for e in extras], dtype=torch.float64), scores,
                     names, gen.get("member_names") or [], scatter_pair=tuple(robust[:2]) if len(robust) >= 2 else None)
    if figures and gen.get("kind") == "adapter_beta_grid":
        _adapter_figures(out, gen)
    log(f"[sweep] best average {meta.get('noun', 'spec')} {labels[sids.index(best['single']['spec_id'])]} "
        f"({best['single']['average']:.4f}); wrote {out / 'best.json'}, {out / 'best.md'}")
    return best


def _adapter_figures(out: Path, gen: Mapping[str, Any]) -> dict[str, Any]:
    """A beta grid's figures from its result files: accuracy against beta (``figures/beta_curves.png``)
    or, for a plane, the clean / robust / normalized-mean heatmaps (``figures/token_plane.png``; needs
    a clean and a robust target). Returns the plotted data ({} when there is nothing to plot)."""
    from rws.report import adapter_figures as figs
    from rws.report.adapter_tables import sweep_table

    entries = sweep_table(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if list(gen["axes"]) == ["beta"]:
        if not any(e[k] is not None for e in entries for k in ("clean", "robust", "corruption_mean")):
            return {}
        return figs.beta_curves(entries, out / "figures" / "beta_curves.png")
    if any(e["clean"] is None or e["robust"] is None for e in entries):
        return {}
    return figs.token_plane([tuple(p) for p in gen["points"]], [e["clean"] for e in entries],
                            [e["robust"] for e in entries], out / "figures" / "token_plane.png")
