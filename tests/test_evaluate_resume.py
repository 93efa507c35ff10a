"""evaluate.py resumes per cell, keyed by every setting that changes the cell's value (issue 12).

Runs the Hydra app itself (``rws.cli.evaluate.main`` with a command line, as ``python evaluate.py``
does, in this process for speed) on the embedded digits with a tiny export whose prediction is a
constant class, so every accuracy is known from the labels alone. Changing ``test_subset``, the
severities or the threats measures the new cells; the same settings again measure nothing; the
summary counts only the rows of the current settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import rws.specs as specs_mod
from rws.cli.evaluate import main as evaluate_main
from rws.evaluation.results import read_results

CLASS = 9  # the export always answers 9: its accuracy is the share of 9s among the test images drawn


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rws.models import create_model
    from rws.weights.export import save_export

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    with torch.no_grad():
        model.net.classifier.bias.zero_()
        model.net.classifier.bias[CLASS] = 100.0
    mcfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10, "width": 0.25}
    return save_export(tmp_path_factory.mktemp("export") / "const9" / "export", model, mcfg)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    from hydra.utils import instantiate

    from rws.config import compose

    dm = instantiate(compose("evaluate", ["device=cpu"]).data)
    dm.prepare_data()
    dm.setup()
    return torch.cat([y for _x, y in dm.test_dataloader()])


def _evaluate(monkeypatch: pytest.MonkeyPatch, export: Path, out: Path, *overrides: str) -> dict:
    """``python evaluate.py models=[export] out=out ...`` through the Hydra app; returns summary.json."""
    argv = ["evaluate.py", f"models=[{export}]", f"out={out}", "device=cpu", "progress=false",
            "print_table=false", "hydra/job_logging=none", "hydra/hydra_logging=none", *overrides]
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", argv)
        evaluate_main()
    return json.loads((out / "summary.json").read_text())


def _no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a, **k):
        raise AssertionError("nothing to measure, yet a model was built")
    monkeypatch.setattr(specs_mod, "build", fail)


def _correct_files(out: Path) -> int:
    return len(list((out / "correct").glob("*/*.safetensors")))


def test_changed_test_subset_is_measured_and_same_settings_are_not(monkeypatch, tmp_path, export, labels) -> None:
    out = tmp_path / "eval"
    from rws.data.splits import random_subset

    # test_subset=n is a seeded random draw of n test images (data seed 0), not the first n
    drawn = {n: random_subset(torch.arange(len(labels)), n, 0) for n in (10, 40)}
    expect = {n: int((labels[drawn[n]] == CLASS).sum()) / n for n in (10, 40)}  # right / total, as evaluate.py counts
    assert expect[10] != expect[40]  # the summary check below can tell them apart

    s = _evaluate(monkeypatch, export, out, "suite=clean", "test_subset=10")
    (m,) = s["models"].values()
    assert [(r["n"], r["value"]) for r in read_results(out)] == [(10, expect[10])] and m["TA"] == expect[10]

    s = _evaluate(monkeypatch, export, out, "suite=clean", "test_subset=40")
    rows = read_results(out)
    assert sorted((r["n"], r["value"]) for r in rows) == [(10, expect[10]), (40, expect[40])]
    assert len({r["settings"] for r in rows}) == 2 and _correct_files(out) == 2
    (m,) = s["models"].values()
    assert m["TA"] == expect[40]

    # The same settings again (either of them): no model built, no row or correctness file added,
    # and the summary reports the row of these settings, not the newest row in the file.
    before = (out / "results.jsonl").read_bytes()
    with monkeypatch.context() as m:
        _no_build(m)
        s40 = _evaluate(m, export, out, "suite=clean", "test_subset=40")
        s10 = _evaluate(m, export, out, "suite=clean", "test_subset=10")
    assert (out / "results.jsonl").read_bytes() == before and _correct_files(out) == 2
    assert s40["complete"] and s10["complete"]
    assert next(iter(s40["models"].values()))["TA"] == expect[40]
    assert next(iter(s10["models"].values()))["TA"] == expect[10]


def test_changed_severities_and_seed_are_measured_and_summarized_alone(monkeypatch, tmp_path, export) -> None:
    out = tmp_path / "eval"

    def run(severities: str, *extra: str) -> dict:
        return _evaluate(monkeypatch, export, out, "test_subset=10", *extra,
                         f"suites=[{{name: corruptions, corruptions: [contrast], severities: {severities}}}]")

    s = run("[1,3]")
    assert len(read_results(out)) == 2 and next(iter(s["models"].values()))["n_cells"] == 2
    s = run("[5]")  # one new cell; RA is over severity 5 only, not over 1, 3 and 5
    rows = read_results(out)
    assert sorted(int(r["level"]) for r in rows) == [1, 3, 5]
    (m,) = s["models"].values()
    assert m["n_cells"] == 1 and set(m["per_severity"]) == {"5"}
    s = run("[1,3]")  # nothing new
    assert len(read_results(out)) == 3 and next(iter(s["models"].values()))["n_cells"] == 2
    run("[5]", "seed=1")  # another noise seed is another cell
    rows = read_results(out)
    assert len(rows) == 4 and sorted(r["seed"] for r in rows if int(r["level"]) == 5) == [0, 1]


def test_adding_a_threat_measures_it_and_the_new_union(monkeypatch, tmp_path, export) -> None:
    out = tmp_path / "adv"
    linf, l2 = "{norm: linf, eps: 0.03}", "{norm: l2, eps: 0.5}"

    def run(threats: str, n_iter: int = 2) -> dict:
        return _evaluate(monkeypatch, export, out, "test_subset=8", "suite=adversarial",
                         f"suite.adversarial.threats=[{threats}]", f"suite.adversarial.n_iter={n_iter}",
                         "suite.adversarial.attacks=[apgd-ce]")

    def cells() -> list[tuple[str, str]]:
        return [(r["condition"], r["settings"]) for r in read_results(out)]

    s = run(linf)
    first = cells()
    assert [c for c, _k in first] == ["clean", "linf", "union"]
    assert set(next(iter(s["models"].values()))["adversarial"]) == {"clean", "linf@0.03", "union"}

    s = run(f"{linf}, {l2}")
    added = cells()[len(first):]
    assert [c for c, _k in added] == ["l2", "union"]  # linf and clean are kept, the union is a new cell
    assert added[1][1] != first[2][1]
    assert set(next(iter(s["models"].values()))["adversarial"]) == {"clean", "linf@0.03", "l2@0.5", "union"}

    with monkeypatch.context() as m:  # the same threats again: nothing measured
        _no_build(m)
        s = run(f"{linf}, {l2}")
    assert len(cells()) == 5 and s["complete"]
    # Back to linf alone: nothing measured, and the summary has no l2 from the other run.
    with monkeypatch.context() as m:
        _no_build(m)
        s = run(linf)
    assert len(cells()) == 5 and set(next(iter(s["models"].values()))["adversarial"]) == {"clean", "linf@0.03", "union"}

    run(linf, n_iter=3)  # more attack steps: the attacked cells again (clean does not depend on them)
    assert [c for c, _k in cells()[5:]] == ["linf", "union"]
