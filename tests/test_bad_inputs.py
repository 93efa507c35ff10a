"""Bad input gets one clear line, never a traceback (issue 10).

Every entry point (train.py, evaluate.py, sweep.py, python -m rws.stages.extract|patch|storage) runs
as a subprocess on a bad input and must: exit with status 2, print exactly one stderr line starting
with ``error:`` that names the culprit (the file or the option), print no traceback, and leave its
output directory as it was (nothing created, nothing changed). Fixtures are tiny exports of
small_cnn (width 0.25) and signatures extracted from them; the data is the embedded digits set.

The subprocesses run in parallel (one per core) from one module fixture; each test checks one. MORE_CASES
(more inputs of kinds already covered, through other entry points) run with `-m slow`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"mean": [0.3054] * 3, "std": [0.3240] * 3}


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]   # after the python executable; {FX} is the fixture dir, {OUT} the case's out dir
    culprit: str            # must appear in the error line (a file path or an option name); {FX} allowed


def _cli(script: str) -> tuple[str, ...]:
    return (str(ROOT / script),)


TRAIN, EVALUATE, SWEEP = _cli("train.py"), _cli("evaluate.py"), _cli("sweep.py")
EXTRACT, PATCH, STORAGE = ("-m", "rws.stages.extract"), ("-m", "rws.stages.patch"), ("-m", "rws.stages.storage")
EXTRACT_OK = ("init={FX}/init", "std={FX}/std", "out={OUT}")
PATCH_OK = ("base={FX}/std", "out={OUT}")
SIG = "{FX}/sigs/gaussian_noise.safetensors"


def _patch_spec(sig: str, alpha: str = "1.0") -> str:
    return f"specs=[{{kind: patch, base: {{kind: export, path: {{FX}}/std}}, signatures: [{{path: {sig}, alpha: {alpha}}}]}}]"


EVAL = ("out={OUT}", "suite=clean", "data.test_subset=32", "device=cpu", "progress=false")
SWEEP_OK = ("out={OUT}", "figures=false", "progress=false", "'targets=[{name: clean, suite: clean, k: 8}]'")

CASES = [
    # -- train.py
    Case("train-unknown-model", (*TRAIN, "model=nope"), "model"),
    Case("train-unknown-key", (*TRAIN, "nosuchkey=1"), "nosuchkey"),
    Case("train-missing-init", (*TRAIN, "init={FX}/nope/export"), "{FX}/nope/export"),
    Case("train-seed-type", (*TRAIN, "seed=abc"), "seed"),
    Case("train-missing-resume", (*TRAIN, "resume={FX}/nope.ckpt"), "{FX}/nope.ckpt"),
    Case("train-missing-required", (*TRAIN, "data=image_folder"), "root"),
    Case("train-lr-type", (*TRAIN, "method.optim.lr=abc"), "method.optim.lr"),
    # -- evaluate.py
    Case("eval-missing-export", (*EVALUATE, *EVAL, "models=[{FX}/nope/export]"), "{FX}/nope/export"),
    Case("eval-truncated-export", (*EVALUATE, *EVAL, "models=[{FX}/truncated]"), "{FX}/truncated/model.safetensors"),
    Case("eval-pickle-as-safetensors", (*EVALUATE, *EVAL, "models=[{FX}/pickle]"), "{FX}/pickle/model.safetensors"),
    Case("eval-malformed-yaml-spec", (*EVALUATE, *EVAL, "specs=[{FX}/malformed.yaml]"), "{FX}/malformed.yaml"),
    Case("eval-unknown-spec-kind", (*EVALUATE, *EVAL, "specs=[{FX}/unknown_kind.yaml]"), "{FX}/unknown_kind.yaml"),
    Case("eval-signature-other-arch", (*EVALUATE, *EVAL, _patch_spec("{FX}/sigs_wide/gaussian_noise.safetensors")),
         "{FX}/sigs_wide/gaussian_noise.safetensors"),
    Case("eval-soup-other-arch", (*EVALUATE, *EVAL, "specs=[{kind: soup, members: [{spec: {kind: export, path: "
                                  "{FX}/std}, weight: 0.5}, {spec: {kind: export, path: {FX}/wide}, weight: 0.5}]}]"),
         "{FX}/wide"),
    Case("eval-soup-nan-weight", (*EVALUATE, *EVAL, "specs=[{kind: soup, members: [{spec: {kind: export, path: "
                                  "{FX}/std}, weight: .nan}, {spec: {kind: export, path: {FX}/robust}, weight: 0.5}]}]"),
         "members[0].weight"),
    Case("eval-unknown-data", (*EVALUATE, *EVAL, "models=[{FX}/std]", "data=nope"), "data"),
    Case("eval-unknown-suite", (*EVALUATE, "out={OUT}", "models=[{FX}/std]", "suite=nope"), "suite"),
    Case("eval-unknown-corruption", (*EVALUATE, *EVAL[:1], "models=[{FX}/std]", "device=cpu",
                                     "'suites=[{name: corruptions, corruptions: nope, severities: [1]}]'"), "nope"),
    Case("eval-shard-range", (*EVALUATE, *EVAL, "models=[{FX}/std]", "shard=3/2"), "shard"),
    Case("eval-unknown-head", (*EVALUATE, *EVAL, "specs=[{kind: heads, base: {kind: export, path: {FX}/student}, "
                                                "head: nope}]"), "nope"),
    Case("eval-unknown-selection-rule", (*EVALUATE, *EVAL, "specs=[{kind: heads, base: {kind: export, path: "
                                                          "{FX}/student}, select: {rule: nope}}]"), "rule"),
    Case("eval-empty-dataset", (*EVALUATE, *EVAL, "models=[{FX}/std]", "data=image_folder",
                                "data.root={FX}/empty_data", "data.num_classes=2"), "{FX}/empty_data"),
    # -- sweep.py
    Case("sweep-member-other-arch", (*SWEEP, *SWEEP_OK, "members=[{FX}/std,{FX}/wide]"), "{FX}/wide"),
    Case("sweep-member-names-length", (*SWEEP, *SWEEP_OK, "members=[{FX}/std,{FX}/robust]", "member_names=[a]"),
         "member_names"),
    Case("sweep-unknown-grid", (*SWEEP, *SWEEP_OK, "members=[{FX}/std,{FX}/robust]", "grid=nope"), "grid"),
    Case("sweep-nothing", (*SWEEP, *SWEEP_OK), "members"),
    # -- python -m rws.stages.extract
    Case("extract-missing-required", (*EXTRACT, "init={FX}/init", "out={OUT}"), "std"),
    Case("extract-layers-k", (*EXTRACT, *EXTRACT_OK, "robust={gaussian_noise: {FX}/robust}", "layers.k=500"),
         "layers.k"),
    Case("extract-bits", (*EXTRACT, *EXTRACT_OK, "robust={gaussian_noise: {FX}/robust}", "layers.k=2", "bits=3"),
         "bits"),
    Case("extract-robust-other-arch", (*EXTRACT, *EXTRACT_OK, "robust={gaussian_noise: {FX}/robust, fog: {FX}/wide}",
                                       "layers.k=2"), "{FX}/wide"),
    # -- python -m rws.stages.patch
    Case("patch-signatures-strings", (*PATCH, *PATCH_OK, f"'signatures=[{SIG}]'"), "signatures"),
    Case("patch-alpha-type", (*PATCH, *PATCH_OK, f"'signatures=[{{path: {SIG}, alpha: abc}}]'"), "alpha"),
    Case("patch-signature-other-arch", (*PATCH, *PATCH_OK, "'signatures=[{path: {FX}/sigs_wide/gaussian_noise.safetensors}]'"),
         "{FX}/sigs_wide/gaussian_noise.safetensors"),
    Case("patch-nan-signature", (*PATCH, *PATCH_OK, "'signatures=[{path: {FX}/nan_sig.safetensors}]'"),
         "{FX}/nan_sig.safetensors"),
    Case("patch-signature-no-keys", (*PATCH, *PATCH_OK, "'signatures=[{path: {FX}/nokeys_sig.safetensors}]'"),
         "{FX}/nokeys_sig.safetensors"),
    Case("patch-bn-mix", (*PATCH, *PATCH_OK, f"'signatures=[{{path: {SIG}}}]'", "bn_mix=nope"), "bn_mix"),
    # -- python -m rws.stages.storage
    Case("storage-unknown-preset", (*STORAGE, "out={OUT}", "presets=[nope]"), "nope"),
    Case("storage-model-extra-key", (*STORAGE, "out={OUT}", "presets=[]",
                                     "'models=[{name: small_cnn, num_classes: 10, bogus: 1}]'"), "bogus"),
    Case("storage-k-type", (*STORAGE, "out={OUT}", "presets=[]", "'models=[{name: small_cnn, num_classes: 10, k: abc}]'"),
         "k"),
]

# More of the same kinds (other entry points for a kind already covered): run with -m slow.
MORE_CASES = [
    Case("eval-unknown-model-name", (*EVALUATE, *EVAL, "models=[{FX}/unknown_arch]"), "nope_net"),
    Case("eval-text-as-safetensors", (*EVALUATE, *EVAL, "models=[{FX}/text]"), "{FX}/text/model.safetensors"),
    Case("train-truncated-init", (*TRAIN, "init={FX}/truncated"), "{FX}/truncated/model.safetensors"),
    Case("train-unknown-method", (*TRAIN, "method=nope"), "method"),
    Case("train-empty-dataset", (*TRAIN, "data=image_folder", "data.root={FX}/empty_data", "data.num_classes=2"),
         "{FX}/empty_data"),
    Case("eval-nan-signature", (*EVALUATE, *EVAL, _patch_spec("{FX}/nan_sig.safetensors")), "{FX}/nan_sig.safetensors"),
    Case("eval-alpha-type", (*EVALUATE, *EVAL, _patch_spec(SIG, "abc")), "alpha"),
    Case("sweep-missing-member", (*SWEEP, *SWEEP_OK, "members=[{FX}/std,{FX}/nope]"), "{FX}/nope"),
    Case("sweep-shard-range", (*SWEEP, *SWEEP_OK, "members=[{FX}/std,{FX}/robust]", "shard=3/2"), "shard"),
    Case("sweep-unknown-corruption", (*SWEEP, "out={OUT}", "members=[{FX}/std,{FX}/robust]",
                                      "'targets=[{name: x, suite: corruption, corruption: nope, k: 8}]'"), "nope"),
    Case("extract-granularity", (*EXTRACT, *EXTRACT_OK, "robust={gaussian_noise: {FX}/robust}", "layers.k=2",
                                 "granularity=nope"), "granularity"),
    Case("extract-pickle-std", (*EXTRACT, "init={FX}/init", "std={FX}/pickle", "out={OUT}", "layers.k=2",
                                "robust={fog: {FX}/robust}"), "{FX}/pickle/model.safetensors"),
    Case("extract-missing-robust", (*EXTRACT, *EXTRACT_OK, "robust={fog: {FX}/nope}", "layers.k=2"), "{FX}/nope"),
    Case("patch-missing-signature", (*PATCH, *PATCH_OK, "'signatures=[{path: {FX}/nope.safetensors}]'"),
         "{FX}/nope.safetensors"),
    Case("patch-text-signature", (*PATCH, *PATCH_OK, "'signatures=[{path: {FX}/text/model.safetensors}]'"),
         "{FX}/text/model.safetensors"),
    Case("patch-truncated-base", (*PATCH, "base={FX}/truncated", "out={OUT}", f"'signatures=[{{path: {SIG}}}]'"),
         "{FX}/truncated/model.safetensors"),
    Case("patch-missing-out", (*PATCH, "base={FX}/std", f"'signatures=[{{path: {SIG}}}]'"), "out"),
    Case("storage-unknown-model", (*STORAGE, "out={OUT}", "presets=[]", "'models=[{name: nope_net, num_classes: 10}]'"),
         "nope_net"),
]


def _small_cnn(width: float = 0.25, seed: int = 0, **kw):
    from rws.models import create_model

    torch.manual_seed(seed)
    cfg = {"name": "small_cnn", "num_classes": 10, "width": width, **DIGITS, **kw}
    return create_model(**cfg).eval(), cfg


def build_fixtures(fx: Path) -> None:
    from rws.stages.extract import extract_all
    from rws.utils.io import load_safetensors, save_safetensors
    from rws.weights.export import save_export

    for name, seed, width in (("init", 0, 0.25), ("std", 1, 0.25), ("robust", 2, 0.25),
                              ("wide_init", 3, 0.5), ("wide_std", 4, 0.5), ("wide", 5, 0.5)):
        model, cfg = _small_cnn(width, seed)
        save_export(fx / name, model, cfg)
    model, cfg = _small_cnn(0.25, 6, heads={"names": ["clean", "unclean"], "tuned_stages": 1})
    save_export(fx / "student", model, cfg)
    extract_all(str(fx / "init"), str(fx / "std"), {"gaussian_noise": str(fx / "robust")}, fx / "sigs",
                layers={"k": 2}, analysis=False)
    extract_all(str(fx / "wide_init"), str(fx / "wide_std"), {"gaussian_noise": str(fx / "wide")}, fx / "sigs_wide",
                layers={"k": 2}, analysis=False)
    tensors, meta = load_safetensors(fx / "sigs" / "gaussian_noise.safetensors")
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    save_safetensors({**tensors, first: torch.full_like(tensors[first], float("nan"))}, fx / "nan_sig.safetensors",
                     metadata=meta)
    save_safetensors(tensors, fx / "nokeys_sig.safetensors", metadata={k: v for k, v in meta.items() if k != "keys"})
    # Broken exports: cut short, a text file, a pickle, an architecture nobody registered.
    for name in ("truncated", "text", "pickle", "unknown_arch"):
        (fx / name).mkdir()
        (fx / name / "model.yaml").write_text((fx / "std" / "model.yaml").read_text())
    data = (fx / "std" / "model.safetensors").read_bytes()
    (fx / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    (fx / "text" / "model.safetensors").write_text("these are not the weights you are looking for\n")
    torch.save(_small_cnn()[0].state_dict(), fx / "pickle" / "model.safetensors")
    (fx / "unknown_arch" / "model.safetensors").write_bytes(data)
    (fx / "unknown_arch" / "model.yaml").write_text(
        (fx / "std" / "model.yaml").read_text().replace("name: small_cnn", "name: nope_net"))
    (fx / "malformed.yaml").write_text("kind: export\npath: [unclosed\n  - {\n")
    (fx / "unknown_kind.yaml").write_text(f"kind: blend\npath: {fx / 'std'}\n")
    (fx / "empty_data" / "train").mkdir(parents=True)
    (fx / "empty_data" / "test").mkdir()


def snapshot(d: Path) -> dict[str, str]:
    """Every file and folder under ``d`` with a hash of its contents (folders: 'dir')."""
    if not d.exists():
        return {}
    out = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    before: dict[str, str]
    after: dict[str, str]
    seconds: float


def _run(case: Case, fx: Path, work: Path) -> Result:
    cwd = work / case.id
    cwd.mkdir(parents=True)
    out = cwd / "out"
    argv = [a.replace("{FX}", str(fx)).replace("{OUT}", str(out)).strip("'") for a in case.argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "RWS_OUTPUT": str(cwd / "outputs"),
           "RWS_CACHE": str(work.parent / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    before = snapshot(cwd)
    t0 = time.time()
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr, before, snapshot(cwd), time.time() - t0)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fx = tmp_path_factory.mktemp("fx")
    build_fixtures(fx)
    return fx


def _run_all(cases: list[Case], fx: Path, work: Path) -> dict[str, Result]:
    before = snapshot(fx)
    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        futures = {c.id: pool.submit(_run, c, fx, work) for c in cases}
        res = {k: f.result() for k, f in futures.items()}
    assert snapshot(fx) == before, "a bad-input run changed the input files"
    return res


@pytest.fixture(scope="module")
def results(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    return _run_all(CASES, fixtures, tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def more_results(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    return _run_all(MORE_CASES, fixtures, tmp_path_factory.mktemp("work_more"))


def test_enough_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES + MORE_CASES}) == len(CASES + MORE_CASES)
    entries = {next(a for a in c.argv if a.endswith(".py") or a.startswith("rws.")) for c in CASES}
    assert len(entries) == 6, entries


def check(case: Case, r: Result, fixtures: Path) -> None:
    shown = f"rc={r.rc}\n--- stderr ---\n{r.stderr[-3000:]}\n--- stdout ---\n{r.stdout[-1500:]}"
    assert "Traceback" not in r.stderr + r.stdout, shown
    assert r.rc == 2, shown
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    culprit = case.culprit.replace("{FX}", str(fixtures))
    assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    assert r.after == r.before, f"output created or changed: {sorted(set(r.after) ^ set(r.before))}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, results: dict[str, Result], fixtures: Path) -> None:
    check(case, results[case.id], fixtures)


@pytest.mark.slow
@pytest.mark.parametrize("case", MORE_CASES, ids=[c.id for c in MORE_CASES])
def test_more_bad_input(case: Case, more_results: dict[str, Result], fixtures: Path) -> None:
    check(case, more_results[case.id], fixtures)


_TASK = """
import sys
from rws.cli.entry import hydra_entry
from rws.errors import UserError


@hydra_entry("storage")
def main(cfg):
    if cfg.kind == "bug":
        raise RuntimeError("a genuine bug")
    raise UserError("what was wrong", "option which", "what was expected")


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("kind", ["bug", "user"])
def test_bug_keeps_traceback_user_error_leaves_no_trace(tmp_path: Path, kind: str) -> None:
    """A bug keeps its traceback (exit 1); a user error is one line, exit 2, and Hydra's files in an
    existing run directory are put back as they were."""
    script = tmp_path / "task.py"
    script.write_text(_TASK)
    run_dir = tmp_path / "existing"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("old: config\n")
    (run_dir / "result.txt").write_text("kept\n")
    before = snapshot(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RWS_OUTPUT": str(tmp_path / "outputs")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, str(script), f"hydra.run.dir={run_dir}", f"+kind={kind}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    if kind == "bug":
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: a genuine bug" in proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == "error: what was wrong, option which, what was expected\n"
        assert snapshot(tmp_path) == before
