"""Distillation students ("Efficiently robustify pre-trained models"): stages, the multi-head
student, MC-dropout head selection and its rules, the distill method, exports and the driver's plan."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rws.models import create_model, list_models
from rws.models.contracts import HeadSelection, forward_heads, head_names, recording_choices
from rws.models.head_selection import (calibrate_mc_dropout_kl, kl_divergence, max_logit, mc_dropout_kl,
                                       selection_score, uncertainty)
from rws.models.multihead import MultiHeadStudent, heads_options, split_points
from rws.models.stages import model_stages, run_stages

ROOT = Path(__file__).resolve().parents[1]
STAGE_MODELS = [n for n in list_models() if n not in ("preact_resnet18", "wrn28_10")]


def _kw(name: str) -> dict:
    return {"width": 0.25} if name in ("vgg16", "vgg16_bn", "resnet18_cifar", "resnet50_cifar") else {}


@pytest.mark.parametrize("name", STAGE_MODELS)
def test_stages_compose_to_the_forward_pass(name: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, 10, **_kw(name)).eval()
    x = torch.rand(2, 3, 64 if name == "resnet50" else 32, 64 if name == "resnet50" else 32)
    stages = model_stages(m.net)
    assert len(stages) >= 3
    with torch.no_grad():
        assert torch.equal(run_stages(stages, (x - m.mean) / m.std), m(x))
    # Every parameter of the network belongs to some stage.
    owned = {id(p) for _, s in stages for p in s.parameters()}
    assert owned == {id(p) for p in m.net.parameters()}


def test_timm_fallback_stages_and_unsupported_network() -> None:
    m = create_model("timm/convnext_atto", 10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(run_stages(model_stages(m.net), (x - m.mean) / m.std), m(x))
    with pytest.raises(ValueError, match="no stage decomposition"):
        model_stages(torch.nn.Linear(3, 3))


def test_split_points_closest_suffix() -> None:
    counts = [100, 200, 300, 50, 0, 10]  # total 660
    assert split_points(counts, heads_options({"tuned_stages": 3})) == (3, 1)
    # 10 % of 660 = 66: the suffix [50, 0, 10] = 60 is closest; its 20 % (12): [10]
    assert split_points(counts, heads_options({"tuned_fraction": 0.1})) == (3, 1)
    assert split_points(counts, heads_options({"tuned_fraction": 0.1, "head_fraction": 1.0})) == (3, 3)
    with pytest.raises(ValueError, match="only 6 stages"):
        split_points(counts, heads_options({"tuned_stages": 7}))


@pytest.mark.parametrize("bad, match", [({"tuned_stages": 2, "tuned_fraction": 0.1}, "not both"),
                                        ({"names": ["a", "a"]}, "distinct"), ({"default": "x"}, "not one of"),
                                        ({"dropout": 1.0}, "dropout"), ({"tuned_fraction": 0}, "tuned_fraction"),
                                        ({"head_fraction": 2}, "head_fraction"), ({"bogus": 1}, "unknown key")])
def test_heads_options_errors(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        heads_options(bad)


def _student(seed: int = 0, **heads) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18_cifar", 10, width=0.25, heads={"tuned_stages": 3, **heads})


def test_student_layout_only_tuned_layers_train() -> None:
    m = _student()
    s = m.net
    assert isinstance(s, MultiHeadStudent) and s.heads == ("clean", "unclean", "combined")
    assert s.split == {"stages": 11, "frozen_stages": 8, "shared_stages": 2, "head_stages": 1, "head_stage_names": ["fc"]}
    # Every head starts as the pre-trained head.
    assert all(torch.equal(s.head_nets["clean"][1][1].weight, s.head_nets[h][1][1].weight) for h in s.heads)
    m.train()
    assert all(not mod.training for mod in s.frozen.modules())  # BN statistics of the trunk stay fixed
    x = torch.rand(4, 3, 32, 32)
    sum(v.sum() for v in forward_heads(m, x).values()).backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith(("net.shared.", "net.head_nets.")) for n in with_grad)
    assert all(not p.requires_grad for p in s.frozen.parameters())
    assert s.parameter_counts["trainable"] == sum(p.numel() for n, p in m.named_parameters() if p.requires_grad)


def test_mc_dropout_runs_the_trunk_once_and_matches_full_passes() -> None:
    m = _student().eval()
    x = torch.rand(8, 3, 32, 32)
    calls = []
    m.net.frozen[0].register_forward_hook(lambda *a: calls.append(1))
    fast = HeadSelection(m, rule="max_confidence", samples=10, seed=3)
    naive = HeadSelection(m, rule="max_confidence", samples=10, seed=3, share_trunk=False)
    with torch.no_grad():
        p_fast = fast.head_probabilities(x)
        assert len(calls) == 1
        p_naive = naive.head_probabilities(x)
        assert len(calls) == 11
    assert p_fast.shape == (10, 3, 8, 10)
    torch.testing.assert_close(p_fast, p_naive, rtol=0, atol=1e-6)
    # Dropout on: the passes differ; flags restored afterwards.
    assert not torch.allclose(p_fast[0], p_fast[1])
    assert all(not d.training for d in m.net.mc_dropout_layers())
    # Dropout off (one pass, or p = 0): every pass is the plain forward.
    one = HeadSelection(m, rule="max_confidence", samples=1).head_probabilities(x)
    with torch.no_grad():
        plain = torch.stack([v.softmax(-1) for v in forward_heads(m, x).values()])
    torch.testing.assert_close(one[0], plain)
    m0 = _student(dropout=0.0).eval()
    p0 = HeadSelection(m0, rule="max_confidence", samples=5).head_probabilities(x)
    assert torch.allclose(p0[0], p0[4])


def _probs(clean: list[list[float]], unclean: list[list[float]], combined: list[list[float]] | None = None,
           samples: int = 1) -> torch.Tensor:
    """(S, H, B, C) from per-example distributions of each head (same in every sample)."""
    heads = [clean, unclean] + ([combined] if combined is not None else [])
    return torch.tensor(heads, dtype=torch.float64).unsqueeze(0).repeat(samples, 1, 1, 1)


HEADS = ("clean", "unclean", "combined")


def test_selection_scores_by_hand() -> None:
    clean = [[0.9, 0.1], [0.5, 0.5]]
    unclean = [[0.9, 0.1], [0.1, 0.9]]
    p = _probs(clean, unclean, clean)
    u = torch.tensor([-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), math.log(2)], dtype=torch.float64)
    kl = torch.tensor([0.0, 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9)], dtype=torch.float64)
    torch.testing.assert_close(uncertainty(p[:, 0]), u)
    torch.testing.assert_close(kl_divergence(p[0, 0], p[0, 1]), kl)
    torch.testing.assert_close(selection_score(p, HEADS, 1.0, 0.0), u)          # w/o KLD: the U term only
    torch.testing.assert_close(selection_score(p, HEADS, 0.0, 1.0), kl)         # w/o U_mc: the KL term only
    torch.testing.assert_close(selection_score(p, HEADS, 2.0, 3.0, u_ref=4.0, kl_ref=0.5), 2 * u / 4 + 3 * kl / 0.5)
    # The confident, agreeing example goes to clean, the unsure, disagreeing one to unclean.
    assert mc_dropout_kl(p, HEADS, threshold=0.5).tolist() == [0, 1]
    # A band below the threshold goes to the combined head.
    assert mc_dropout_kl(p, HEADS, threshold=5.0, combined_threshold=0.5).tolist() == [0, 2]
    with pytest.raises(ValueError, match="needs a threshold"):
        mc_dropout_kl(p, HEADS)


def test_mutual_information_is_zero_without_disagreement_between_passes() -> None:
    p = _probs([[0.5, 0.5]], [[0.5, 0.5]], samples=4)
    assert float(uncertainty(p[:, 0], "mutual_info")) == pytest.approx(0.0, abs=1e-12)
    q = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]], dtype=torch.float64)  # two passes, opposite answers
    assert float(uncertainty(q[:, 0], "mutual_info")) == pytest.approx(math.log(2), rel=1e-9)


def test_max_logit_picks_the_more_confident_of_clean_and_unclean() -> None:
    p = _probs([[0.6, 0.4], [0.99, 0.01]], [[0.95, 0.05], [0.7, 0.3]], [[1.0, 0.0], [1.0, 0.0]])
    assert max_logit(p, HEADS).tolist() == [1, 0]  # the combined head never answers


def test_calibration_sets_quantile_threshold_and_scales() -> None:
    torch.manual_seed(0)
    clean = torch.softmax(torch.randn(200, 5) * 3, -1)
    unclean = torch.softmax(torch.randn(200, 5) * 3, -1)
    p = torch.stack([clean, unclean]).unsqueeze(0).double()
    heads = ("clean", "unclean")
    opts = calibrate_mc_dropout_kl(p, heads, quantile=0.8)
    u, kl = uncertainty(p[:, 0]), kl_divergence(p[0, 0], p[0, 1])
    assert opts["u_ref"] == pytest.approx(float(u.mean())) and opts["kl_ref"] == pytest.approx(float(kl.mean()))
    score = u / u.mean() + kl / kl.mean()
    assert opts["threshold"] == pytest.approx(float(torch.quantile(score, 0.8)))
    sent = mc_dropout_kl(p, heads, **opts)
    assert float((sent == 1).double().mean()) == pytest.approx(0.2, abs=0.01)
    # A given threshold is kept.
    assert "threshold" not in calibrate_mc_dropout_kl(p, heads, threshold=1.0)


def test_heads_specs_export_round_trip_routing_rows_and_errors(tmp_path: Path) -> None:
    from rws.data import DigitsDataModule
    from rws.evaluation.engine import evaluate_suite
    from rws.evaluation.sources import TestStream
    from rws.specs import BuildContext, SpecError, build
    from rws.weights.export import save_export

    m = _student().eval()
    cfg = {"_target_": "rws.models.create_model", "name": "resnet18_cifar", "num_classes": 10, "width": 0.25,
           "heads": {"tuned_stages": 3}}
    save_export(tmp_path / "export", m, cfg, metrics={})
    base = {"kind": "export", "path": str(tmp_path / "export")}
    rebuilt = build(base)
    x = torch.rand(4, 3, 32, 32)
    assert head_names(rebuilt) == HEADS
    with torch.no_grad():
        for h, v in forward_heads(m, x).items():
            assert torch.equal(forward_heads(rebuilt, x)[h], v)
        assert torch.equal(rebuilt(x), m(x))  # the default head (combined)
    with pytest.raises(SpecError, match="unknown head 'robust'; valid heads: clean, unclean, combined"):
        build({"kind": "heads", "base": base, "head": "robust"})
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    spec = {"kind": "heads", "base": base,
            "select": {"rule": "mc_dropout_kl", "samples": 3, "calibration": {"split": "val", "batches": 2}}}
    sel = build(spec, context=BuildContext(data=dm))
    assert sel.rule_options["threshold"] > 0 and sel.rule_options["u_ref"] > 0
    src = TestStream(dm, 64)
    results = evaluate_suite(sel, {"name": "clean"}, src)
    by = {r["metric"]: r["value"] for res in results for r in res.rows}
    with recording_choices(sel) as chosen:
        with torch.no_grad():
            preds, ys = [], []
            for xb, yb in src.batches():
                preds.append(sel(xb).argmax(1))
                ys.append(yb)
    choice = torch.cat(chosen)
    assert by["acc"] == pytest.approx(float((torch.cat(preds) == torch.cat(ys)).double().mean()))
    assert by["f_correct"] == pytest.approx(float((choice == 0).double().mean()))
    assert sum(by[f"head_frac:{h}"] for h in HEADS) == pytest.approx(1.0)
    with pytest.raises(SpecError, match="split must be 'train'"):
        build({**spec, "select": {**spec["select"], "calibration": {"split": "test", "batches": 1}}})


def test_kd_loss_matches_the_formula_and_timm() -> None:
    from rws.methods.distill import kd_loss

    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    T = 4.0
    pt = F.softmax(t / T, -1)
    expected = (pt * (pt.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(kd_loss(s, t, T), expected)
    # timm's LogitDistillationTask formula (timm/task/distillation.py), written as it is there.
    timm_value = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean",
                          log_target=True) * T ** 2
    torch.testing.assert_close(kd_loss(s, t, T), timm_value)


def _export(tmp_path: Path, name: str, model: torch.nn.Module, cfg: dict) -> Path:
    from rws.weights.export import save_export

    save_export(tmp_path / name, model, cfg, metrics={})
    return tmp_path / name


def test_distill_step_sends_each_loss_to_its_head(tmp_path: Path) -> None:
    from rws.methods.distill import DistillModule, kd_loss

    cfg = {"_target_": "rws.models.create_model", "name": "resnet18_cifar", "num_classes": 10, "width": 0.25}
    torch.manual_seed(0)
    student = _export(tmp_path, "student", create_model(**{k: v for k, v in cfg.items() if k != "_target_"}), cfg)
    tcfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10, "width": 0.25}
    teacher = _export(tmp_path, "teacher", create_model("small_cnn", 10, width=0.25), tcfg)
    method = DistillModule(model=cfg, teacher=str(teacher), student=str(student), heads={"tuned_stages": 3},
                           data_fraction=0.5, augment={"augmix": {}}, seed=0)
    # The student starts as the pre-trained export: each head equals the base model.
    from rws.weights.export import load_export

    base = create_model("resnet18_cifar", 10, width=0.25).eval()
    base.load_state_dict(load_export(student).state_dict)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    method.model.eval()
    with torch.no_grad():
        for v in forward_heads(method.model, x).values():
            torch.testing.assert_close(v, base(x))
    method.model.train()
    seen, io = {}, {}
    for h, net in method.model.net.head_nets.items():
        def hook(mod, inp, out, h=h):
            seen.setdefault(h, []).append(len(inp[0]))
            io[h] = (inp[0].detach(), out.detach())
        net.register_forward_hook(hook)
    out = method.step(x, y)
    assert seen == {"clean": [8], "unclean": [4], "combined": [12]}
    assert set(out.logs) == {"train/loss_clean", "train/loss_unclean", "train/loss_combined", "train/augmented"}
    total = sum(out.logs[f"train/loss_{h}"][0] for h in HEADS)
    torch.testing.assert_close(out.loss.detach(), total)
    # The clean head reads the clean images' features (the first 8 rows the combined head reads), its
    # loss is CE against the labels; the unclean head reads the augmented rows.
    torch.testing.assert_close(io["clean"][0], io["combined"][0][:8])
    torch.testing.assert_close(io["unclean"][0], io["combined"][0][8:])
    torch.testing.assert_close(out.logs["train/loss_clean"][0], F.cross_entropy(io["clean"][1], y))
    assert kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 4.0) == 0
    # Ablations: w/o KD needs no teacher; single head learns from both losses.
    nokd = DistillModule(model=cfg, teacher=None, student=str(student), kd=False, heads={"tuned_stages": 3})
    assert nokd.teacher_spec is None and nokd._teacher == []
    single = DistillModule(model=cfg, teacher=str(teacher), student=str(student),
                           heads={"tuned_stages": 3, "names": ["combined"]})
    assert set(single.step(x, y).logs) == {"train/loss_combined", "train/augmented"}


@pytest.mark.parametrize("kw, match", [({"teacher": None}, "needs a teacher"), ({"student": None}, "method.student"),
                                       ({"data_fraction": 0}, "data_fraction"), ({"temperature": 0}, "temperature"),
                                       ({"augment": {"augmix": None, "noise2net": None}}, "at least one"),
                                       ({"augment": {"cutout": {}}}, "unknown key")])
def test_distill_config_errors(kw: dict, match: str) -> None:
    from rws.methods.distill import DistillModule

    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    args = {"model": cfg, "teacher": "t", "student": "s", **kw}
    with pytest.raises(ValueError, match=match):
        DistillModule(**args)


def test_train_distill_end_to_end_on_digits(tmp_path: Path) -> None:
    """train.py: a nominal student and teacher, then method=distill with AugMix+Noise2Net; the export
    rebuilds with its three heads and logs the tuned parameter count."""
    import json

    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    common = [sys.executable, str(ROOT / "train.py"), "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
              "logger=csv", f"paths.output_dir={tmp_path}"]
    for name, model in (("base", "model=resnet18_cifar"), ("teacher", "model=small_cnn")):
        subprocess.run([*common, model, "model.width=0.25", f"hydra.run.dir={tmp_path}/{name}"], check=True,
                       env=env, capture_output=True)
    r = subprocess.run([*common, "model=resnet18_cifar", "model.width=0.25", "method=distill",
                        f"method.teacher={tmp_path}/teacher/export", f"method.student={tmp_path}/base/export",
                        "method.heads.tuned_stages=3", "method.augment.noise2net={fraction: 0.5}",
                        f"hydra.run.dir={tmp_path}/student"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "student/export/metrics.json").read_text())["metrics"]
    from rws.specs import build

    student = build({"kind": "export", "path": str(tmp_path / "student/export")})
    assert head_names(student) == HEADS
    assert metrics["student/params_trainable"] == student.net.parameter_counts["trainable"]
    assert metrics["test/acc"] > 0.5
    assert metrics["train/loss_unclean"] > 0


def test_distill_cpu_plan_composes(tmp_path: Path) -> None:
    from rws.config import compose
    from rws.pipelines.distill_cpu import Settings, plan
    from rws.pipelines.runner import check_plan

    for s in (Settings(), Settings.smoke()):
        steps = plan(s, tmp_path)
        check_plan(steps)
        for st in steps:
            app = st.hydra_app()
            if app is not None:
                cfg = compose(*app)
                if app[0] == "evaluate":
                    assert cfg["specs"]
    names = [st.name for st in plan(Settings(), tmp_path)]
    assert {"student_base", "teacher_da", "ours", "nokd", "single", "finetune", "table1_0", "flips", "report"} <= set(names)


DISTILL_PRESETS = {  # preset -> (data, model name, method, tuned fraction of the image tower within)
    "clip_vit_b16_imagenet": ("imagenet", "timm/vit_base_patch16_clip_224.openai_ft_in1k", "distill", (0.08, 0.1)),
    "clip_vit_l14_336_imagenet": ("imagenet", "timm/vit_large_patch14_clip_336.openai_ft_in12k_in1k", "distill",
                                  (0.04, 0.05)),
    "teacher_resnet50_imagenet": ("imagenet", "resnet50", "augmix_da", None),
    "teacher_vit_s16_imagenet": ("imagenet", "timm/vit_small_patch16_224", "augmix_da", None),
    "cpu": ("cifar10_jpeg", "resnet18_cifar", "distill", None),
}


def test_every_distill_preset_is_covered() -> None:
    from rws.config import CONF_DIR

    assert {p.stem for p in (CONF_DIR / "experiment/distill").glob("*.yaml")} == set(DISTILL_PRESETS)


@pytest.mark.parametrize("name", sorted(DISTILL_PRESETS))
def test_distill_preset_composes_and_builds(name: str) -> None:
    """Structure-only builds (meta device): no weights are downloaded, no teacher is read."""
    from rws.config import compose
    from rws.training import build_method

    data, model, method, fraction = DISTILL_PRESETS[name]
    extra = ["model.pretrained=false", "method.student=/nonexistent", "method.teacher=/nonexistent"]
    cfg = compose("train", [f"experiment=distill/{name}", *(extra if method == "distill" else ["model.pretrained=false"])])
    assert (cfg.data.name, cfg.model.name, cfg.method.name) == (data, model, method)
    with torch.device("meta"):
        module = build_method(cfg)
    if method == "distill":
        student = module.model.net
        assert student.heads == HEADS and cfg.method.optim.name == "adam" and cfg.method.optim.lr == 1e-3
        counts = student.parameter_counts
        if fraction is not None:
            assert fraction[0] <= counts["base_tuned"] / counts["base_total"] <= fraction[1]
            assert student.split["head_stage_names"] == ["pre_logits", "head"]  # each head owns its final norm
        assert all(not p.requires_grad for p in student.frozen.parameters())
    else:
        assert cfg.method.noise2net.fraction == 0.5


def _row(model: str, suite: str, condition: str, level, metric: str, value: float) -> dict:
    return {"model": model, "spec_id": model, "suite": suite, "condition": condition, "level": level,
            "metric": metric, "value": value, "n": 100}


def test_distill_report_from_hand_made_rows(tmp_path: Path) -> None:
    from rws.evaluation.results import ResultsWriter
    from rws.report.distill_tables import claims, fraction_curve, per_model, report

    rows = []
    for model, clean, corr, fc in (("Ours", 0.9, 0.6, 0.8), ("Ours w/o KLD", 0.9, 0.58, 0.7),
                                   ("Ours w/o U_mc", 0.9, 0.55, 0.6), ("Ours (max logit)", 0.9, 0.61, 0.5),
                                   ("Ours w/o K.D.", 0.9, 0.5, 0.8), ("Ours a=0.1", 0.8, 0.4, None),
                                   ("Ours a=1", 0.85, 0.7, None), ("teacher_small", 0.5, 0.3, None),
                                   ("student from teacher_small", 0.8, 0.45, None), ("teacher_mid", 0.6, 0.4, None),
                                   ("student from teacher_mid", 0.8, 0.5, None), ("teacher_da", 0.6, 0.5, None)):
        rows.append(_row(model, "clean", "clean", "", "acc", clean))
        rows += [_row(model, "corruptions", c, 3, "acc", corr + d) for c, d in (("fog", 0.1), ("gaussian_noise", -0.1))]
        if fc is not None:
            rows.append(_row(model, "clean", "clean", "", "f_correct", 0.9))
            rows += [_row(model, "corruptions", c, 3, "f_correct", fc) for c in ("fog", "gaussian_noise")]
    models = per_model(rows)
    assert models["Ours"]["corruptions"] == pytest.approx(0.6) and models["Ours"]["f_correct_shift"] == pytest.approx(0.8)
    verdicts = {c: v for c, v, _ in claims(models, [])}
    assert verdicts["Ours beats Ours w/o KLD on corruptions"] == "held"            # 60 vs 58
    assert verdicts["Ours beats Ours (max logit) on corruptions"] == "did not hold"  # 60 vs 61
    assert verdicts["removing U_mc costs more than removing KLD"] == "held"        # 5 vs 2 points
    assert verdicts["a stronger teacher gives a stronger student (Table 4)"] == "held"  # 45 < 50 < 60
    assert verdicts["more distillation data helps (Fig. 1)"] == "held"
    assert [(a, c) for a, _, c in fraction_curve(models)] == [(0.1, pytest.approx(0.4)), (0.5, pytest.approx(0.6)),
                                                            (1.0, pytest.approx(0.7))]
    import json

    ResultsWriter(tmp_path / "eval" / "table1").write(rows)
    text = report(tmp_path, tmp_path / "report")
    assert "| Ours | 90.0 | 60.0 |" in text and (tmp_path / "report/fraction_curve.png").exists()
    assert json.loads((tmp_path / "report/distill.json").read_text())["fraction"][0][0] == 0.1
