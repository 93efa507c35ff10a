"""Robust Weight Signatures end to end at CPU scale, in one command:

    python -m rws.pipelines.rws_cpu [--out outputs/rws_cpu] [--smoke] [--corruptions a,b,...]
                                    [--skip-transfer] [--wandb] [--stages train,tiny,extract,eval,report]
                                    [--print-plan]

Narrow VGG-16-BN (width 1/4) on the shared CIFAR-10 JPEGs (experiment=rws/cpu). ``plan()`` lists
every step, each a real CLI call with a done marker, so a re-run resumes where it stopped:
  1. rws.cli.train   θ_init from scratch (12 epochs)                                -> init/export
  2. rws.cli.train   θ_std: clean fine-tune from θ_init (3 epochs, lr 0.02)         -> std/export
  3. rws.cli.train   θ_c per corruption (severity 5) + Data Augmentation (all mixed) -> robust/<c>, augmented
     (tiny)          Tiny-ImageNet θ_init (scratch), θ_std, θ_gaussian_noise        -> tiny/...
  4. rws.stages.extract  shallow (k=5) at 32/16/8 bits, full (all but head) at 32 -> sigs/<variant>/
  5. rws.cli.evaluate Table-1 / Table-4 cells, α sweep, composition, transfer, and the BN "recalibrate"
     rows (patch specs with a declarative calibration source)      -> eval*/results.jsonl
  6. rws.stages.rws_analysis  what the figures need from models/data -> figure_data/
     then tables (rws.report.rws_tables) and figures (rws.report.rws_figures) from result files -> *.md, figures/
The runner (rws.pipelines.runner) starts each step once its inputs exist, two at a time; training
steps hold a lock file, so a second driver on the same --out takes the next free step.
See docs/rws_experiments.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from rws.config import CONF_DIR
from rws.corruptions import CPU_SHIFTS
from rws.pipelines.runner import Step, check_records, lock_file, run, select

STAGES = ("train", "tiny", "extract", "eval", "report")
# The four signature variants of Table 1: (directory name, layers.k, bits).
SIG_VARIANTS = (("shallow32", 5, 32), ("shallow16", 5, 16), ("shallow8", 5, 8), ("full32", "body", 32))
CIFAR_EXPERIMENT, TINY_EXPERIMENT = "rws/cpu", "rws/cpu_tiny"
# Calibration stream of the BN-recalibrated rows: severity-5 corrupted training batches, one
# generator with this seed for the whole stream (rws.specs.calibration).
CALIB_SEVERITY, CALIB_SEED = 5, 1234
EVAL_DIRS = ("eval", "eval_tiny", "eval_reverse", "eval_recal")

SigRef = tuple[str, str, float]  # (signature set label, corruption, alpha)
Group = tuple[str, list[dict], list]  # (group name, specs, suites) of one evaluate call


@dataclass
class Settings:
    """Every size knob of the chain; ``smoke()`` shrinks it to a minutes-long end-to-end check."""
    corruptions: list[str] = field(default_factory=lambda: list(CPU_SHIFTS))
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
    transfer: bool = True                       # the Tiny-ImageNet models, transfer cells and Fig. 5
    logger: tuple[str, ...] = ()                # extra overrides of every training step (wandb)

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


def train_step(out: Path, role: str, title: str, lead: Sequence[str], overrides: Sequence[str],
               needs: tuple[str, ...] = (), tag: str = "train") -> Step:
    """``rws.cli.train`` into ``<out>/<role>`` (its export is the done marker, the run dir is locked):
    ``lead`` (e.g. experiment=, model=) go first, then the run's own settings, then ``overrides``."""
    run_dir = out / role
    argv = ("-m", "rws.cli.train", *lead, f"run_name={role.replace('/', '_')}", f"hydra.run.dir={run_dir}",
            f"paths.output_dir={out}", "trainer.enable_progress_bar=false", *overrides)
    return Step(role, title, argv, done=_done(run_dir), needs=needs, lock=lock_file(run_dir), tag=tag)


def _sig_dir(out: Path, label: str) -> Path:
    """``shallow32`` -> <out>/sigs/shallow32; ``tiny/shallow32`` -> <out>/tiny/sigs/shallow32."""
    if label.startswith("tiny/"):
        return out / "tiny" / "sigs" / label.split("/", 1)[1]
    return out / "sigs" / label


# -- model specs -----------------------------------------------------------------------------------

def recipe_name(base: str, sigs: list[SigRef], bn: str = "robust") -> str:
    """The display name of ``base`` patched with ``sigs`` (the results' ``model`` column), e.g.
    ``std+shallow32:fog@1|bn=std``. Only a label: the tables select rows by their spec fields."""
    parts = [f"{label}:{c}@{float(a):g}" for label, c, a in sigs]
    name = "+".join([base, *parts])
    return name if bn == "robust" else f"{name}|bn={bn}"


def export_spec(out: Path, role: str) -> dict[str, Any]:
    return {"kind": "export", "path": str(_export(out / role)), "name": role}


def patch_spec(out: Path, base: str, sigs: list[SigRef], bn: str = "robust",
               calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` + Σ α·signature; α=0 entries are dropped (no-ops), and with none left it is the base."""
    kept = [(label, c, a) for label, c, a in sigs if float(a) != 0.0]
    if not kept:
        return export_spec(out, base)
    spec = {"kind": "patch", "base": export_spec(out, base), "bn_policy": bn, "name": recipe_name(base, kept, bn),
            "signatures": [{"path": str(_sig_dir(out, label) / f"{c}.safetensors"), "alpha": float(a)}
                           for label, c, a in kept]}
    if calibration is not None:
        spec["calibration"] = calibration
    return spec


def _calibration(s: Settings, corruptions: list[str], key: str) -> dict[str, Any]:
    """Severity-5 corrupted training batches; ``key`` is "corruption" (one) or "corruptions" (cycled)."""
    return {key: corruptions[0] if key == "corruption" else list(corruptions), "severity": CALIB_SEVERITY,
            "batches": s.calib_batches, "seed": CALIB_SEED, "split": "train"}


def _corr_suite(corrs: list[str], sevs: tuple[int, ...] | list[int]) -> dict[str, Any]:
    return {"name": "corruptions", "corruptions": list(corrs), "severities": [int(x) for x in sevs]}


# -- what is evaluated -----------------------------------------------------------------------------

def plan_info(s: Settings) -> dict[str, Any]:
    """What the tables need to know about the run (also written to plan.json)."""
    cs = s.corruptions
    pair = [c for c in ("gaussian_noise", "fog") if c in cs] if len(cs) >= 2 else []
    if len(pair) < 2:
        pair = cs[:2]
    comps: dict[str, list[SigRef]] = {
        f"2 signatures ({', '.join(pair)}) at α=1": [("shallow32", c, 1.0) for c in pair]}
    if len(cs) >= 3:
        comps[f"{len(cs[:3])} signatures ({', '.join(cs[:3])}) at α=1"] = [("shallow32", c, 1.0) for c in cs[:3]]
    comps[f"all {len(cs)} signatures at α=1"] = [("shallow32", c, 1.0) for c in cs]
    comps[f"all {len(cs)} signatures at α=1/{len(cs)}"] = [("shallow32", c, round(1.0 / len(cs), 6)) for c in cs]
    info: dict[str, Any] = {"corruptions": cs, "severities": list(s.severities), "alphas": list(s.alphas),
                            "pair": pair, "pair_alphas": list(s.pair_alphas), "compositions": comps,
                            "composition_severities": [max(s.severities)]}
    if s.transfer:
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


def eval_groups(out: Path, s: Settings, info: dict[str, Any]) -> list[Group]:
    """CIFAR-10 evaluate calls: (group name, specs, suites). Every spec is measured on every suite
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


def tiny_groups(out: Path, s: Settings) -> list[Group]:
    """Tiny-ImageNet data: the CIFAR-10 signatures on the Tiny-ImageNet std model, and its own one."""
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


def reverse_groups(out: Path, s: Settings) -> list[Group]:
    """The Tiny-ImageNet signature on the CIFAR-10 standard model (CIFAR-10 data)."""
    tc = s.tiny_corruption
    specs = [patch_spec(out, "std", [("tiny/shallow32", tc, 1.0)], bn) for bn in ("robust", "std")]
    return [("reverse_clean", specs, ["clean"]),
            ("reverse_corr", [export_spec(out, "std"), *specs], [_corr_suite([tc], s.severities)])]


def recal_groups(out: Path, s: Settings, info: dict[str, Any]) -> list[Group]:
    """The BN 'recalibrate' rows: signature(s) applied, then the patched layers' BN statistics
    re-estimated on corrupted *training* batches of the evaluated datamodule (oracle, like the
    signature choice: the same corruption; for a composition, batches cycling through its
    corruptions). Single signatures: their corruption at each severity; compositions: every
    corruption at the composition severity, and clean data."""
    groups: list[Group] = []
    for c in s.corruptions:
        spec = patch_spec(out, "std", [("shallow32", c, 1.0)], "recalibrate", _calibration(s, [c], "corruption"))
        groups.append((f"recal_corr_{c}", [spec], [_corr_suite([c], s.severities)]))
    comps = []
    for sigs in info["compositions"].values():
        sigs = [tuple(x) for x in sigs]
        cs = list(dict.fromkeys(c for _, c, _ in sigs))
        comps.append(patch_spec(out, "std", sigs, "recalibrate", _calibration(s, cs, "corruptions")))
    groups.append(("recal_compositions", _dedup(comps),
                   ["clean", _corr_suite(s.corruptions, info["composition_severities"])]))
    return groups


def _dedup(specs: list[dict]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for sp in specs:
        if sp["name"] not in seen:
            seen.add(sp["name"])
            out.append(sp)
    return out


def _experiment_data(experiment: str) -> list[str]:
    """The experiment file's data settings as evaluate overrides (same test subset as training)."""
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


def _marker_name(name: str, content: Any) -> str:
    """A done-marker file name that changes when the work item changes (specs, suites)."""
    digest = hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:60] + "-" + digest


def _body_layers(experiment: str) -> int:
    """Number of non-head layer groups of the experiment's model: RWS_full keeps every layer except
    the classifier. From the config (the exports' model.yaml is that same model config)."""
    import torch

    from rws.config import compose
    from rws.models import layer_groups
    from rws.utils.config import to_plain
    from rws.weights.export import build_model

    cfg = compose("train", [f"experiment={experiment}"])
    with torch.device("meta"):  # structure only
        model = build_model(to_plain(cfg.model))
    return len(layer_groups(model)) - 1


def _spec_paths(spec: dict[str, Any]) -> Iterator[Path]:
    """Every export directory and signature file a spec reads."""
    if spec["kind"] == "export":
        yield Path(spec["path"])
    for sig in spec.get("signatures", []):
        yield Path(sig["path"])
    if "base" in spec:
        yield from _spec_paths(spec["base"])


# -- the plan --------------------------------------------------------------------------------------

def plan(s: Settings, out: Path) -> list[Step]:
    """Every step of the chain, in order (pure: nothing runs, nothing is written). Each step
    ``needs`` the steps that write the exports and signatures it reads."""
    steps: list[Step] = []
    producers: dict[Path, str] = {}  # export dir / signature dir -> name of the step that writes it

    def train(role: str, title: str, experiment: str, extra: list[str], overrides: list[str],
              needs: tuple[str, ...], tag: str) -> None:
        steps.append(replace(train_step(out, role, title, (f"experiment={experiment}",),
                                        (*overrides, *extra, *s.logger), needs, tag),
                             cosmetic=tuple(s.logger)))  # --wandb on a resumed run is not other settings
        producers[_export(out / role)] = role

    def extract(label: str, title: str, init: str, std: str, robust: dict[str, str], k: int, bits: int) -> None:
        d = _sig_dir(out, label)
        name = d.relative_to(out).as_posix()
        robust_arg = "{" + ", ".join(f"{c}: {_export(out / r)}" for c, r in robust.items()) + "}"
        steps.append(Step(name, title, (
            "-m", "rws.stages.extract", f"init={_export(out / init)}", f"std={_export(out / std)}",
            f"robust={robust_arg}", f"out={d}", f"layers.k={k}", f"bits={bits}", "bn_policy=robust",
            f"paths.output_dir={out}", f"hydra.run.dir={d}/hydra"),
            done=d / "analysis.json", needs=(init, std, *robust.values()), lock=lock_file(d), tag="extract"))
        producers[d] = name

    cs = s.corruptions
    ft = [f"init={_export(out / 'init')}", f"trainer.max_epochs={s.ft_epochs}", f"method.optim.lr={s.ft_lr}"]
    train("init", "1 θ_init from scratch", CIFAR_EXPERIMENT, [f"trainer.max_epochs={s.init_epochs}"],
          s.data_overrides, (), "train")
    train("std", "2 θ_std: clean fine-tune from θ_init", CIFAR_EXPERIMENT, ft, s.data_overrides, ("init",), "train")
    for c in cs:
        train(f"robust/{c}", f"3 θ_{c}: fine-tune from θ_init on {c} (severity 5)", CIFAR_EXPERIMENT,
              [*ft, "method=corruption", f"method.corruptions={c}", "method.severity=5"], s.data_overrides,
              ("init",), "train")
    train("augmented", "3 Data Augmentation: fine-tune from θ_init on all corruptions mixed", CIFAR_EXPERIMENT,
          [*ft, "method=corruption", f"method.corruptions=[{','.join(cs)}]", "method.severity=5"],
          s.data_overrides, ("init",), "train")
    tc = s.tiny_corruption
    if s.transfer:
        tft = [f"init={_export(out / 'tiny' / 'init')}", f"trainer.max_epochs={s.tiny_ft_epochs}",
               f"method.optim.lr={s.ft_lr}"]
        train("tiny/init", "T1 Tiny-ImageNet θ_init from scratch", TINY_EXPERIMENT,
              [f"trainer.max_epochs={s.tiny_init_epochs}"], s.tiny_overrides, (), "tiny")
        train("tiny/std", "T2 Tiny-ImageNet θ_std", TINY_EXPERIMENT, tft, s.tiny_overrides, ("tiny/init",), "tiny")
        train(f"tiny/robust/{tc}", f"T3 Tiny-ImageNet θ_{tc}", TINY_EXPERIMENT,
              [*tft, "method=corruption", f"method.corruptions={tc}", "method.severity=5"], s.tiny_overrides,
              ("tiny/init",), "tiny")

    robust = {c: f"robust/{c}" for c in cs}
    body = None
    for label, k, bits in SIG_VARIANTS:
        if k == "body":
            body = body or _body_layers(CIFAR_EXPERIMENT)
            k = body
        extract(label, f"4 extract {label} (layers.k={k}, {bits} bit, bn_policy=robust)", "init", "std", robust,
                int(k), bits)
    if s.transfer:
        extract("tiny/shallow32", "4 extract Tiny-ImageNet shallow32", "tiny/init", "tiny/std",
                {tc: f"tiny/robust/{tc}"}, 5, 32)

    info = plan_info(s)
    cifar_data = _merge_overrides(_experiment_data(CIFAR_EXPERIMENT), s.data_overrides)
    tiny_data = _merge_overrides(_experiment_data(TINY_EXPERIMENT), s.tiny_overrides)
    evals = [("eval", g, cifar_data) for g in eval_groups(out, s, info)]
    if s.transfer:
        evals += [("eval_tiny", g, tiny_data) for g in tiny_groups(out, s)]
        evals += [("eval_reverse", g, cifar_data) for g in reverse_groups(out, s)]
    evals += [("eval_recal", g, cifar_data) for g in recal_groups(out, s, info)]
    for eval_dir, group, data_args in evals:
        steps.append(_eval_step(out, out / eval_dir, group, data_args, producers))

    c = cs[0]
    maps = out / "figure_data" / "fig9_feature_maps.safetensors"
    steps.append(Step("figure_data/feature_maps", "6 first conv block activations, std vs patched (Fig. 9)", (
        "-m", "rws.stages.rws_analysis", "feature-maps", "--export", str(_export(out / "std")),
        "--signature", str(_sig_dir(out, "shallow32") / f"{c}.safetensors"), "--corruption", c,
        "--out", str(maps), "--data", *cifar_data),
        done=maps, needs=("std", "sigs/shallow32"), tag="report"))
    if s.transfer:
        cos = out / "figure_data" / "fig5_cross_dataset.json"
        steps.append(Step("figure_data/cross_dataset", "6 CIFAR-10 vs Tiny-ImageNet signature cosines (Fig. 5)", (
            "-m", "rws.stages.rws_analysis", "cross-cosines", "--a", str(_sig_dir(out, "shallow32")),
            "--b", str(_sig_dir(out, "tiny/shallow32")), "--out", str(cos)),
            done=cos, needs=("sigs/shallow32", "tiny/sigs/shallow32"), tag="report"))
    return steps


def _eval_step(out: Path, eval_dir: Path, group: Group, data_args: list[str], producers: dict[Path, str]) -> Step:
    """One evaluate call over a group; its specs go to <out>/specs/<group>/NNN.yaml (spec files keep
    recipe names and paths out of Hydra's override grammar)."""
    name, specs, suites = group
    files = {out / "specs" / name / f"{i:03d}.yaml": yaml.safe_dump(sp, sort_keys=False)
             for i, sp in enumerate(specs)}
    marker = eval_dir / ".done" / _marker_name(name, [specs, suites])
    reads = {p if p.name == "export" else p.parent for sp in specs for p in _spec_paths(sp)}
    needs = tuple(dict.fromkeys(producers[p] for p in sorted(reads) if p in producers))
    return Step(f"{eval_dir.name}/{name}", f"5 evaluate {name}: {len(specs)} models", (
        "-m", "rws.cli.evaluate", *data_args, f"paths.output_dir={out}", f"out={eval_dir}",
        f"specs=[{','.join(str(f) for f in files)}]", f"suites={_hydra_value(suites)}", "print_table=false",
        "progress=false", "device=cpu"),
        done=marker, mark_done=True, needs=needs, lock=lock_file(marker), files=files, tag="eval")


# -- report ----------------------------------------------------------------------------------------

def storage(out: Path, s: Settings) -> dict[str, dict[str, float]]:
    """Table 1's MB column: real file sizes and the paper's parameter-count formula."""
    from safetensors import safe_open

    from rws.report.rws_tables import RWS_ROWS

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


def report(out: Path, s: Settings, info: dict[str, Any], use_wandb: bool) -> str:
    """Tables (markdown + JSON) and figures from the result files; prints Table 1."""
    from rws.evaluation.results import read_results
    from rws.report import rws_figures, rws_tables

    rows: list[dict[str, Any]] = []
    for d in EVAL_DIRS:
        if (out / d / "results.jsonl").exists():
            rows += read_results(out / d)
    plan_ = {**info, "storage": storage(out, s)}
    tables = rws_tables.write_all(rows, plan_, out, root=out)
    figs = rws_figures.make_all(out, plan_, tables)
    if use_wandb:
        rws_figures.log_wandb(figs, tables, out)
    md = (out / "table1.md").read_text()
    print("\n" + md)
    print(f"figures: {', '.join(str(f.name) for f in figs)}")
    return md


def settings_from_args(a: argparse.Namespace) -> Settings:
    corr = a.corruptions.split(",") if a.corruptions else None
    if corr:
        from rws.corruptions import resolve_corruptions

        corr = list(resolve_corruptions(corr))
    s = Settings.smoke(corr) if a.smoke else (replace(Settings(), corruptions=corr) if corr else Settings())
    logger = ("logger=wandb", "+wandb_group=rws_cpu") if a.wandb else ()
    return replace(s, transfer=not a.skip_transfer, logger=logger)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/rws_cpu", help="directory for every run, signature, result, table")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 2 corruptions, 1 epoch, 20 images/class")
    p.add_argument("--corruptions", default=None, help="comma-separated corruption names (default: the 5)")
    p.add_argument("--skip-transfer", action="store_true", help="no Tiny-ImageNet models / transfer table")
    p.add_argument("--wandb", action="store_true", help="log training runs and figures to wandb")
    p.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)} to run")
    p.add_argument("--print-plan", action="store_true", help="print every step as a shell command and exit")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    s = settings_from_args(a)
    stages = set(a.stages.split(","))
    unknown = stages - set(STAGES)
    if unknown:
        from rws.errors import UserError

        raise UserError(f"unknown stage(s) {sorted(unknown)}", "option --stages", f"some of {','.join(STAGES)}")
    steps = select(plan(s, out), stages)
    if a.print_plan:
        for st in steps:
            print(f"# {st.title}\n{st.shell()}")
        return
    out.mkdir(parents=True, exist_ok=True)
    info = plan_info(s)
    check_records(steps, out / ".steps")  # a refused run leaves plan.json alone
    (out / "plan.json").write_text(json.dumps(info, indent=2))
    t0 = time.time()
    timings = run(steps, record_dir=out / ".steps", jobs=2)  # two cores: the CIFAR-10 and Tiny-ImageNet chains interleave
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
    from rws.cli.entry import script_entry

    script_entry(main)
