"""RWS transfer across datasets that share a pre-trained θ_init, at a CPU scale where the models learn:

    python -m rws.pipelines.rws_transfer_halves [--out outputs/rws_transfer_halves] [--smoke] [--print-plan]

The paper's θ_init is a pre-trained model shared by both datasets (Tables 2-3, Fig. 5). Our earlier
transfer runs paired CIFAR-10 with a Tiny-ImageNet model that reached 4 % top-1, too weak to measure
anything. Here:
  θ_pre   a narrow VGG-16-BN pre-trained from scratch (``--pretrain``): ``cifar10`` (default) on all
          10 CIFAR-10 classes (500 images per class, data seed 1), or ``tiny`` on the shared
          Tiny-ImageNet images at 32 px (200 classes): the "pre-trained model" both datasets start from;
  A, B    two disjoint halves of CIFAR-10 (classes 0-4: airplane..deer, 5-9: dog..truck), each a
          5-way task (``data.class_subset``, 500 images per class, data seed 0);
  θ_init  θ_pre with a fresh 5-way head (the same for A and B);
  per dataset D: θ_std^D and θ_c^D (severity 5) fine-tuned from θ_init; shallow signatures RWS_c^D.
Evaluation on each dataset's test images (clean + the corruptions at severities 3 and 5): the
unpatched θ_std^D, θ_std^D + RWS_c of the *other* dataset (transfer), + its own RWS_c (the oracle),
and the dedicated θ_c^D. Fig. 5: cosines between A's and B's signatures per layer (same corruption vs
different corruptions). Report: ``rws.report.transfer_halves`` -> transfer_halves.md/.json + figures.

Why pre-train on CIFAR-10: measured here, neither a GroupNorm VGG (loss stuck at ln 200 after 2
epochs, and at ln 10 on CIFAR-10) nor the BN VGG (4 % top-1 at 64 px) learns Tiny-ImageNet from scratch
at CPU scale, and a θ_init that has learned nothing makes every model a from-scratch model. Pre-training
on all ten classes is the CPU-scale analogue of an ImageNet θ_init that covers both datasets' kinds of
images. Its images are a different seeded draw than the halves' (data seed 1 vs 0), but the two draws
can share images: the halves are disjoint from each other, not from the pre-training set.
Why BN: it is the network that trains at this size; its signatures carry the kept layers' BN statistics
of the source half, which is also what is measured. ``--model`` runs another (e.g. ``vgg16_narrow``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from rws.pipelines.runner import Step, lock_file, print_or_run, study_parser
from rws.pipelines.rws_cpu import _export, _marker_name, export_spec, train_step
from rws.specs.core import spec_id

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "contrast")
HALVES = {"A": list(range(5)), "B": list(range(5, 10))}
SEVERITIES = (3, 5)
# θ_pre's data: all ten CIFAR-10 classes, or Tiny-ImageNet's 200 at CIFAR's 32 px.
PRETRAIN = {"cifar10": ["experiment=rws/cpu"], "tiny": ["experiment=rws/cpu_tiny", "data.image_size=32"]}


@dataclass
class Settings:
    model: str = "vgg16_bn_narrow"
    pretrain: str = "cifar10"
    pre_epochs: int = 10
    pre_lr: float = 0.05
    ft_epochs: int = 4
    ft_lr: float = 0.02
    layers_k: int = 5
    pre_data: list[str] = field(default_factory=lambda: [
        "data.subset_per_class=500", "data.val_size=500", "data.test_subset=1000", "data.seed=1"])
    data: list[str] = field(default_factory=lambda: [
        "data.subset_per_class=500", "data.val_size=500", "data.test_subset=1000"])

    @staticmethod
    def smoke() -> "Settings":
        return Settings(pre_epochs=1, ft_epochs=1, pre_data=[
            "data.subset_per_class=20", "data.val_size=100", "data.test_subset=100", "data.seed=1",
            "data.batch_size=50"], data=["data.subset_per_class=20", "data.val_size=20", "data.test_subset=100",
                                         "data.batch_size=50"])


def half_data(half: str) -> list[str]:
    return ["data=cifar10_jpeg", f"data.class_subset=[{','.join(str(c) for c in HALVES[half])}]", "data.num_classes=5"]


def _sig(out: Path, half: str, c: str) -> Path:
    return out / half / "sigs" / f"{c}.safetensors"


def row_specs(out: Path, target: str) -> list[tuple[str, dict[str, Any]]]:
    """(table label, spec) evaluated on ``target``'s test images."""
    source = "B" if target == "A" else "A"
    std = export_spec(out, f"{target}/std")
    rows: list[tuple[str, dict[str, Any]]] = [(f"θ_std^{target} (unpatched)", std)]
    for c in CORRUPTIONS:
        for who, label in ((source, f"+ RWS_{c} from {source} (transfer)"), (target, f"+ RWS_{c} of {target} (oracle)")):
            rows.append((label, {"kind": "patch", "base": std, "name": f"{target}/std+{who}:{c}",
                                 "signatures": [{"path": str(_sig(out, who, c)), "alpha": 1.0}]}))
        # The signature of a BN network carries the source's BN running statistics of the kept layers;
        # weights only (bn_policy std) keeps the target's own statistics.
        rows.append((f"+ RWS_{c} from {source}, weights only (target's BN statistics)",
                     {"kind": "patch", "base": std, "name": f"{target}/std+{source}:{c}|bn=std", "bn_policy": "std",
                      "signatures": [{"path": str(_sig(out, source, c)), "alpha": 1.0}]}))
        rows.append((f"θ_{c}^{target} (dedicated)", export_spec(out, f"{target}/robust/{c}")))
    return rows


def plan(s: Settings, out: Path) -> list[Step]:
    steps: list[Step] = []

    def train(role: str, title: str, argv: list[str], needs: tuple[str, ...]) -> None:
        steps.append(train_step(out, role, title, (f"model={s.model}",), argv, needs))

    if s.pretrain not in PRETRAIN:
        raise ValueError(f"--pretrain {s.pretrain!r} is not one of {sorted(PRETRAIN)}")
    train("pre", f"1 θ_pre: {s.pretrain} from scratch",
          [*PRETRAIN[s.pretrain], *s.pre_data, f"trainer.max_epochs={s.pre_epochs}", f"method.optim.lr={s.pre_lr}"],
          ())
    train("init", "2 θ_init = θ_pre + a fresh 5-way head",
          ["experiment=rws/cpu", *half_data("A"), *s.data, f"init={_export(out / 'pre')}", "init_skip=[head]",
           "trainer.max_epochs=0", "test_after_fit=false"], ("pre",))
    ft = [f"init={_export(out / 'init')}", f"trainer.max_epochs={s.ft_epochs}", f"method.optim.lr={s.ft_lr}"]
    for half in HALVES:
        data = ["experiment=rws/cpu", *half_data(half), *s.data]
        train(f"{half}/std", f"3 θ_std^{half}", [*data, *ft], ("init",))
        for c in CORRUPTIONS:
            train(f"{half}/robust/{c}", f"3 θ_{c}^{half} (severity 5)",
                  [*data, *ft, "method=corruption", f"method.corruptions={c}", "method.severity=5"], ("init",))
        robust = "{" + ", ".join(f"{c}: {_export(out / f'{half}/robust/{c}')}" for c in CORRUPTIONS) + "}"
        steps.append(Step(f"{half}/sigs", f"4 signatures of {half} (k={s.layers_k})", (
            "-m", "rws.stages.extract", f"init={_export(out / 'init')}", f"std={_export(out / f'{half}/std')}",
            f"robust={robust}", f"out={out / half / 'sigs'}", f"layers.k={s.layers_k}", "bits=32", "analysis=false",
            f"paths.output_dir={out}", f"hydra.run.dir={out / half / 'sigs' / 'hydra'}"),
            done=_sig(out, half, CORRUPTIONS[-1]), needs=("init", f"{half}/std", *[f"{half}/robust/{c}" for c in CORRUPTIONS]),
            lock=lock_file(out / half / "sigs"), tag="extract"))
    for target in HALVES:
        specs = [sp for _, sp in row_specs(out, target)]
        files = {out / "specs" / target / f"{i:02d}.yaml": yaml.safe_dump(sp, sort_keys=False)
                 for i, sp in enumerate(specs)}
        suites = (f"[clean,{{name: corruptions, corruptions: [{','.join(CORRUPTIONS)}], "
                  f"severities: [{','.join(str(v) for v in SEVERITIES)}]}}]")
        marker = out / target / "eval" / ".done" / _marker_name(f"eval_{target}", [specs, suites])
        steps.append(Step(f"{target}/eval", f"5 evaluate on {target}: {len(specs)} models", (
            "-m", "rws.cli.evaluate", *half_data(target), *s.data, f"paths.output_dir={out}",
            f"out={out / target / 'eval'}", f"specs=[{','.join(str(f) for f in files)}]", f"suites={suites}",
            "print_table=false", "progress=false", "device=cpu"),
            done=marker, mark_done=True, needs=("A/sigs", "B/sigs"), files=files, lock=lock_file(marker), tag="eval"))
    cos = out / "figure_data" / "fig5_cross_halves.json"
    steps.append(Step("fig5", "6 cosines between A's and B's signatures (Fig. 5)", (
        "-m", "rws.stages.rws_analysis", "cross-cosines", "--a", str(out / "A" / "sigs"), "--b", str(out / "B" / "sigs"),
        "--out", str(cos)), done=cos, needs=("A/sigs", "B/sigs"), tag="report"))
    return steps


def plan_info(s: Settings, out: Path) -> dict[str, Any]:
    return {"model": s.model, "pretrain": s.pretrain, "corruptions": list(CORRUPTIONS), "severities": list(SEVERITIES),
            "halves": HALVES, "rows": {t: [[label, sp["name"], spec_id(sp)] for label, sp in row_specs(out, t)] for t in HALVES},
            "settings": {"pre_epochs": s.pre_epochs, "ft_epochs": s.ft_epochs, "pre_data": s.pre_data, "data": s.data}}


def main(argv: list[str] | None = None) -> None:
    p = study_parser(__doc__, "outputs/rws_transfer_halves")
    p.add_argument("--model", default=Settings.model, help="a model config (rws/conf/model)")
    p.add_argument("--pretrain", default=Settings.pretrain, choices=sorted(PRETRAIN), help="θ_pre's data")
    a = p.parse_args(argv)
    s = replace(Settings.smoke() if a.smoke else Settings(), model=a.model, pretrain=a.pretrain)
    out = Path(a.out).resolve()
    from rws.report.transfer_halves import write_report

    print_or_run("rws_transfer_halves", plan(s, out), out, plan_info(s, out), write_report, a.print_plan)


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
