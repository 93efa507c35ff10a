"""RWS composition (the paper's Fig. 8) on networks whose signature need not carry BN statistics.

    python -m rws.pipelines.rws_composition [--out outputs/rws_composition] [--smoke]
                                            [--networks vgg,vgg_bn] [--print-plan]

The paper composes four signatures (motion blur, gaussian blur, fog, contrast) on a VGG-16 *without*
BatchNorm and reports "minimal loss of clean accuracy and robustness on other corruption types".
Our first composition study (docs/rws_experiments.md) ran on VGG-16-BN, where each signature also
has to carry its layers' BN running statistics, and the sum of several did not add up. This driver
repeats the protocol on three narrow (width 1/4) VGG-16s on the same data and epochs, each with
the optimizer it learns with (``NETWORKS``):

  vgg     no normalization (the paper's network; ``init: official``, the RWS code's VGG init). Adam,
          lr 1e-3 for θ_init, 3e-4 for the fine-tunes, no weight decay
  vgg_gn  GroupNorm (no running statistics: a signature is weights only). Adam, as vgg
  vgg_bn  BatchNorm (the contrast; the BN rows mix statistics affinely, plus one ``bn_mix: convex``
          row). SGD (nesterov, momentum 0.9, wd 5e-4), lr 0.05 for θ_init, 0.02 for the fine-tunes:
          rws_cpu's recipe

Why Adam for the networks without BN: measured here (1,000 images per class, 6 epochs), the
BN-free VGG reached 45.7 % validation accuracy with Adam at 1e-3 against 38.9 % with SGD at 0.01 and
one warm-up epoch; with SGD at 0.05 and 500 images per class for 10 epochs it stayed at 22.8 %, and
the GroupNorm VGG collapsed to uniform outputs (loss ln 10). With Adam both learn.

Per network (each step a real CLI call with a done marker, so a re-run resumes):
  1. rws.cli.train  θ_init from scratch                                   -> <net>/init/export
  2. rws.cli.train  θ_std (clean) and θ_c for the 4 corruptions (severity 5), fine-tuned from θ_init
  3. rws.stages.extract  shallow signatures (k = 5 layers, 32 bit)        -> <net>/sigs/<c>.safetensors
  4. rws.cli.evaluate  the unpatched θ_std, each θ_c, each single signature at α = 1 and the
     coefficient sets of ``COEFFICIENT_SETS`` on clean data, the 4 composed corruptions and 2 others
     (severity 5)                                                         -> <net>/eval/results.jsonl
Then ``rws.report.composition_tables`` writes composition.md / composition.json / the figure.

α convention: our patch is θ_std + Σ_c α_c·RWS_c (α applied once). The official code scales each
of n composed signatures by α/n and applies that factor twice, so its default (α = 1) acts as
(1/n)² per signature; the row ``official default`` is that point in our convention (1/16 each).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rws.pipelines.runner import Step, lock_file, print_or_run, study_parser
from rws.pipelines.rws_cpu import _eval_step, _experiment_data, _export, _merge_overrides, export_spec, train_step
from rws.specs.core import spec_id

EXPERIMENT = "rws/cpu"
# The paper's four (Fig. 8), and two corruptions that are not composed ("robustness on other types").
COMPOSED = ("motion_blur", "gaussian_blur", "fog", "contrast")
OTHERS = ("gaussian_noise", "pixelate")


@dataclass(frozen=True)
class Network:
    """A network of the study: its model config (rws/conf/model/<model>.yaml) and training recipe."""
    model: str
    optim: tuple[str, ...]      # method.optim overrides shared by θ_init and the fine-tunes
    init_lr: float
    ft_lr: float


_ADAM = ("method.optim.name=adam", "method.optim.weight_decay=0")
NETWORKS = {"vgg": Network("vgg16_narrow", _ADAM, 1e-3, 3e-4),
            "vgg_gn": Network("vgg16_gn_narrow", _ADAM, 1e-3, 3e-4),
            "vgg_bn": Network("vgg16_bn_narrow", (), 0.05, 0.02)}  # experiment rws/cpu's SGD
# Coefficient sets over COMPOSED, in that order. Sums ≤ 1 (the paper's "different specialties")
# and α = 1 each (Σα = 4).
COEFFICIENT_SETS: dict[str, tuple[float, ...]] = {
    "uniform (Σα = 1)": (0.25, 0.25, 0.25, 0.25),
    "blur-heavy": (0.4, 0.4, 0.1, 0.1),
    "fog/contrast-heavy": (0.1, 0.1, 0.4, 0.4),
    "motion-blur specialist": (0.7, 0.1, 0.1, 0.1),
    "contrast specialist": (0.1, 0.1, 0.1, 0.7),
    "half each (Σα = 2)": (0.5, 0.5, 0.5, 0.5),
    "α = 1 each (Σα = 4)": (1.0, 1.0, 1.0, 1.0),
    "official default ((α/n)², α = 1)": (0.0625, 0.0625, 0.0625, 0.0625),
}
SEVERITY = 5


@dataclass
class Settings:
    networks: list[str] = field(default_factory=lambda: list(NETWORKS))
    init_epochs: int = 20
    ft_epochs: int = 3
    layers_k: int = 5
    # experiment rws/cpu's data: 1,000 train images per class, 1,000 for validation, 2,000 test images
    data_overrides: list[str] = field(default_factory=list)

    @staticmethod
    def smoke() -> "Settings":
        return Settings(init_epochs=1, ft_epochs=1, data_overrides=[
            "data.subset_per_class=20", "data.val_size=20", "data.test_subset=100", "data.batch_size=50"])


def spec_name(coefficients: tuple[float, ...], bn_mix: str = "affine") -> str:
    parts = [f"{c}@{a:g}" for c, a in zip(COMPOSED, coefficients) if a != 0.0]
    name = "std+" + "+".join(parts)
    return name if bn_mix == "affine" else f"{name}|bn_mix={bn_mix}"


def composition_spec(out: Path, net: str, coefficients: tuple[float, ...], bn_mix: str = "affine") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "patch", "base": export_spec(out, f"{net}/std"), "name": spec_name(coefficients, bn_mix),
        "signatures": [{"path": str(out / net / "sigs" / f"{c}.safetensors"), "alpha": float(a)}
                       for c, a in zip(COMPOSED, coefficients) if a != 0.0]}
    if bn_mix != "affine":
        spec["bn_mix"] = bn_mix
    return spec


def row_specs(out: Path, net: str) -> list[tuple[str, dict[str, Any]]]:
    """(table label, spec) of every model evaluated on ``net``, in table order."""
    rows: list[tuple[str, dict[str, Any]]] = [("θ_std (unpatched)", export_spec(out, f"{net}/std"))]
    rows += [(f"θ_{c} (dedicated model)", export_spec(out, f"{net}/robust/{c}")) for c in COMPOSED]
    for i, c in enumerate(COMPOSED):
        one = tuple(1.0 if j == i else 0.0 for j in range(len(COMPOSED)))
        rows.append((f"single RWS_{c}, α = 1", composition_spec(out, net, one)))
    rows += [(label, composition_spec(out, net, coefs)) for label, coefs in COEFFICIENT_SETS.items()]
    if net == "vgg_bn":
        rows.append(("α = 1 each, bn_mix: convex", composition_spec(out, net, (1.0,) * 4, "convex")))
    return rows


def plan_info(s: Settings, out: Path) -> dict[str, Any]:
    """What the report needs (written to plan.json)."""
    return {"composed": list(COMPOSED), "others": list(OTHERS), "severity": SEVERITY, "num_classes": 10,
            "networks": {n: {"model": NETWORKS[n].model, "rows": [[label, sp["name"], spec_id(sp)] for label, sp in row_specs(out, n)]}
                         for n in s.networks},
            "coefficient_sets": {k: list(v) for k, v in COEFFICIENT_SETS.items()}}


def plan(s: Settings, out: Path) -> list[Step]:
    steps: list[Step] = []
    data = _merge_overrides(_experiment_data(EXPERIMENT), s.data_overrides)
    for net in s.networks:
        network = NETWORKS[net]
        model = network.model
        producers: dict[Path, str] = {}

        def train(role: str, title: str, extra: list[str], needs: tuple[str, ...]) -> None:
            steps.append(train_step(out, role, title, (f"experiment={EXPERIMENT}", f"model={model}"),
                                    (*s.data_overrides, *extra), needs))
            producers[_export(out / role)] = role

        ft = [f"init={_export(out / net / 'init')}", f"trainer.max_epochs={s.ft_epochs}",
              *network.optim, f"method.optim.lr={network.ft_lr}"]
        train(f"{net}/init", f"1 {net}: θ_init from scratch",
              [f"trainer.max_epochs={s.init_epochs}", *network.optim, f"method.optim.lr={network.init_lr}"], ())
        train(f"{net}/std", f"2 {net}: θ_std", ft, (f"{net}/init",))
        for c in COMPOSED:
            train(f"{net}/robust/{c}", f"2 {net}: θ_{c} (severity {SEVERITY})",
                  [*ft, "method=corruption", f"method.corruptions={c}", f"method.severity={SEVERITY}"],
                  (f"{net}/init",))
        sigs = out / net / "sigs"
        robust_arg = "{" + ", ".join(f"{c}: {_export(out / net / 'robust' / c)}" for c in COMPOSED) + "}"
        steps.append(Step(f"{net}/sigs", f"3 {net}: extract shallow signatures (k={s.layers_k})", (
            "-m", "rws.stages.extract", f"init={_export(out / net / 'init')}", f"std={_export(out / net / 'std')}",
            f"robust={robust_arg}", f"out={sigs}", f"layers.k={s.layers_k}", "bits=32", "bn_policy=robust",
            f"paths.output_dir={out}", f"hydra.run.dir={sigs}/hydra"),
            done=sigs / "analysis.json", needs=(f"{net}/init", f"{net}/std", *[f"{net}/robust/{c}" for c in COMPOSED]),
            lock=lock_file(sigs), tag="extract"))
        producers[sigs] = f"{net}/sigs"
        suites = ["clean", {"name": "corruptions", "corruptions": [*COMPOSED, *OTHERS], "severities": [SEVERITY]}]
        specs = [sp for _, sp in row_specs(out, net)]
        steps.append(_eval_step(out, out / net / "eval", (f"{net}_composition", specs, suites), data, producers))
    return steps


def main(argv: list[str] | None = None) -> None:
    p = study_parser(__doc__, "outputs/rws_composition")
    p.add_argument("--networks", default=",".join(Settings().networks), help=f"some of {','.join(NETWORKS)}")
    a = p.parse_args(argv)
    nets = list(dict.fromkeys(n.strip() for n in a.networks.split(",") if n.strip()))  # in order, once each
    unknown = sorted(set(nets) - set(NETWORKS))
    if unknown or not nets:
        from rws.errors import UserError

        raise UserError(f"unknown network(s) {unknown}" if unknown else "no network given", "option --networks",
                        f"some of {list(NETWORKS)}, comma-separated")
    s = replace(Settings.smoke() if a.smoke else Settings(), networks=nets)
    out = Path(a.out).resolve()
    from rws.report.composition_tables import write_report

    print_or_run("rws_composition", plan(s, out), out, plan_info(s, out), write_report, a.print_plan)


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
