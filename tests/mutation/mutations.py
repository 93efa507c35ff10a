"""The deliberate breakages ``run_mutations.py`` applies, one at a time, to a copy of the repository.

Each ``Mutation`` replaces ``old`` (which must occur exactly once in ``file``) by ``new`` and runs only
``tests`` (pytest arguments: node ids or files under tests/, optionally ``-k`` and an expression).
The tests must then fail. When the code changes so that ``old`` is no longer found exactly once, the
runner stops with an error naming the mutation: update ``old``/``new`` here, never drop the check.

This module must not import ``rws``: the runner imports it before forking the pytest processes, and
those must import the mutated copy of ``rws``, not this checkout's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str              # path relative to the repository root
    old: str               # exact text, must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: node ids / files (tests/...), "-k", "<expr>"
    why: str = ""          # what the breakage stands for
    slow: bool = False     # scheduled first (long tests), so the two workers finish together
    tags: tuple[str, ...] = field(default=())


MUTATIONS: list[Mutation] = []


def add(*args, **kw) -> None:
    MUTATIONS.append(Mutation(*args, **kw))


# ---------------------------------------------------------------------------------------- sanity
# Proves that the pytest processes import the copy's rws (PYTHONPATH=<copy>), not the editable install
# of this checkout: if they imported the original, this import error would never happen and the
# mutation would survive. (The runner also checks rws.__file__ after every session.)
add("sanity_copy_is_imported", "rws/__init__.py",
    '__version__ = "0.1.0"\n',
    '__version__ = "0.1.0"\nraise RuntimeError("mutation sanity check: the mutated copy of rws is imported")\n',
    ("tests/test_grid.py::test_convex_three_model_grid_has_21",),
    why="the copy's rws, not the installed one, is under test", tags=("sanity",))

# ----------------------------------------------------------------------------------- corruptions
# name -> (file, the def line of the batched implementation)
CORRUPTION_DEFS: dict[str, tuple[str, str]] = {
    "gaussian_noise": ("rws/corruptions/noise.py", "def gaussian_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "shot_noise": ("rws/corruptions/noise.py", "def shot_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "impulse_noise": ("rws/corruptions/noise.py", "def impulse_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "speckle_noise": ("rws/corruptions/noise.py", "def speckle_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "defocus_blur": ("rws/corruptions/blur.py", "def defocus_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "glass_blur": ("rws/corruptions/blur.py", "def glass_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "motion_blur": ("rws/corruptions/blur.py", "def motion_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "zoom_blur": ("rws/corruptions/blur.py", "def zoom_blur(x: Tensor, c: list, g: Gen, table: str) -> Tensor:"),
    "gaussian_blur": ("rws/corruptions/blur.py", "def gaussian_blur(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "snow": ("rws/corruptions/weather.py", "def snow(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "frost": ("rws/corruptions/weather.py", "def frost(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "fog": ("rws/corruptions/weather.py", "def fog(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "spatter": ("rws/corruptions/weather.py", "def spatter(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "brightness": ("rws/corruptions/digital.py", "def brightness(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "contrast": ("rws/corruptions/digital.py", "def contrast(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "saturate": ("rws/corruptions/digital.py", "def saturate(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:"),
    "elastic_transform": ("rws/corruptions/digital.py", "def elastic_transform(x: Tensor, c, g: Gen, table: str) -> Tensor:"),
    "pixelate": ("rws/corruptions/digital.py", "def pixelate(x: Tensor, c: float, g: Gen, table: str) -> Tensor:"),
    "jpeg_compression": ("rws/corruptions/jpeg.py", "def jpeg_compression(x: Tensor, c: int, g: Gen, table: str) -> Tensor:"),
}

# The tests that pin each corruption's output: the reference fidelity test (PSNR against
# imagecorruptions at severities 1/3/5) and the closed-form guards, both filtered to the corruption.
def corruption_tests(name: str) -> tuple[str, ...]:
    return ("tests/test_corruption_fidelity.py", "-k", name)


for _name, (_file, _def) in CORRUPTION_DEFS.items():
    add(f"corruption_identity[{_name}]", _file, _def + "\n", _def + "\n    return x.clone()  # MUTANT: identity\n",
        corruption_tests(_name), why=f"{_name} returns the clean image", tags=("corruption",))
    # Severity s reads the parameters of s + 1 (5 reads 1): the table index shifted by one.
    add(f"corruption_severity_shift[{_name}]", "rws/corruptions/api.py",
        "    c = params(key, int(severity), table)\n",
        f"    c = params(key, int(severity) % 5 + 1 if key == {_name!r} else int(severity), table)  # MUTANT\n",
        corruption_tests(_name), why=f"{_name} at severity s uses the parameters of severity s+1",
        tags=("corruption",))

# --------------------------------------------------------------------------------------- attacks
ATTACK_TESTS = "tests/test_attacks.py::test_attack_respects_threat_and_lowers_accuracy"

for _norm, _case in (("linf", "pgd-threat0"), ("l2", "pgd-threat1")):
    add(f"pgd_{_norm}_noop", "rws/attacks/pgd.py",
        "        self.last_targets = target\n        return x + delta\n",
        f"        self.last_targets = target\n        return x if t.norm == {_norm!r} else x + delta  # MUTANT\n",
        (f"{ATTACK_TESTS}[{_case}]",), why=f"PGD ({_norm}) returns the clean input", tags=("attack",))
    add(f"pgd_{_norm}_one_step", "rws/attacks/pgd.py",
        "        for _ in range(self.steps):\n",
        f"        for _ in range(1 if t.norm == {_norm!r} else self.steps):  # MUTANT\n",
        (f"{ATTACK_TESTS}[{_case}]",), why=f"PGD ({_norm}) takes a single step",
        tags=("attack",))
    add(f"apgd_{_norm}_noop", "rws/attacks/apgd.py",
        "        self.last_correct = correct\n        return x_best\n",
        f"        self.last_correct = correct\n        return x if t.norm == {_norm!r} else x_best  # MUTANT\n",
        (f"tests/test_guards.py::test_apgd_breaks_the_tiny_model[{_norm}]",),
        why=f"APGD ({_norm}, E-AT's training attack) returns the clean input", tags=("attack",))
    add(f"apgd_{_norm}_one_step", "rws/attacks/apgd.py",
        "        for i in range(n):\n",
        f"        for i in range(1 if t.norm == {_norm!r} else n):  # MUTANT\n",
        (f"tests/test_guards.py::test_apgd_breaks_the_tiny_model[{_norm}]",),
        why=f"APGD ({_norm}) takes a single step", tags=("attack",))

add("l1_apgd_noop", "rws/attacks/l1_apgd.py",
    "        self.last_correct = correct\n        return x_best\n",
    "        self.last_correct = correct\n        return x  # MUTANT\n",
    (f"{ATTACK_TESTS}[pgd-threat2]",), why="l1-APGD returns the clean input", tags=("attack",))
add("l1_apgd_one_step", "rws/attacks/l1_apgd.py",
    "        for i in range(self.steps):\n",
    "        for i in range(1):  # MUTANT\n",
    ("tests/test_guards.py::test_l1_apgd_needs_its_iterations",), why="l1-APGD takes a single step",
    tags=("attack",))
add("fgsm_rs_noop", "rws/attacks/one_step.py",
    "        return x + project(x, delta + self.step_size * eps * grad.sign(), self.threat)\n",
    "        return x.clone()  # MUTANT\n",
    (f"{ATTACK_TESTS}[fgsm_rs-threat5]",), why="FGSM-RS returns the clean input", tags=("attack",))
add("fgsm_rs_no_step", "rws/attacks/one_step.py",
    "        return x + project(x, delta + self.step_size * eps * grad.sign(), self.threat)\n",
    "        return x + delta  # MUTANT\n",
    (f"{ATTACK_TESTS}[fgsm_rs-threat5]",), why="FGSM-RS keeps its random start but takes no gradient step",
    tags=("attack",))
add("n_fgsm_noop", "rws/attacks/one_step.py",
    "        return (x + delta + self.step_size * eps * grad.sign()).clamp(0, 1)\n",
    "        return x.clone()  # MUTANT\n",
    (f"{ATTACK_TESTS}[n_fgsm-threat6]",), why="N-FGSM returns the clean input", tags=("attack",))
add("n_fgsm_no_step", "rws/attacks/one_step.py",
    "        return (x + delta + self.step_size * eps * grad.sign()).clamp(0, 1)\n",
    "        return (x + delta).clamp(0, 1)  # MUTANT\n",
    (f"{ATTACK_TESTS}[n_fgsm-threat6]",), why="N-FGSM keeps its noise but takes no gradient step",
    tags=("attack",))
add("torchattacks_pgd_noop", "rws/attacks/pgd.py",
    "            x_adv = atk(x.detach(), y.detach())\n",
    "            x_adv = x.detach().clone()  # MUTANT\n",
    (f"{ATTACK_TESTS}[torchattacks-threat3]",), why="the torchattacks PGD wrapper returns the clean input",
    tags=("attack",))
add("torchattacks_pgd_one_step", "rws/attacks/pgd.py",
    "            atk = cls(model, eps=t.eps, alpha=self.step_size * t.eps, steps=self.steps,\n",
    "            atk = cls(model, eps=t.eps, alpha=self.step_size * t.eps, steps=1,  # MUTANT\n",
    (f"{ATTACK_TESTS}[torchattacks-threat3]",),
    why="the torchattacks PGD wrapper runs a single step", tags=("attack",))
add("pgd_adam_noop", "rws/attacks/pgd_adam.py",
    "        x_adv = x + delta\n        if not self.keep_best:\n            return x_adv\n",
    "        x_adv = x + delta\n        if not self.keep_best:\n            return x.clone()  # MUTANT\n",
    ("tests/test_cotrain.py::test_pgd_adam_stays_in_eps_and_is_at_least_as_strong_as_pgd10",),
    why="PGD-40 with Adam (the adapters evaluation attack) returns the clean input", tags=("attack",))
add("pgd_adam_one_step", "rws/attacks/pgd_adam.py",
    "        for k in range(self.steps):\n",
    "        for k in range(1):  # MUTANT\n",
    ("tests/test_cotrain.py::test_pgd_adam_stays_in_eps_and_is_at_least_as_strong_as_pgd10",),
    why="PGD with Adam takes a single step", tags=("attack",))
add("eval_apgd_noop", "rws/attacks/evaluate.py",
    "    return atk.perturb(x, y)\n",
    "    return x.clone()  # MUTANT\n",
    ("tests/test_attacks.py::test_robust_and_union_correct",),
    why="robust evaluation (pyautoattack APGD-CE/APGD-T) never perturbs", tags=("attack",))
add("l1_projection_is_clipping", "rws/attacks/l1_projection.py",
    "    d = torch.minimum((a - lam[:, None]).clamp_min(0.0), room)\n",
    "    d = torch.minimum(torch.minimum(a, eps_t[:, None]), room)  # MUTANT: coordinate-wise clipping\n",
    ("tests/test_attacks.py::test_l1_box_projection_exact_against_qp",),
    why="the exact l1-ball projection replaced by clipping each coordinate to [-eps, eps]", tags=("attack",))

# ---------------------------------------------------------------------------------------- weights
add("soup_weights_ignored", "rws/weights/soups.py",
    "    w = check_weights(weights, len(states), affine)\n",
    "    w = [1.0 / len(states)] * len(check_weights(weights, len(states), affine))  # MUTANT: uniform soup\n",
    ("tests/test_soups.py::test_one_hot_soup_is_bit_exact",),
    why="soup_state_dicts averages the members whatever the weights", tags=("weights",))
add("in_place_soup_weights_ignored", "rws/weights/functional_soup.py",
    "        w = check_weights(weights, self.n, self.affine)\n",
    "        w = [1.0 / self.n] * len(check_weights(weights, self.n, self.affine))  # MUTANT: uniform soup\n",
    ("tests/test_soups.py::test_in_place_matches_building_each_soup",),
    why="InPlaceSoup (the grid search) averages the members whatever the weights", tags=("weights",))
add("patch_alpha_ignored", "rws/weights/patching.py",
    "                state[k].add_(v.to(state[k].device, state[k].dtype), alpha=alpha)\n",
    "                state[k].add_(v.to(state[k].device, state[k].dtype), alpha=1.0)  # MUTANT\n",
    ("tests/test_patching.py::test_alpha_is_linear_not_squared",),
    why="patching adds every signature at alpha 1", tags=("weights",))
add("patch_bn_stats_not_mixed", "rws/weights/patching.py",
    "            state[k].copy_(mixed.to(state[k].dtype))\n",
    "            pass  # MUTANT: the standard model's BN statistics stay\n",
    ("tests/test_patching.py::test_alpha_is_linear_not_squared",),
    why="bn_policy=robust leaves the standard running statistics in place", tags=("weights",))
add("signature_projection_skipped", "rws/weights/signatures.py",
    "        r = project_out(v, b)\n",
    "        r = v.clone()  # MUTANT: no projection\n",
    ("tests/test_signatures.py::test_project_out_closed_form", "tests/test_signatures.py::test_granularities_by_hand"),
    why="extraction keeps v_c instead of its residual orthogonal to v_base", tags=("weights",))
add("quantization_bits_ignored", "rws/weights/quantize.py",
    "    quant = resolve_quant(bits, quant)\n",
    "    quant = resolve_quant(bits, quant)\n    bits = 32  # MUTANT\n",
    ("tests/test_signatures.py::test_quantize_8bit_error_bound",),
    why="signatures are stored as float32 whatever bits says", tags=("weights",))

# ------------------------------------------------------------------------ training and evaluation
add("train_resume_restarts", "rws/training.py",
    "    trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path)\n",
    "    trainer.fit(method, datamodule=datamodule, ckpt_path=None)  # MUTANT: resume starts from scratch\n",
    ("tests/test_guards.py::test_resume_continues_from_the_checkpoint",),
    why="resume=auto / a .ckpt path trains from scratch", tags=("training",))
add("pipeline_resume_ignores_settings", "rws/pipelines/runner.py",
    "    if why is not None:\n",
    "    if False:  # MUTANT: a done step is skipped whatever settings it ran with\n",
    ("tests/test_pipelines.py::test_resume_skips_a_step_only_under_the_same_settings",),
    why="a pipeline re-run reuses a step computed under other settings", tags=("pipelines",))
add("eval_accuracy_count_plus_one", "rws/evaluation/cells.py",
    '           "value": int(correct.sum()) / total, "n": total}\n',
    '           "value": (int(correct.sum()) + 1) / total, "n": total}  # MUTANT\n',
    ("tests/test_evaluation.py::test_clean_and_corruption_suites_rows",),
    why="every evaluation cell counts one correct example too many", tags=("evaluation",))
add("robust_eval_clean_count_plus_one", "rws/attacks/evaluate.py",
    '        counts["clean"] += int(clean.sum())\n',
    '        counts["clean"] += int(clean.sum()) + 1  # MUTANT\n',
    ("tests/test_guards.py::test_evaluate_threats_counts_exactly",),
    why="evaluate_threats counts one clean-correct example too many per batch", tags=("evaluation",))
add("few_shot_selection_random", "rws/evaluation/selection.py",
    "            best, _ = _pick_tied(correct[:, pick].sum(1), tie_g)\n",
    "            best = int(torch.randint(s, (1,), generator=tie_g))  # MUTANT: ignores the k examples\n",
    ("tests/test_guards.py::test_few_shot_picks_the_best_on_the_k_examples",),
    why="the few-shot study picks a random soup instead of the best on the k examples", tags=("evaluation",))
