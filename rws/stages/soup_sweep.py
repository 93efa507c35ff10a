"""The soup grid search behind sweep.py.

For every soup of the grid and every target (clean, a corruption suite, an l_p threat, the union of
threats) it measures accuracy on the target's first k examples of one fixed random subset of the test
split, writes long-format rows to ``<out>/results.jsonl`` and the per-example correctness to
``<out>/correct/<target>/<spec_id>.safetensors``. Finished (spec_id, target) cells are skipped on re-run.
At the end it writes best.json / best.md (single soup vs dataset-specific soups), few_shot.json (the
paper's Fig. 8 study, computed from stored correctness) and figures/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from rws.evaluation.results import ResultsWriter, read_jsonl
from rws.utils.io import load_safetensors, save_safetensors, write_json, write_text
from rws.utils.provenance import git_commit
from rws.weights.functional_soup import InPlaceSoup, predict
from rws.weights.grid import enumerate_weights
from rws.weights.soups import soup_spec
from rws.weights.specs import spec_id

SUITES = ("clean", "corruption", "adversarial", "union")
FEW_SHOT_KS = (10, 30, 100, 300, 500)


@dataclass(frozen=True)
class Threat:
    norm: str
    eps: float

    @property
    def key(self) -> str:
        return f"{self.norm}:{self.eps:g}"


@dataclass
class Target:
    name: str
    suite: str
    k: int
    conditions: list[tuple[str, Any]] = field(default_factory=list)  # (condition, level) rows
    threats: list[Threat] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return "robust_accuracy" if self.suite in ("adversarial", "union") else "accuracy"


def _norm_name(norm: Any) -> str:
    s = str(norm).lower().replace("ℓ", "l")
    return {"inf": "linf", "linf": "linf", "l_inf": "linf", "2": "l2", "l2": "l2", "1": "l1", "l1": "l1"}.get(s, s)


def _threats(t: Mapping[str, Any]) -> list[Threat]:
    raw = t.get("threats") or ([t["threat"]] if t.get("threat") else [])
    out = []
    for th in raw:
        eps = th["eps"]
        # "8/255" style strings are common in configs.
        eps = float(Fraction(eps)) if isinstance(eps, str) else float(eps)
        out.append(Threat(_norm_name(th["norm"]), eps))
    return out


def parse_targets(targets: Sequence[Mapping[str, Any]], default_k: int = 100) -> list[Target]:
    out: list[Target] = []
    for t in targets:
        suite = t.get("suite", "clean")
        if suite not in SUITES:
            raise ValueError(f"target {t.get('name')!r}: suite must be one of {SUITES}, got {suite!r}")
        k = int(t.get("k", default_k))
        name = t.get("name") or suite
        tgt = Target(name=name, suite=suite, k=k)
        if suite == "clean":
            tgt.conditions = [("clean", "")]
        elif suite == "corruption":
            from rws.corruptions import resolve_corruptions

            names = resolve_corruptions(t.get("corruption", "all"))
            sev = t.get("severity", [1, 2, 3, 4, 5])
            sevs = [int(s) for s in (sev if isinstance(sev, (list, tuple)) else [sev])]
            tgt.conditions = [(c, s) for c in names for s in sevs]
        else:
            tgt.threats = _threats(t)
            if not tgt.threats:
                raise ValueError(f"target {name!r} ({suite}) needs threat: {{norm, eps}} or threats: [...]")
            if suite == "adversarial":
                tgt.conditions = [(th.norm, th.eps) for th in tgt.threats]
            else:
                tgt.conditions = [("union", "")]
        out.append(tgt)
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"target names must be unique, repeated: {dup}")
    return out


# ------------------------------------------------------------------------------------------ evaluation

class TargetEvaluator:
    """Per-example correctness of a model on each target. Corrupted inputs do not depend on the soup,
    so they are generated once; attacks do, so they are cached per soup only (``new_soup``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, corruption_table: str = "cifar", seed: int = 0,
                 attack_steps: int = 40, attacks: Sequence[str] = ("apgd-ce", "apgd-t"), batch_size: int = 256) -> None:
        self.x, self.y = x, y
        self.table, self.seed = corruption_table, seed
        self.attack_steps, self.attacks, self.batch_size = attack_steps, tuple(attacks), batch_size
        self._corrupted: dict[tuple[str, int, int], torch.Tensor] = {}
        self._robust: dict[tuple[str, int], torch.Tensor] = {}

    def new_soup(self) -> None:
        self._robust.clear()

    def _correct(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (predict(model, x, self.batch_size).argmax(1) == y).cpu()

    def _corrupt(self, name: str, severity: int, k: int) -> torch.Tensor:
        key = (name, severity, k)
        if key not in self._corrupted:
            from rws.corruptions import corrupt

            # One generator per condition, so adding a target does not change another's images.
            digest = hashlib.sha256(f"{name}:{severity}".encode()).hexdigest()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(digest[:8], 16))
            self._corrupted[key] = corrupt(self.x[:k], name, severity, table=self.table, generator=g)
        return self._corrupted[key]

    def _robust_correct(self, model: torch.nn.Module, th: Threat, k: int) -> torch.Tensor:
        key = (th.key, k)
        if key not in self._robust:
            from rws.attacks import ThreatModel, robust_correct

            self._robust[key] = robust_correct(model, self.x[:k], self.y[:k], ThreatModel(th.norm, th.eps),
                                               attacks=self.attacks, n_iter=self.attack_steps,
                                               seed=self.seed).cpu().bool()
        return self._robust[key]

    def __call__(self, model: torch.nn.Module, target: Target) -> list[torch.Tensor]:
        """One bool tensor (k,) per condition of the target, in ``target.conditions`` order."""
        k = min(target.k, len(self.y))
        y = self.y[:k]
        if target.suite == "clean":
            return [self._correct(model, self.x[:k], y)]
        if target.suite == "corruption":
            return [self._correct(model, self._corrupt(c, int(s), k), y) for c, s in target.conditions]
        per_threat = [self._robust_correct(model, th, k) for th in target.threats]
        if target.suite == "adversarial":
            return per_threat
        union = per_threat[0].clone()
        for c in per_threat[1:]:
            union &= c
        return [union]


# --------------------------------------------------------------------------------------- results store

class SweepStore:
    """results.jsonl (append-only long-format rows) and the per-example correctness files.

    Rows follow the rws.evaluation row contract, plus ``target`` (the cell key for resuming) and
    ``weights``. A cell's rows are appended in one write after its correctness file is in place,
    so a crash leaves either a whole cell or none (a torn last line is ignored on reading).
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.results = self.out / "results.jsonl"
        self.correct_dir = self.out / "correct"
        self.out.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.results) if self.results.is_file() else []

    def correct_path(self, sid: str, target: str) -> Path:
        return self.correct_dir / target / f"{sid}.safetensors"

    def done_cells(self) -> set[tuple[str, str]]:
        return {(r["spec_id"], r["target"]) for r in self.rows()
                if "target" in r and self.correct_path(r["spec_id"], r["target"]).is_file()}

    def write_cell(self, sid: str, spec: Mapping[str, Any], weights: Sequence[float], target: Target,
                   correct: list[torch.Tensor], seed: int) -> float:
        flat = torch.cat(correct)
        save_safetensors({"correct": flat.to(torch.uint8)}, self.correct_path(sid, target.name),
                         metadata={"conditions": json.dumps(target.conditions, default=str)})
        import datetime as _dt

        common = {"spec_id": sid, "spec": json.dumps(spec, sort_keys=True), "model": "soup",
                  "target": target.name, "weights": list(weights), "seed": seed, "git": git_commit(),
                  "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        rows = [{**common, "suite": target.suite, "condition": c, "level": lvl, "metric": target.metric,
                 "value": float(v.double().mean()), "n": int(v.numel())}
                for (c, lvl), v in zip(target.conditions, correct)]
        score = float(flat.double().mean())
        if len(correct) > 1:
            rows.append({**common, "suite": target.suite, "condition": "mean", "level": "",
                         "metric": target.metric, "value": score, "n": int(flat.numel())})
        self._writer().write(rows)
        return score

    def _writer(self) -> Any:
        if getattr(self, "_w", None) is None:
            self._w = ResultsWriter(self.out)
        return self._w

    def load_correct(self, sid: str, target: str) -> torch.Tensor:
        return load_safetensors(self.correct_path(sid, target))[0]["correct"].bool()

    def close(self) -> None:
        """Close the writer (ResultsWriter then rewrites results.csv)."""
        if getattr(self, "_w", None) is not None:
            self._w.close()
            self._w = None


# ---------------------------------------------------------------------------------- selection / study

def scores_from_rows(rows: Iterable[Mapping[str, Any]], sids: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    """(S, T) matrix of target scores (the 'mean' row for multi-condition targets); NaN when missing."""
    idx = {s: i for i, s in enumerate(sids)}
    tidx = {t: j for j, t in enumerate(targets)}
    out = torch.full((len(sids), len(targets)), float("nan"), dtype=torch.float64)
    multi: set[tuple[str, str]] = {(r["spec_id"], r["target"]) for r in rows if r.get("condition") == "mean"}
    for r in rows:
        s, t = r.get("spec_id"), r.get("target")
        if s not in idx or t not in tidx:
            continue
        if (s, t) in multi and r.get("condition") != "mean":
            continue
        out[idx[s], tidx[t]] = float(r["value"])
    return out


def best_soups(scores: torch.Tensor, weights: Sequence[Sequence[float]], sids: Sequence[str],
               targets: Sequence[str]) -> dict[str, Any]:
    """Per-target argmax ("dataset-specific soups") and the best average ("single soup"), as in Table 1.
    Ties go to the first soup in grid order."""
    def entry(i: int) -> dict[str, Any]:
        return {"spec_id": sids[i], "weights": [float(w) for w in weights[i]],
                "scores": {t: float(scores[i, j]) for j, t in enumerate(targets)}}

    per_target = {}
    for j, t in enumerate(targets):
        col = torch.nan_to_num(scores[:, j], nan=-math.inf)
        i = int(col.argmax())
        per_target[t] = {**entry(i), "score": float(scores[i, j])}
    avg = torch.nan_to_num(scores.mean(1), nan=-math.inf)
    i = int(avg.argmax())
    return {"targets": list(targets), "per_target": per_target,
            "single": {**entry(i), "average": float(scores[i].mean())}}


def markdown_table(best: Mapping[str, Any], members: Sequence[str], scores: torch.Tensor,
                   weights: Sequence[Sequence[float]]) -> str:
    """Table-1 style: rows = each member alone (when in the grid), single soup, dataset-specific soups."""
    targets = best["targets"]
    fmt = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"
    lines = ["| model | " + " | ".join(targets) + " | avg |", "|---" * (len(targets) + 2) + "|"]
    for m, name in enumerate(members):
        onehot = [i for i, w in enumerate(weights) if all(float(v) == (1.0 if j == m else 0.0) for j, v in enumerate(w))]
        if onehot:
            row = scores[onehot[0]]
            lines.append(f"| {name} | " + " | ".join(fmt(float(v)) for v in row) + f" | {fmt(float(row.mean()))} |")
    single = best["single"]
    lines.append("| single soup " + str([round(w, 3) for w in single["weights"]]) + " | "
                 + " | ".join(fmt(single["scores"][t]) for t in targets) + f" | {fmt(single['average'])} |")
    spec = [best["per_target"][t]["score"] for t in targets]
    lines.append("| dataset-specific soups | " + " | ".join(fmt(v) for v in spec)
                 + f" | {fmt(sum(spec) / len(spec))} |")
    lines.append("")
    for t in targets:
        lines.append(f"- best for {t}: weights {[round(w, 3) for w in best['per_target'][t]['weights']]}")
    return "\n".join(lines) + "\n"


def few_shot_study(correct: torch.Tensor, ks: Sequence[int] = FEW_SHOT_KS, trials: int = 50,
                   n_test: int | None = 500, seed: int = 0) -> dict[str, Any]:
    """The Fig. 8 study from a (S soups, N examples) correctness matrix, no re-evaluation.

    Each trial holds out ``n_test`` random examples (at most half of N), draws k of the rest, picks
    the soup with the best accuracy on those k (first in grid order on ties) and records its held-out
    accuracy. Returns mean/std over trials per k (ks larger than the pool are dropped), plus the oracle.
    """
    correct = correct.bool()
    s, n = correct.shape
    n_test = min(n_test or n // 2, n // 2)
    g = torch.Generator().manual_seed(seed)
    per_k: dict[int, list[float]] = {int(k): [] for k in ks if k <= n - n_test}
    oracle: list[float] = []
    for _ in range(trials):
        perm = torch.randperm(n, generator=g)
        test, pool = perm[:n_test], perm[n_test:]
        test_acc = correct[:, test].double().mean(1)
        oracle.append(float(test_acc.max()))
        for k in per_k:
            pick = pool[torch.randperm(len(pool), generator=g)[:k]]
            best = int(correct[:, pick].double().mean(1).argmax())
            per_k[k].append(float(test_acc[best]))

    def stats(v: list[float]) -> dict[str, float]:
        t = torch.tensor(v, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "trials": len(v)}

    return {"n_soups": s, "n_examples": n, "n_test": n_test,
            "k": {str(k): stats(v) for k, v in per_k.items()}, "oracle": stats(oracle)}


# ---------------------------------------------------------------------------------------------- driver

def _as_container(x: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:
        pass
    return x


def load_test_subset(datamodule: Any, k: int, seed: int, pool: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """k examples drawn at random (fixed seed) from the first ``pool`` test examples.

    Targets use nested prefixes of this subset, so scores on different k are comparable."""
    try:
        datamodule.setup("test")
    except TypeError:
        datamodule.setup()
    xs, ys, seen = [], [], 0
    for x, y in datamodule.test_dataloader():
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if seen >= pool:
            break
    x, y = torch.cat(xs)[:pool], torch.cat(ys)[:pool]
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:k]
    return x[idx].contiguous(), y[idx].contiguous()


def run_sweep(cfg: Mapping[str, Any], datamodule: Any = None, x: torch.Tensor | None = None,
              y: torch.Tensor | None = None, evaluator: Callable[[torch.nn.Module, Target], list[torch.Tensor]] | None = None,
              figures: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a sweep. Either ``datamodule`` (instantiated from cfg.data) or tensors ``x, y``."""
    from tqdm.auto import tqdm

    from rws.weights.export import load_export

    cfg = _as_container(cfg)
    out = Path(cfg["out"])
    members = [str(Path(p).resolve()) for p in cfg["members"]]
    if len(members) < 1:
        raise ValueError("sweep needs members: [export dirs]")
    from rws.weights.specs import spec_name

    # Export dirs all end in 'export': name members after their run, not the last path component.
    names = list(cfg.get("member_names") or [spec_name({"kind": "export", "path": p}) for p in members])
    device = torch.device(cfg.get("device", "cpu"))
    seed = int(cfg.get("seed", 0))
    bn = cfg.get("bn", "combine")
    grid_cfg = dict(cfg.get("grid") or {})
    affine = bool(grid_cfg.get("affine", True)) if grid_cfg.get("kind") != "front" else True
    weight_list = enumerate_weights(grid_cfg, len(members))
    targets = parse_targets(cfg["targets"], default_k=int(cfg.get("k", 100)))

    specs = [soup_spec(members, w, bn=bn, affine=affine) for w in weight_list]
    sids = [spec_id(s) for s in specs]
    store = SweepStore(out)
    done = store.done_cells()
    todo = [(i, t) for i in range(len(specs)) for t in targets if (sids[i], t.name) not in done]
    n_cells = len(specs) * len(targets)
    log(f"[sweep] {len(specs)} soups x {len(targets)} targets = {n_cells} cells; "
        f"{n_cells - len(todo)} already done, {len(todo)} to run -> {out}")
    write_json(out / "soups.json", {"members": members, "member_names": names, "bn": bn,
                                    "spec_ids": sids, "weights": [[float(v) for v in w] for w in weight_list],
                                    "weights_exact": [[str(v) for v in w] for w in weight_list],
                                    "targets": [t.__dict__ | {"threats": [th.__dict__ for th in t.threats]} for t in targets]})

    if todo:
        exports = [load_export(p) for p in members]
        # Attacks need input gradients only; frozen parameters spare a backward into the weights.
        model = exports[0].build(device).requires_grad_(False)
        soup = InPlaceSoup(model, [e.state_dict for e in exports], names=members, affine=affine)
        calib = None
        if x is None:
            if datamodule is None:
                raise ValueError("run_sweep needs a datamodule or tensors x, y")
            x, y = load_test_subset(datamodule, max(t.k for t in targets), seed, int(cfg.get("pool", 10000)))
        x, y = x.to(device), y.to(device)
        if evaluator is None:
            table = getattr(datamodule, "corruption_table", cfg.get("corruption_table", "cifar"))
            evaluator = TargetEvaluator(x, y, corruption_table=table, seed=seed,
                                        attack_steps=int(cfg.get("attack_steps", 40)),
                                        attacks=tuple(cfg.get("attacks", ("apgd-ce", "apgd-t"))),
                                        batch_size=int(cfg.get("batch_size", 256)))
        by_soup: dict[int, list[Target]] = {}
        for i, t in todo:
            by_soup.setdefault(i, []).append(t)
        bar = tqdm(total=len(todo), desc="soups", unit="cell", dynamic_ncols=True)
        try:
            for i, tgts in by_soup.items():
                if bn == "recalibrate":
                    if datamodule is None:
                        raise ValueError("bn: recalibrate needs a datamodule for calibration batches")
                    calib = datamodule.calibration_batches(int(cfg.get("calibration_batches", 8)),
                                                           int(cfg.get("batch_size", 256)))
                m = soup.set(weight_list[i], calibration=calib)
                if hasattr(evaluator, "new_soup"):
                    evaluator.new_soup()
                for t in tgts:
                    score = store.write_cell(sids[i], specs[i], [float(v) for v in weight_list[i]], t,
                                             evaluator(m, t), seed)
                    bar.set_postfix_str(f"{t.name}={score:.3f}")
                    bar.update(1)
        finally:
            bar.close()
            store.close()

    return summarize(out, figures=figures, log=log)


def summarize(out: str | os.PathLike, figures: bool = True, few_shot_trials: int = 50,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """best.json, best.md, few_shot.json, correctness.safetensors and figures/ from a sweep directory."""
    out = Path(out)
    meta = json.loads((out / "soups.json").read_text())
    store = SweepStore(out)
    sids, weights, names = meta["spec_ids"], meta["weights"], meta["member_names"]
    targets = [t["name"] for t in meta["targets"]]
    scores = scores_from_rows(store.rows(), sids, targets)
    best = best_soups(scores, weights, sids, targets)
    best["member_names"] = names
    write_json(out / "best.json", best)
    write_text(out / "best.md", markdown_table(best, names, scores, weights))

    # One (S, N) matrix per target, in grid order: the input of any post-hoc selection study.
    mats: dict[str, torch.Tensor] = {}
    for t in targets:
        rows = [store.load_correct(s, t) for s in sids if store.correct_path(s, t).is_file()]
        if len(rows) == len(sids):
            mats[t] = torch.stack(rows).to(torch.uint8)
    if mats:
        save_safetensors(mats, out / "correctness.safetensors", metadata={"spec_ids": json.dumps(sids)})
        few_shot = {t: few_shot_study(m, trials=few_shot_trials) for t, m in mats.items()}
        write_json(out / "few_shot.json", few_shot)
        if figures and any(res["k"] for res in few_shot.values()):
            from rws.report.soup_figures import plot_few_shot

            (out / "figures").mkdir(parents=True, exist_ok=True)
            plot_few_shot({t: r for t, r in few_shot.items() if r["k"]}, out / "figures" / "few_shot.png")
    if figures:
        from rws.report.soup_figures import make_figures

        robust = [j for j, t in enumerate(meta["targets"]) if t["suite"] in ("adversarial", "union")]
        make_figures(out / "figures", torch.tensor(weights, dtype=torch.float64), scores, targets, names,
                     scatter_pair=tuple(robust[:2]) if len(robust) >= 2 else None)
    log(f"[sweep] best average soup {best['single']['weights']} ({best['single']['average']:.4f}); "
        f"wrote {out / 'best.json'}, {out / 'best.md'}")
    return best
