"""RWS on a ResNet under our BN policy and the official code's: do they patch robustness equally?

    python -m rws.pipelines.rws_bn_policy [--out outputs/rws_bn_policy] [--smoke] [--print-plan]

The official code treats a ResNet's BatchNorm differently from ours (docs/signatures.md "Difference
from the official code"): it leaves every ``bn``/``downsample`` tensor out of the signature, sets them
to the robust model's values and re-estimates every BN layer's statistics on corrupted training
data (``bn_policy=official``); ours projects the kept layers' γ/β like weights and mixes their
robust statistics (``robust``, the default) or re-estimates only the kept layers (``recalibrate``).
This driver measures the three on one network:

  network  ``resnet18_cifar`` at width 1/4 (16..128 channels, BN), experiment rws/cpu's data (1,000
           train images per class, 2,000 test images) and SGD recipe
  1. θ_init from scratch; 2. θ_std and θ_c (severity 5) for ``CORRUPTIONS``, fine-tuned from θ_init
  3. shallow signatures (k = 5 layer groups, 32 bit) extracted twice: ``sigs/robust``
     (``bn_policy=robust``, also patched with ``recalibrate``) and ``sigs/official``
  4. evaluate θ_std, each θ_c, and θ_std + RWS_c at α = 1 under each policy, the re-estimating ones
     (recalibrate, official) on each of ``Settings.calib_batches`` un-augmented severity-5 training
     batches of c: 10 (rws_cpu's setting) and 79, one pass over the 10,000 training images (the
     official code re-estimates on one epoch of its training set), on clean data and the corruptions
     at severity 5
Then ``rws.report.bn_policy_tables`` writes bn_policy.md / bn_policy.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rws.pipelines.runner import Step, lock_file, print_or_run, study_parser
from rws.pipelines.rws_cpu import (CALIB_SEED, _eval_step, _experiment_data, _export, _merge_overrides,
                                   export_spec, train_step)
from rws.specs.core import spec_id

EXPERIMENT = "rws/cpu"
MODEL = ("model=resnet18_cifar", "model.width=0.25")
CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "contrast")
POLICIES = ("robust", "recalibrate", "official")
SEVERITY = 5


@dataclass
class Settings:
    init_epochs: int = 15
    ft_epochs: int = 3
    ft_lr: float = 0.02
    layers_k: int = 5
    calib_batches: tuple[int, ...] = (10, 79)  # 79 batches of 128: one pass over the 10,000 train images
    data_overrides: list[str] = field(default_factory=list)

    @staticmethod
    def smoke() -> "Settings":
        return Settings(init_epochs=1, ft_epochs=1, calib_batches=(2,), data_overrides=[
            "data.subset_per_class=20", "data.val_size=20", "data.test_subset=100", "data.batch_size=50"])


def sig_dir(out: Path, policy: str) -> Path:
    """Signatures extracted for ``policy`` (``recalibrate`` patches the ``robust`` extraction)."""
    return out / "sigs" / ("official" if policy == "official" else "robust")


def variants(s: Settings) -> list[tuple[str, str, int | None]]:
    """(label, bn_policy, calibration batches or None) of the patched rows, in table order."""
    return [("bn_policy=robust", "robust", None)] + [
        (f"bn_policy={p}, {n} batches", p, n) for n in s.calib_batches for p in POLICIES if p != "robust"]


def model_name(c: str, policy: str, batches: int | None) -> str:
    """The results' model name of θ_std + RWS_c under ``policy`` (the report looks rows up by it)."""
    return f"std+{c}|bn={policy}" + (f"|calib={batches}" if batches else "")


def patched_spec(out: Path, c: str, policy: str, batches: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "patch", "base": export_spec(out, "std"), "name": model_name(c, policy, batches),
                            "bn_policy": policy,
                            "signatures": [{"path": str(sig_dir(out, policy) / f"{c}.safetensors"), "alpha": 1.0}]}
    if batches:
        spec["calibration"] = {"corruption": c, "severity": SEVERITY, "batches": batches,
                               "seed": CALIB_SEED, "split": "train"}
    return spec


def row_specs(out: Path, s: Settings) -> list[tuple[str, dict[str, Any]]]:
    """(table label, spec) of every evaluated model, in table order."""
    rows: list[tuple[str, dict[str, Any]]] = [("θ_std (unpatched)", export_spec(out, "std"))]
    for c in CORRUPTIONS:
        rows.append((f"θ_{c} (dedicated)", export_spec(out, f"robust/{c}")))
        rows += [(f"θ_std + RWS_{c}, {label}", patched_spec(out, c, p, n)) for label, p, n in variants(s)]
    return rows


def plan_info(s: Settings, out: Path) -> dict[str, Any]:
    return {"corruptions": list(CORRUPTIONS), "severity": SEVERITY, "model": " ".join(MODEL),
            "variants": [[label, p, n] for label, p, n in variants(s)],
            "rows": [[label, sp["name"], spec_id(sp)] for label, sp in row_specs(out, s)]}


def plan(s: Settings, out: Path) -> list[Step]:
    lead = (f"experiment={EXPERIMENT}", *MODEL)
    ft = [f"init={_export(out / 'init')}", f"trainer.max_epochs={s.ft_epochs}", f"method.optim.lr={s.ft_lr}"]
    steps = [train_step(out, "init", "1 θ_init from scratch", lead,
                        (*s.data_overrides, f"trainer.max_epochs={s.init_epochs}")),
             train_step(out, "std", "2 θ_std", lead, (*s.data_overrides, *ft), ("init",))]
    steps += [train_step(out, f"robust/{c}", f"2 θ_{c} (severity {SEVERITY})", lead,
                         (*s.data_overrides, *ft, "method=corruption", f"method.corruptions={c}",
                          f"method.severity={SEVERITY}"), ("init",)) for c in CORRUPTIONS]
    producers: dict[Path, str] = {_export(out / st.name): st.name for st in steps}
    robust_arg = "{" + ", ".join(f"{c}: {_export(out / 'robust' / c)}" for c in CORRUPTIONS) + "}"
    for policy in ("robust", "official"):
        d = sig_dir(out, policy)
        name = d.relative_to(out).as_posix()
        steps.append(Step(name, f"3 signatures, bn_policy={policy} (k={s.layers_k})", (
            "-m", "rws.stages.extract", f"init={_export(out / 'init')}", f"std={_export(out / 'std')}",
            f"robust={robust_arg}", f"out={d}", f"layers.k={s.layers_k}", "bits=32", f"bn_policy={policy}",
            "analysis=false", f"paths.output_dir={out}", f"hydra.run.dir={d}/hydra"),
            done=d / f"{CORRUPTIONS[-1]}.safetensors", needs=tuple(producers.values()), lock=lock_file(d),
            tag="extract"))
        producers[d] = name
    data = _merge_overrides(_experiment_data(EXPERIMENT), s.data_overrides)
    suites = ["clean", {"name": "corruptions", "corruptions": list(CORRUPTIONS), "severities": [SEVERITY]}]
    steps.append(_eval_step(out, out / "eval", ("bn_policy", [sp for _, sp in row_specs(out, s)], suites),
                            data, producers))
    return steps


def main(argv: list[str] | None = None) -> None:
    a = study_parser(__doc__, "outputs/rws_bn_policy").parse_args(argv)
    s = Settings.smoke() if a.smoke else Settings()
    out = Path(a.out).resolve()
    from rws.report.bn_policy_tables import write_report

    print_or_run("rws_bn_policy", plan(s, out), out, plan_info(s, out), write_report, a.print_plan)


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
