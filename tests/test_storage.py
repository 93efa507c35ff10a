"""The storage report reproduces the N_param column of the paper's Table 1."""

from __future__ import annotations

import json
from pathlib import Path

from rws.stages.storage import markdown, mb, report_preset, storage_report, storage_rows


def test_vgg16_cifar10_exact() -> None:
    r = report_preset("vgg16_cifar10")
    assert r["n_params"] == 14_719_818
    assert r["n_shallow"] == 1792 + 36928 + 73856 + 147584 + 295168 == 555_328
    got = {k: v["mb"] for k, v in r["rows"].items()}
    assert (got["standard"], got["shallow_32"], got["shallow_16"], got["shallow_8"]) == (58.8, 101.0, 79.9, 69.4)
    assert r["rows"]["all_models"]["bytes"] == 20 * 4 * 14_719_818


def test_resnet50_tinyimagenet_close() -> None:
    r = report_preset("resnet50_tinyimagenet")
    assert r["n_shallow"] == 468_160
    got = {k: v["mb"] for k, v in r["rows"].items()}
    assert (got["shallow_32"], got["shallow_16"], got["shallow_8"]) == (131.2, 113.4, 104.5)
    for key in ("standard", "shallow_32", "shallow_16", "shallow_8"):
        assert abs(got[key] - r["paper"][key]) <= 0.3, key


def test_truncation_and_rows() -> None:
    assert mb(58_879_272) == 58.8 and mb(101_084_200) == 101.0 and mb(99_999) == 0.0
    rows = storage_rows(1000, 100, n_sig=19)
    assert rows["shallow_8"]["bytes"] == 4000 + 1900 and rows["full"]["bytes"] == rows["all_models"]["bytes"]


def test_rws_models_vgg16_agrees(tmp_path: Path) -> None:
    reports = storage_report(tmp_path, presets=["vgg16_cifar10"], models=[{"name": "vgg16", "num_classes": 10, "k": 5}])
    assert reports[1]["n_params"] == reports[0]["n_params"] and reports[1]["n_shallow"] == 555_328
    assert json.loads((tmp_path / "storage.json").read_text())[0]["rows"]["shallow_16"]["mb"] == 79.9
    assert "| Standard + 19 RWS_shallow,8bit | 69.4 |" in (tmp_path / "storage.md").read_text()
    assert "101.0" in markdown(reports)
