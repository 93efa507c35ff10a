"""Robust Weight Signatures end to end at CPU scale, in one command:

    python -m rws.pipelines.rws_cpu [--out outputs/rws_cpu] [--smoke] [--corruptions a,b,...]
                                    [--skip-transfer] [--wandb] [--stages train,tiny,extract,eval,report]

Narrow VGG-16-BN (width 1/4) on the shared CIFAR-10 JPEGs (experiment=rws/cpu). Steps, each a real
CLI call with a done marker, so a re-run resumes where it stopped:
  1. train.py   θ_init from scratch (12 epochs)                                  -> init/export
  2. train.py   θ_std: clean fine-tune from θ_init (3 epochs, lr 0.02)           -> std/export
  3. train.py   θ_c per corruption (severity 5) + Data Augmentation (all mixed)   -> robust/<c>, augmented
     (tiny)     Tiny-ImageNet θ_init (scratch), θ_std, θ_gaussian_noise          -> tiny/...
  4. rws.stages.extract  shallow (k=5) at 32/16/8 bits, full (all but head) at 32 -> sigs/<variant>/
  5. evaluate.py Table-1 / Table-4 cells, α sweep, composition, transfer; the BN "recalibrate"
     variant is evaluated in this process (it needs corrupted training batches)   -> eval/results.jsonl
  6. tables (rws.report.rws_tables) and figures (rws.report.rws_figures)          -> *.md, *.json, figures/
The CIFAR-10 chain and the Tiny-ImageNet/transfer/recalibration work run as two streams; training
steps hold a lock file, so a second driver on the same --out takes the next free step.
See docs/rws_experiments.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from rws.pipelines.steps import ROOT, run_step
from rws.config import CONF_DIR

CORRUPTIONS = ["gaussian_noise", "defocus_blur", "fog", "contrast", "pixelate"]
STAGES = ("train", "tiny", "extract", "eval", "report")
# The four signature variants of Table 1: (directory name, layers.k, bits).
SIG_VARIANTS = (("shallow32", 5, 32), ("shallow16", 5, 16), ("shallow8", 5, 8), ("full32", "body", 32))


@dataclass
class Settings:
    """Every size knob of the chain; ``smoke()`` shrinks it to a minutes-long end-to-end check."""
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    init_epochs: int = 12
    ft_epochs: int = 3
    ft_lr: float = 0.02
    severities: tuple[int, ...] = (3, 5)
    alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    # 0.6: the paper's best α at severity 3 (Fig. 7); 1.0: its default
    pair_alphas: tuple[float, ...] = (0.0, 0.6, 1.0)
    calib_batches: int = 10
    data_overrides: list[str] = field(default_factory=list)
    tiny_overrides: list[str] = field(default_factory=list)
    tiny_init_epochs: int = 4
    tiny_ft_epochs: int = 1
    tiny_corruption: str = "gaussian_noise"

    @staticmethod
    def smoke(corruptions: list[str] | None = None) -> "Settings":
        return Settings(corruptions=corruptions or ["gaussian_noise", "fog"], init_epochs=1, ft_epochs=1,
                        alphas=(0.5, 1.0), pair_alphas=(0.0, 1.0), calib_batches=2,
                        data_overrides=["data.subset_per_class=20", "data.val_size=20", "data.test_subset=100",
                                        "data.batch_size=50"],
                        tiny_overrides=["data.subset_per_class=3", "data.val_size=20", "data.test_subset=50",
                                        "data.batch_size=50"],
                        tiny_init_epochs=1, tiny_ft_epochs=1)


def _export(run_dir: Path) -> Path:
    return run_dir / "export"


def _done(run_dir: Path) -> Path:
    return run_dir / "export" / "metrics.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _claim(run_dir: Path) -> bool:
    """Take a step for this process (a lock file holding our pid), so two drivers started on the same
    --out share the training steps instead of running one twice. A stale lock (dead pid) is taken over."""
    lock = _lock_path(run_dir)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _pid_alive(holder):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _wait_for(run_dir: Path, poll_s: float = 10.0) -> None:
    """Wait until a step claimed by another process is done (or its holder died: then run it here)."""
    while not _done(run_dir).exists():
        if _claim(run_dir):
            raise RuntimeError(f"the process that held {run_dir} stopped before finishing it; re-run the driver")
        time.sleep(poll_s)


def _train(title: str, out: Path, run_dir: Path, experiment: str, extra: list[str], overrides: list[str],
           logger: list[str], deferred: list[Path] | None = None) -> float:
    argv = ["train.py", f"experiment={experiment}", f"run_name={run_dir.relative_to(out).as_posix().replace('/', '_')}",
            f"hydra.run.dir={run_dir}", f"paths.output_dir={out}", "trainer.enable_progress_bar=false",
            *overrides, *extra, *logger]
    if _done(run_dir).exists():
        return run_step(title, argv, done_marker=_done(run_dir))
    if not _claim(run_dir):
        if deferred is None:  # a later step needs this one: wait for the other driver
            print(f"[wait] {title}: another driver is running it", flush=True)
            _wait_for(run_dir)
            return 0.0
        print(f"[busy] {title}: another driver is running it; continuing with the next step", flush=True)
        deferred.append(run_dir)
        return 0.0
    try:
        return run_step(title, argv, done_marker=_done(run_dir))
    finally:
        _lock_path(run_dir).unlink(missing_ok=True)


def train_cifar(out: Path, s: Settings, logger: list[str]) -> dict[str, float]:
    """θ_init, θ_std, one θ_c per corruption and the Data Augmentation model."""
    t: dict[str, float] = {}
    exp = "rws/cpu"
    ft = [f"init={_export(out / 'init')}", f"trainer.max_epochs={s.ft_epochs}", f"method.optim.lr={s.ft_lr}"]
    t["init"] = _train("1 θ_init from scratch", out, out / "init", exp,
                       [f"trainer.max_epochs={s.init_epochs}"], s.data_overrides, logger)
    t["std"] = _train("2 θ_std: clean fine-tune from θ_init", out, out / "std", exp, ft, s.data_overrides, logger)
    deferred: list[Path] = []
    for c in s.corruptions:
        t[f"robust/{c}"] = _train(f"3 θ_{c}: fine-tune from θ_init on {c} (severity 5)", out, out / "robust" / c,
                                  exp, [*ft, "method=corruption", f"method.corruptions={c}", "method.severity=5"],
                                  s.data_overrides, logger, deferred)
    t["augmented"] = _train("3 Data Augmentation: fine-tune from θ_init on all corruptions mixed", out,
                            out / "augmented", exp,
                            [*ft, "method=corruption", f"method.corruptions=[{','.join(s.corruptions)}]",
                             "method.severity=5"], s.data_overrides, logger, deferred)
    for run_dir in deferred:
        _wait_for(run_dir)
    return t


def train_tiny(out: Path, s: Settings, logger: list[str]) -> dict[str, float]:
    """Tiny-ImageNet θ_init (scratch), θ_std and one robust model, for the transfer experiment."""
    t: dict[str, float] = {}
    tiny = out / "tiny"
    exp = "rws/cpu_tiny"
    ft = [f"init={_export(tiny / 'init')}", f"trainer.max_epochs={s.tiny_ft_epochs}", f"method.optim.lr={s.ft_lr}"]
    t["tiny/init"] = _train("T1 Tiny-ImageNet θ_init from scratch", out, tiny / "init", exp,
                            [f"trainer.max_epochs={s.tiny_init_epochs}"], s.tiny_overrides, logger)
    deferred: list[Path] = []
    t["tiny/std"] = _train("T2 Tiny-ImageNet θ_std", out, tiny / "std", exp, ft, s.tiny_overrides, logger, deferred)
    c = s.tiny_corruption
    t[f"tiny/robust/{c}"] = _train(f"T3 Tiny-ImageNet θ_{c}", out, tiny / "robust" / c, exp,
                                   [*ft, "method=corruption", f"method.corruptions={c}", "method.severity=5"],
                                   s.tiny_overrides, logger, deferred)
    for run_dir in deferred:
        _wait_for(run_dir)
    return t


# -- signatures ------------------------------------------------------------------------------------

def _sig_dir(out: Path, label: str) -> Path:
    """``shallow32`` -> <out>/sigs/shallow32; ``tiny/shallow32`` -> <out>/tiny/sigs/shallow32."""
    if label.startswith("tiny/"):
        return out / "tiny" / "sigs" / label.split("/", 1)[1]
    return out / "sigs" / label


def _body_layers(export_dir: Path) -> int:
    """Number of non-head layer groups: RWS_full keeps every layer except the classifier."""
    import torch

    from rws.models import layer_groups
    from rws.weights.export import build_model, load_export

    with torch.device("meta"):
        model = build_model(load_export(export_dir).model_cfg)
    return len(layer_groups(model)) - 1


def extract_cifar(out: Path, s: Settings) -> None:
    robust = "{" + ", ".join(f"{c}: {_export(out / 'robust' / c)}" for c in s.corruptions) + "}"
    body = None
    for label, k, bits in SIG_VARIANTS:
        if k == "body":
            body = body or _body_layers(_export(out / "std"))
            k = body
        d = _sig_dir(out, label)
        run_step(f"4 extract {label} (layers.k={k}, {bits} bit, bn_policy=robust)",
                 ["-m", "rws.stages.extract", f"init={_export(out / 'init')}", f"std={_export(out / 'std')}",
                  f"robust={robust}", f"out={d}", f"layers.k={k}", f"bits={bits}", "bn_policy=robust",
                  f"paths.output_dir={out}", f"hydra.run.dir={d}/hydra"],
                 done_marker=d / "analysis.json")


def extract_tiny(out: Path, s: Settings) -> None:
    t = out / "tiny"
    d = _sig_dir(out, "tiny/shallow32")
    run_step("4 extract Tiny-ImageNet shallow32",
             ["-m", "rws.stages.extract", f"init={_export(t / 'init')}", f"std={_export(t / 'std')}",
              f"robust={{{s.tiny_corruption}: {_export(t / 'robust' / s.tiny_corruption)}}}", f"out={d}",
              "layers.k=5", "bits=32", "bn_policy=robust", f"paths.output_dir={out}", f"hydra.run.dir={d}/hydra"],
             done_marker=d / "analysis.json")


# -- evaluation plan -------------------------------------------------------------------------------

def export_spec(out: Path, role: str) -> dict[str, Any]:
    return {"kind": "export", "path": str(_export(out / role)), "name": role}


def patch_spec(out: Path, base: str, sigs: list[tuple[str, str, float]], bn: str = "robust") -> dict[str, Any]:
    from rws.report.rws_tables import patch_name

    kept = [(label, c, a) for label, c, a in sigs if float(a) != 0.0]
    if not kept:
        return export_spec(out, base)
    return {"kind": "patch", "base": export_spec(out, base), "bn_policy": bn, "name": patch_name(base, kept, bn),
            "signatures": [{"path": str(_sig_dir(out, label) / f"{c}.safetensors"), "alpha": float(a)}
                           for label, c, a in kept]}


def _corr_suite(corrs: list[str], sevs: tuple[int, ...] | list[int]) -> dict[str, Any]:
    return {"name": "corruptions", "corruptions": list(corrs), "severities": [int(x) for x in sevs]}


def plan_info(s: Settings, tiny: bool) -> dict[str, Any]:
    """What the tables need to know about the run (also written to plan.json)."""
    cs = s.corruptions
    pair = [c for c in ("gaussian_noise", "fog") if c in cs] if len(cs) >= 2 else []
    if len(pair) < 2:
        pair = cs[:2]
    comps: dict[str, list[tuple[str, str, float]]] = {
        f"2 signatures ({', '.join(pair)}) at α=1": [("shallow32", c, 1.0) for c in pair]}
    if len(cs) >= 3:
        comps[f"{len(cs[:3])} signatures ({', '.join(cs[:3])}) at α=1"] = [("shallow32", c, 1.0) for c in cs[:3]]
    comps[f"all {len(cs)} signatures at α=1"] = [("shallow32", c, 1.0) for c in cs]
    comps[f"all {len(cs)} signatures at α=1/{len(cs)}"] = [("shallow32", c, round(1.0 / len(cs), 6)) for c in cs]
    info: dict[str, Any] = {"corruptions": cs, "severities": list(s.severities), "alphas": list(s.alphas),
                            "pair": pair, "pair_alphas": list(s.pair_alphas), "compositions": comps,
                            "composition_severities": [max(s.severities)]}
    if tiny:
        info["transfer"] = {
            "tiny_base": "tiny/std", "cifar_sigset": "shallow32", "tiny_sigset": "tiny/shallow32",
            "tiny_corruptions": [s.tiny_corruption], "tiny_robust": [f"tiny/robust/{s.tiny_corruption}"],
            "notes": ("Tiny-ImageNet side (CPU scale): same width-1/4 VGG-16-BN, 64 px, 200 classes; θ_init "
                      "trained from scratch on the Tiny-ImageNet mini (its own θ_init), θ_std and one robust model "
                      f"({s.tiny_corruption}, severity 5) fine-tuned from it. Signatures: shallowest 5 layers, "
                      "32 bit, α=1; bn=robust also copies the source model's BN running statistics of those "
                      "layers, bn=std patches weights only."),
        }
    return info


def eval_groups(out: Path, s: Settings, info: dict[str, Any]) -> list[tuple[str, list[dict], list]]:
    """CIFAR-10 evaluate.py calls: (group name, specs, suites). Every spec is measured on every suite
    of its group, so specs are grouped by the corruption they are meant for (oracle evaluation)."""
    cs, sev = s.corruptions, s.severities
    comps = list(info["compositions"].values())
    pair = info["pair"]
    clean_specs = [export_spec(out, "std"), export_spec(out, "augmented"),
                   *[export_spec(out, f"robust/{c}") for c in cs],
                   *[patch_spec(out, "std", [("shallow32", c, a)]) for c in cs for a in s.alphas],
                   *[patch_spec(out, "std", [("shallow32", pair[0], a1), ("shallow32", pair[1], a2)])
                     for a1 in s.pair_alphas for a2 in s.pair_alphas],
                   *[patch_spec(out, "std", list(x)) for x in comps]]
    groups = [("clean", clean_specs, ["clean"])]
    for c in cs:
        specs = [export_spec(out, "std"), export_spec(out, "augmented"), export_spec(out, f"robust/{c}")]
        specs += [patch_spec(out, "std", [(label, c, 1.0)], bn) for label, bn in
                  (("full32", "robust"), ("shallow32", "robust"), ("shallow16", "robust"), ("shallow8", "robust"),
                   ("shallow32", "std"))]
        specs += [patch_spec(out, "std", [("shallow32", c, a)]) for a in s.alphas]
        groups.append((f"corr_{c}", specs, [_corr_suite([c], sev)]))
    # Composition cells at the highest severity only (Fig. 8 uses one level): the pair grid on its two
    # corruptions, the multi-signature patches on every corruption.
    top = tuple(info["composition_severities"])
    pair_specs = [patch_spec(out, "std", [("shallow32", pair[0], a1), ("shallow32", pair[1], a2)])
                  for a1 in s.pair_alphas for a2 in s.pair_alphas]
    groups.append(("composition_pair", pair_specs, [_corr_suite(pair, top)]))
    groups.append(("composition_multi", [patch_spec(out, "std", list(x)) for x in comps], [_corr_suite(cs, top)]))
    return [(n, _dedup(sp), su) for n, sp, su in groups]


def tiny_groups(out: Path, s: Settings) -> list[tuple[str, list[dict], list]]:
    cs, sev, tc = s.corruptions, s.severities, s.tiny_corruption
    clean = [export_spec(out, "tiny/std"), export_spec(out, f"tiny/robust/{tc}"),
             *[patch_spec(out, "tiny/std", [("shallow32", c, 1.0)], bn) for c in cs for bn in ("robust", "std")],
             patch_spec(out, "tiny/std", [("tiny/shallow32", tc, 1.0)])]
    groups = [("tiny_clean", clean, ["clean"])]
    for c in cs:
        specs = [export_spec(out, "tiny/std"),
                 *[patch_spec(out, "tiny/std", [("shallow32", c, 1.0)], bn) for bn in ("robust", "std")]]
        if c == tc:
            specs += [export_spec(out, f"tiny/robust/{tc}"), patch_spec(out, "tiny/std", [("tiny/shallow32", tc, 1.0)])]
        groups.append((f"tiny_corr_{c}", specs, [_corr_suite([c], sev)]))
    return groups


def reverse_groups(out: Path, s: Settings) -> list[tuple[str, list[dict], list]]:
    """The Tiny-ImageNet signature on the CIFAR-10 standard model (CIFAR-10 data)."""
    tc = s.tiny_corruption
    specs = [patch_spec(out, "std", [("tiny/shallow32", tc, 1.0)], bn) for bn in ("robust", "std")]
    return [("reverse_clean", specs, ["clean"]),
            ("reverse_corr", [export_spec(out, "std"), *specs], [_corr_suite([tc], s.severities)])]


def _dedup(specs: list[dict]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for sp in specs:
        if sp["name"] not in seen:
            seen.add(sp["name"])
            out.append(sp)
    return out


def _experiment_data(experiment: str) -> list[str]:
    """The experiment file's data settings as evaluate.py overrides (same test subset as training)."""
    exp = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    data = next(d["override /data"] for d in exp["defaults"] if isinstance(d, dict) and "override /data" in d)
    return [f"data={data}", *[f"data.{k}={v}" for k, v in (exp.get("data") or {}).items()]]


def _merge_overrides(*lists: list[str]) -> list[str]:
    """Later lists win per key (the smoke settings override the experiment's data sizes)."""
    merged: dict[str, str] = {}
    for lst in lists:
        for o in lst:
            merged[o.split("=", 1)[0]] = o
    return list(merged.values())


def _hydra_value(v: Any) -> str:
    """A Hydra override value (its grammar takes unquoted keys, not JSON)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    return str(v)


def run_eval_group(out: Path, eval_dir: Path, name: str, specs: list[dict], suites: list,
                   data_args: list[str], logger: list[str]) -> float:
    spec_dir = out / "specs" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, sp in enumerate(specs):
        f = spec_dir / f"{i:03d}.yaml"
        f.write_text(yaml.safe_dump(sp, sort_keys=False))
        files.append(str(f))
    marker = eval_dir / ".done" / _marker_name(name, [specs, suites])
    dt = run_step(f"5 evaluate {name}: {len(specs)} models", [
        "evaluate.py", *data_args, f"paths.output_dir={out}", f"out={eval_dir}", f"specs=[{','.join(files)}]",
        f"suites={_hydra_value(suites)}", "print_table=false", "progress=false", "device=cpu", *logger],
        done_marker=marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return dt


def eval_recalibrated(out: Path, s: Settings, data_args: list[str], info: dict[str, Any]) -> None:
    """The BN 'recalibrate' variant: signature(s) applied, then the patched layers' BN statistics
    re-estimated on corrupted *training* batches (oracle, like the signature choice: the same
    corruption; for a composition, batches cycling through its corruptions). Runs in this process
    through the evaluation API (it needs data), writing the same long-format rows to <out>/eval_recal.
    Single signatures: every corruption at each severity; compositions: their corruptions at the
    composition severity, and clean data."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from rws.corruptions import corrupt
    from rws.evaluation.pipeline import evaluate
    from rws.weights import specs as specs_mod
    from rws.weights.patching import Patcher

    jobs: list[tuple[dict[str, Any], list[str], list]] = []
    for c in s.corruptions:
        spec = patch_spec(out, "std", [("shallow32", c, 1.0)], "recalibrate")
        spec["calibration"] = {"corruption": c, "severity": 5, "batches": s.calib_batches, "split": "train"}
        jobs.append((spec, [c], [_corr_suite([c], s.severities)]))
    for sigs in info["compositions"].values():
        sigs = [tuple(x) for x in sigs]
        cs = list(dict.fromkeys(c for _, c, _ in sigs))
        spec = patch_spec(out, "std", sigs, "recalibrate")
        spec["calibration"] = {"corruptions": cs, "severity": 5, "batches": s.calib_batches, "split": "train"}
        jobs.append((spec, cs, ["clean", _corr_suite(s.corruptions, info["composition_severities"])]))
    todo = [j for j in jobs if not (out / "eval_recal" / ".done" / _marker_name(j[0]["name"], j)).exists()]
    if not todo:
        print("[skip] 5 evaluate BN recalibrate: every item is done", flush=True)
        return
    t0 = time.time()
    print(f"[run ] 5 evaluate BN recalibrate (in process): {len(todo)} models", flush=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[*data_args, f"paths.output_dir={out}", f"out={out / 'eval_recal'}",
                                             "print_table=false", "progress=false", "device=cpu"])
    dm = instantiate(cfg.data)
    dm.setup()
    for job in todo:
        spec, calib_cs, suites = job

        def build(sp: dict, device: Any = "cpu", _cs: list[str] = calib_cs) -> Any:
            import torch

            model = specs_mod.build(sp["base"], device=device)
            patcher = Patcher(model, [(x["path"], float(x["alpha"])) for x in sp["signatures"]],
                              bn_policy="recalibrate")
            patcher.apply()
            gen = torch.Generator().manual_seed(1234)
            batches = (corrupt(x, _cs[i % len(_cs)], 5, table=dm.corruption_table, generator=gen)
                       for i, (x, _) in enumerate(dm.calibration_batches(s.calib_batches, dm.batch_size)))
            patcher.recalibrate(batches)
            return model.eval()

        cfg_c = cfg.copy()
        cfg_c.specs = [spec]
        cfg_c.suites = suites
        evaluate(cfg_c, build_fn=build, datamodule=dm)
        marker = out / "eval_recal" / ".done" / _marker_name(spec["name"], job)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    print(f"[done] 5 evaluate BN recalibrate in {time.time() - t0:.1f}s", flush=True)


def _marker_name(name: str, content: Any) -> str:
    """A done-marker file name that changes when the work item changes (specs, suites)."""
    import hashlib

    digest = hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:60] + "-" + digest


def storage(out: Path, s: Settings) -> dict[str, dict[str, float]]:
    """Table 1's MB column: real file sizes and the paper's parameter-count formula."""
    from safetensors import safe_open

    def numel(path: Path, weights_only: bool) -> int:
        n = 0
        with safe_open(str(path), "pt") as f:
            for k in f.keys():
                if "__" in k.rsplit(".", 1)[-1] or k.endswith("num_batches_tracked"):
                    continue  # quantization scales / counters
                if weights_only and k.endswith(("running_mean", "running_var")):
                    continue
                n += _prod(f.get_slice(k).get_shape())
        return n

    std_file = _export(out / "std") / "model.safetensors"
    n_std = numel(std_file, weights_only=True)
    n_c = len(s.corruptions)
    mb = 1e6
    base = std_file.stat().st_size
    res = {"Standard": {"mb_files": base / mb, "mb_formula": 4 * n_std / mb},
           "Data Augmentation": {"mb_files": (_export(out / "augmented") / "model.safetensors").stat().st_size / mb,
                                 "mb_formula": 4 * n_std / mb},
           "All Models (oracle)": {"mb_files": (base + sum((_export(out / "robust" / c) / "model.safetensors")
                                                          .stat().st_size for c in s.corruptions)) / mb,
                                   "mb_formula": (1 + n_c) * 4 * n_std / mb}}
    from rws.report.rws_tables import RWS_ROWS

    for label, sigset, _bn in RWS_ROWS:
        files = [_sig_dir(out, sigset) / f"{c}.safetensors" for c in s.corruptions]
        bits = next(b for lab, _k, b in SIG_VARIANTS if lab == sigset)
        n_sig = numel(files[0], weights_only=True)
        res[label] = {"mb_files": (base + sum(f.stat().st_size for f in files)) / mb,
                      "mb_formula": (4 * n_std + n_c * n_sig * bits / 8) / mb}
    return res


def _prod(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def run_all(out: Path, s: Settings, info: dict[str, Any], stages: set[str], tiny: bool,
            logger: list[str]) -> dict[str, float]:
    """Two streams, so both cores stay busy on the shared box:
    A: CIFAR-10 models -> signatures -> CIFAR-10 evaluation groups;
    B: Tiny-ImageNet models -> its signature -> (once A has extracted) transfer cells -> BN recalibration."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cifar_data = _merge_overrides(_experiment_data("rws/cpu"), s.data_overrides)
    tiny_data = _merge_overrides(_experiment_data("rws/cpu_tiny"), s.tiny_overrides)
    extracted = threading.Event()
    timings: dict[str, float] = {}

    def stream_a() -> None:
        try:
            if "train" in stages:
                timings.update(train_cifar(out, s, logger))
            if "extract" in stages:
                t = time.time()
                extract_cifar(out, s)
                timings["extract"] = time.time() - t
        finally:
            extracted.set()  # never leave stream B waiting on a failed stream A
        if "eval" in stages:
            t = time.time()
            for name, specs, suites in eval_groups(out, s, info):
                run_eval_group(out, out / "eval", name, specs, suites, cifar_data, [])
            timings["eval_cifar"] = time.time() - t

    def stream_b() -> None:
        t = time.time()
        if tiny:
            if "tiny" in stages:
                timings.update(train_tiny(out, s, logger))
            if "extract" in stages:
                extract_tiny(out, s)
        extracted.wait()
        if "eval" in stages:
            if tiny:
                for name, specs, suites in tiny_groups(out, s):
                    run_eval_group(out, out / "eval_tiny", name, specs, suites, tiny_data, [])
                for name, specs, suites in reverse_groups(out, s):
                    run_eval_group(out, out / "eval_reverse", name, specs, suites, cifar_data, [])
            eval_recalibrated(out, s, cifar_data, info)
        timings["stream_b"] = time.time() - t

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(stream_a), pool.submit(stream_b)]
        for f in futures:
            f.result()
    return timings


def report(out: Path, s: Settings, info: dict[str, Any], use_wandb: bool) -> str:
    """Tables (markdown + JSON) and figures from the result files; prints Table 1."""
    from rws.evaluation.results import read_results
    from rws.report import rws_figures, rws_tables

    rows: list[dict[str, Any]] = []
    for d in ("eval", "eval_tiny", "eval_reverse", "eval_recal"):
        if (out / d / "results.jsonl").exists():
            rows += read_results(out / d)
    plan = {**info, "storage": storage(out, s)}
    tables = rws_tables.write_all(rows, plan, out)
    figs = rws_figures.make_all(out, plan, tables,
                                 data_args=_merge_overrides(_experiment_data("rws/cpu"), s.data_overrides))
    if use_wandb:
        rws_figures.log_wandb(figs, tables, out)
    md = (out / "table1.md").read_text()
    print("\n" + md)
    print(f"figures: {', '.join(str(f.name) for f in figs)}")
    return md


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/rws_cpu", help="directory for every run, signature, result, table")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 2 corruptions, 1 epoch, 20 images/class")
    p.add_argument("--corruptions", default=None, help="comma-separated corruption names (default: the 5)")
    p.add_argument("--skip-transfer", action="store_true", help="no Tiny-ImageNet models / transfer table")
    p.add_argument("--wandb", action="store_true", help="log training runs and figures to wandb")
    p.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)} to run")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    corr = a.corruptions.split(",") if a.corruptions else None
    if corr:
        from rws.corruptions import resolve_corruptions

        corr = list(resolve_corruptions(corr))
    s = Settings.smoke(corr) if a.smoke else (replace(Settings(), corruptions=corr) if corr else Settings())
    stages = set(a.stages.split(","))
    unknown = stages - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; stages: {','.join(STAGES)}")
    tiny = not a.skip_transfer
    logger = ["logger=wandb", "+wandb_group=rws_cpu"] if a.wandb else []
    out.mkdir(parents=True, exist_ok=True)
    info = plan_info(s, tiny)
    (out / "plan.json").write_text(json.dumps(info, indent=2))
    t0 = time.time()
    timings: dict[str, float] = {}
    timings.update(run_all(out, s, info, stages, tiny, logger))
    if "report" in stages:
        t = time.time()
        report(out, s, info, a.wandb)
        timings["report"] = time.time() - t
    timings["total"] = time.time() - t0
    prev = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    prev.update({k: round(v, 1) for k, v in timings.items() if v > 0})
    (out / "timings.json").write_text(json.dumps(prev, indent=2))
    print(f"\nrws_cpu finished in {time.time() - t0:.0f}s; everything in {out}")


if __name__ == "__main__":
    main()
