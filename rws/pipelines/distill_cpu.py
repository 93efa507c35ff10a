"""CPU-scale "Efficiently robustify pre-trained models", one command:

    python -m rws.pipelines.distill_cpu [--out outputs/distill_cpu] [--smoke] [--print-plan] [--stages train,eval,report]

On the shared CIFAR-10 JPEGs (5,000 training images): small robust teachers, a larger student
pre-trained nominally, the student distilled with three heads, and every ablation of the
supplement's Table 1 evaluated through the one engine. Steps (each a real CLI call; finished steps
are skipped on re-run, two run at once):

  train  student_base       the "pre-trained" student: resnet18_cifar (width 0.25), nominal
  train  naive_small/mid    small_cnn width 0.5 / 1, nominal (Table 6 "Naive")
  train  teacher_small/mid  the same with AugMix + JSD (method=augmix)
  train  teacher_da         small_cnn width 1 with AugMix + Noise2Net (method=augmix_da): the main teacher
  train  ours               method=distill from student_base with teacher_da (3 heads, a = 0.5)
  train  nokd               the same with kd=false (Table 1 "w/o K.D.")
  train  single             one combined head with KD (single-head ablation)
  train  finetune           one head, kd=false: plain fine-tuning of the same layers (baseline)
  train  from_small/mid     ours with the weaker teachers (Table 4)
  train  a0.1/a0.25/a1      ours with data fraction a (Fig. 1)
  train  teacher_corr, from_corr  a mechanism check: a teacher trained on the 19 corruption types
                          themselves (robust where the AugMix teachers at this scale are not), and
                          the student distilled from it
  eval   table1   clean + 19 corruptions: the student before tuning, the fine-tune baseline, Ours,
                  w/o KLD, w/o U_mc, max logit, w/o KD, single head, each head, the teacher
  eval   teachers clean + corruptions of every teacher and the students of Table 4 / Fig. 1
  eval   corr_teacher  Table 1 rows of the student of teacher_corr
  eval   flips    perturbation sequences (flip probability, mFR) of teachers and students
  report <out>/report/distill.md (rws.report.distill_tables)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from rws.pipelines.runner import Step, run, select


@dataclass(frozen=True)
class Settings:
    """Every size knob; ``smoke()`` shrinks the chain to a minutes-long end-to-end check."""
    data: str = "cifar10_jpeg"
    subset_per_class: int = 500          # training images per class (5k in all)
    val_size: int = 500                  # held out: validation and the selection thresholds
    student_model: str = "resnet18_cifar"
    student_width: float = 0.25
    student_epochs: int = 20             # the nominal pre-training of the student
    teacher_epochs: int = 15
    distill_epochs: int = 10
    tuned_stages: int = 3                # resnet18: layer4.1 (shared), pool, fc (head-specific)
    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)   # Fig. 1 (0.5 is the main run)
    n_test: int = 1000                   # test images for clean and corruption accuracy
    severities: tuple[int, ...] = (1, 3, 5)
    n_flips: int = 100                   # test images (sequences) per perturbation
    samples: int = 10                    # MC-dropout passes per head
    calib_batches: int = 4               # validation batches that set the selection thresholds
    extra: tuple[str, ...] = field(default_factory=tuple)  # overrides of every training step

    @staticmethod
    def smoke() -> "Settings":
        # 40 training images per class, 48 test images (4 for the flip sequences): the evaluations
        # corrupt every test image 19 ways in each of their 5 processes, the bulk of the run.
        return Settings(data="digits", subset_per_class=40, val_size=144, student_epochs=2, teacher_epochs=1,
                        distill_epochs=1, fractions=(1.0,), n_test=48, severities=(3,), n_flips=4, samples=4,
                        calib_batches=1, extra=("data.val_size=0.1",))


MODELS = {  # name -> (model, width, method overrides)
    "naive_small": ("small_cnn", 0.5, ()),
    "naive_mid": ("small_cnn", 1.0, ()),
    "teacher_small": ("small_cnn", 0.5, ("method=augmix",)),
    "teacher_mid": ("small_cnn", 1.0, ("method=augmix",)),
    "teacher_da": ("small_cnn", 1.0, ("method=augmix_da",)),
    # A mechanism check, not the paper's setting: trained on the 19 test corruption types themselves
    # (severities 1-5), so it is robust where the AugMix teachers at this scale are not.
    "teacher_corr": ("small_cnn", 1.0, ("method=corruption", "method.severity=[1,5]")),
}
MAIN_TEACHER = "teacher_da"


def _export(out: Path, name: str) -> str:
    return f"{{kind: export, path: {out}/{name}/export}}"


def _heads(out: Path, name: str, label: str, *, head: str | None = None, rule: str | None = None,
           opts: str = "", s: Settings) -> str:
    base = _export(out, name)
    if head is not None:
        return f"{{kind: heads, base: {base}, head: {head}, name: '{label}'}}"
    calib = f", calibration: {{split: val, batches: {s.calib_batches}}}" if rule == "mc_dropout_kl" else ""
    return (f"{{kind: heads, base: {base}, select: {{rule: {rule}, samples: {s.samples}, seed: 0{opts}{calib}}}, "
            f"name: '{label}'}}")


def ours(out: Path, name: str, label: str, s: Settings, opts: str = "") -> str:
    return _heads(out, name, label, rule="mc_dropout_kl", opts=opts, s=s)


def distill_runs(s: Settings, out: Path) -> dict[str, tuple[str, ...]]:
    """Student runs: name -> method overrides on top of method=distill."""
    teacher = lambda t: f"method.teacher={out}/{t}/export"  # noqa: E731
    runs: dict[str, tuple[str, ...]] = {
        "ours": (teacher(MAIN_TEACHER),),
        "nokd": (teacher(MAIN_TEACHER), "method.kd=false"),
        "single": (teacher(MAIN_TEACHER), "method.heads.names=[combined]"),
        "finetune": (teacher(MAIN_TEACHER), "method.kd=false", "method.heads.names=[combined]"),
        "from_small": (teacher("teacher_small"),),
        "from_mid": (teacher("teacher_mid"),),
        "from_corr": (teacher("teacher_corr"),),
    }
    for a in s.fractions:
        runs[f"a{a:g}"] = (teacher(MAIN_TEACHER), f"method.data_fraction={a:g}")
    return runs


def table1_specs(s: Settings, out: Path) -> list[str]:
    return [
        f"{{kind: export, path: {out}/student_base/export, name: 'student before tuning'}}",
        _heads(out, "finetune", "fine-tune baseline", head="combined", s=s),
        ours(out, "ours", "Ours", s),
        ours(out, "ours", "Ours w/o KLD", s, ", w_kl: 0"),
        ours(out, "ours", "Ours w/o U_mc", s, ", w_uncertainty: 0"),
        _heads(out, "ours", "Ours (max logit)", rule="max_logit", s=s),
        ours(out, "nokd", "Ours w/o K.D.", s),
        _heads(out, "single", "single head", head="combined", s=s),
        _heads(out, "ours", "clean head", head="clean", s=s),
        _heads(out, "ours", "unclean head", head="unclean", s=s),
        _heads(out, "ours", "combined head", head="combined", s=s),
        f"{{kind: export, path: {out}/{MAIN_TEACHER}/export, name: 'teacher (AugMix+DA)'}}",
    ]


def teacher_specs(s: Settings, out: Path) -> list[str]:
    specs = [f"{{kind: export, path: {out}/{t}/export, name: '{t}'}}" for t in MODELS]
    specs += [ours(out, "from_small", "student from teacher_small", s),
              ours(out, "from_mid", "student from teacher_mid", s)]
    specs += [ours(out, f"a{a:g}", f"Ours a={a:g}", s) for a in s.fractions]
    return specs


def corr_teacher_specs(s: Settings, out: Path) -> list[str]:
    """The Table 1 rows of the student distilled from the corruption-trained teacher."""
    run, t = "from_corr", "corruption teacher"
    return [f"{{kind: export, path: {out}/teacher_corr/export, name: 'teacher_corr'}}",
            ours(out, run, f"Ours ({t})", s), ours(out, run, f"Ours w/o KLD ({t})", s, ", w_kl: 0"),
            ours(out, run, f"Ours w/o U_mc ({t})", s, ", w_uncertainty: 0"),
            _heads(out, run, f"Ours (max logit) ({t})", rule="max_logit", s=s),
            *[_heads(out, run, f"{h} head ({t})", head=h, s=s) for h in ("clean", "unclean", "combined")]]


def flip_specs(s: Settings, out: Path) -> list[str]:
    specs = [f"{{kind: export, path: {out}/{t}/export, name: '{t}'}}" for t in MODELS]
    return specs + [f"{{kind: export, path: {out}/student_base/export, name: 'student before tuning'}}",
                    _heads(out, "finetune", "fine-tune baseline", head="combined", s=s),
                    ours(out, "ours", "Ours", s)]


def plan(s: Settings, out: Path) -> list[Step]:
    env = {"OMP_NUM_THREADS": "1"}  # two steps at once, one core each
    data = (f"data={s.data}", f"data.subset_per_class={s.subset_per_class or 'null'}")
    if s.data != "digits":
        data += (f"data.val_size={s.val_size}",)
    common = ("-m", "rws.cli.train", *data, f"paths.output_dir={out}", "trainer.enable_progress_bar=false", *s.extra)

    def train(name: str, title: str, *ovr: str, needs: tuple[str, ...] = ()) -> Step:
        return Step(name, title, (*common, *ovr, f"hydra.run.dir={out}/{name}", f"run_name={name}"),
                    done=out / name / "export/metrics.json", needs=needs, env=env, log=out / "logs" / f"{name}.log",
                    tag="train")

    steps = [train("student_base", "pre-train the student (nominal)", f"model={s.student_model}",
                   f"model.width={s.student_width}", f"trainer.max_epochs={s.student_epochs}")]
    for name, (model, width, ovr) in MODELS.items():
        steps.append(train(name, f"train {name}", f"model={model}", f"model.width={width}", *ovr,
                           f"trainer.max_epochs={s.teacher_epochs}"))
    for name, ovr in distill_runs(s, out).items():
        teacher = next(o.split("/")[-2] for o in ovr if o.startswith("method.teacher="))
        steps.append(train(name, f"distill into the student: {name}", f"model={s.student_model}",
                           f"model.width={s.student_width}", "method=distill",
                           f"method.student={out}/student_base/export", f"method.heads.tuned_stages={s.tuned_stages}",
                           # every student sees the main teacher's augmentation (AugMix + Noise2Net)
                           "method.augment.noise2net={fraction: 0.5}", *ovr, f"trainer.max_epochs={s.distill_epochs}", needs=("student_base", teacher)))

    sev = ",".join(str(v) for v in s.severities)
    corruption_suites = f"suites=[clean,{{name: corruptions, corruptions: all, severities: [{sev}]}}]"
    evaluate = ("-m", "rws.cli.evaluate", *data, f"data.test_subset={s.n_test}", f"paths.output_dir={out}",
                "print_table=false", "progress=false")
    students = tuple(distill_runs(s, out))
    for shard in (0, 1):
        steps.append(Step(f"table1_{shard}", f"evaluate the Table 1 rows (shard {shard + 1}/2)",
                          (*evaluate, f"specs=[{','.join(table1_specs(s, out))}]", corruption_suites,
                           f"shard={shard}/2", f"out={out}/eval/table1"),
                          needs=("student_base", MAIN_TEACHER, "ours", "nokd", "single", "finetune"), env=env,
                          log=out / "logs" / f"table1_{shard}.log", tag="eval"))
    steps.append(Step("teachers", "evaluate teachers and the Table 4 / Fig. 1 students",
                      (*evaluate, f"specs=[{','.join(teacher_specs(s, out))}]", corruption_suites,
                       f"out={out}/eval/teachers"),
                      needs=(*MODELS, *students), env=env, log=out / "logs/teachers.log", tag="eval"))
    steps.append(Step("corr_teacher", "evaluate the student of the corruption-trained teacher",
                      (*evaluate, f"specs=[{','.join(corr_teacher_specs(s, out))}]", corruption_suites,
                       f"out={out}/eval/corr_teacher"),
                      needs=("teacher_corr", "from_corr"), env=env, log=out / "logs/corr_teacher.log", tag="eval"))
    steps.append(Step("flips", "flip probability on perturbation sequences",
                      ("-m", "rws.cli.evaluate", *data, f"data.test_subset={s.n_flips}", f"paths.output_dir={out}",
                       "print_table=false", "progress=false", f"specs=[{','.join(flip_specs(s, out))}]",
                       "suites=[{name: perturbations, perturbations: test}]", f"out={out}/eval/flips"),
                      needs=(*MODELS, "student_base", "finetune", "ours"), env=env, log=out / "logs/flips.log",
                      tag="eval"))
    steps.append(Step("report", "tables", ("-m", "rws.report.distill_tables", str(out), "--out", str(out / "report")),
                      needs=("table1_0", "table1_1", "teachers", "corr_teacher", "flips"), log=out / "logs/report.log",
                      tag="report"))
    return steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/distill_cpu")
    p.add_argument("--smoke", action="store_true",
                   help="digits (40 images per class), 1-2 epochs, 48 test images: a minutes-long end-to-end check")
    p.add_argument("--print-plan", action="store_true", help="print every command and exit")
    p.add_argument("--stages", default="train,eval,report",
                   help="comma-separated stages to run (train, eval, report); the others are taken as done")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    s = Settings.smoke() if a.smoke else Settings()
    steps = plan(s, out)
    if a.print_plan:
        for st in steps:
            print(f"# {st.title}\n{st.shell()}\n")
        return
    t0 = time.time()
    run(select(steps, a.stages.split(",")), record_dir=out / ".steps", jobs=2)
    report = out / "report" / "distill.md"
    if report.exists():
        print(report.read_text())
    print(f"distill_cpu finished in {time.time() - t0:.0f}s; results in {out}/eval, report in {report}")


if __name__ == "__main__":
    from rws.cli.entry import script_entry

    script_entry(main)
