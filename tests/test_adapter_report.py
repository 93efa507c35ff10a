"""The adapters report: tables and claims from constructed result rows, and the figures' data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rws.report import adapter_figures as figs
from rws.report.adapter_tables import alpha_table, claims, table1


def _row(model: str, condition: str, value: float, suite: str = "adversarial") -> dict:
    return {"model": model, "suite": suite, "condition": condition, "level": "", "metric": "acc", "value": value}


def _table1_rows() -> list[dict]:
    rows = []
    for model, clean, robust in (("nominal", 0.8, 0.0), ("adversarial", 0.6, 0.4),
                                 ("cotrain_shared@clean", 0.78, 0.02), ("cotrain_shared@robust", 0.78, 0.02),
                                 ("cotrain_cls_token@clean", 0.82, 0.01), ("cotrain_cls_token@robust", 0.62, 0.38),
                                 ("cotrain_alpha0.2@clean", 0.75, 0.0), ("cotrain_alpha0.2@robust", 0.61, 0.41)):
        rows += [_row(model, "clean", clean), _row(model, "linf", robust)]
    return rows


def test_table1_puts_each_mode_in_its_columns() -> None:
    t = table1(_table1_rows())
    assert t["nominal"] == {"clean_mode_clean": 0.8, "clean_mode_robust": 0.0}
    assert t["adversarial"] == {"robust_mode_clean": 0.6, "robust_mode_robust": 0.4}
    assert t["cotrain_cls_token"]["clean_mode_clean"] == 0.82 and t["cotrain_cls_token"]["robust_mode_robust"] == 0.38
    assert alpha_table(t) == [(0.0, 0.6, 0.4), (0.2, 0.75, 0.41), (0.5, 0.82, 0.38), (1.0, 0.8, 0.0)]


def test_claims_decide_from_the_numbers() -> None:
    t = table1(_table1_rows())
    betas = [0.0, 0.5, 1.0]
    beta = [{"clean": 0.6, "robust": 0.4, "corruption_mean": 0.5}, {"clean": 0.7, "robust": 0.3, "corruption_mean": 0.6},
            {"clean": 0.8, "robust": 0.0, "corruption_mean": 0.55}]
    text = "\n".join(claims(t, betas, beta))
    assert text.count("**held**") == 4, text
    # Robustness of the shared model as high as the adapter's: the first claim fails.
    rows = [r if r["model"] != "cotrain_shared@robust" or r["condition"] != "linf" else {**r, "value": 0.39}
            for r in _table1_rows()]
    first = claims(table1(rows), betas, beta)[0]
    assert "did not hold" in first
    # A trade-off that reverses (robust rises with beta) is not smooth; the best corruption beta at an end fails.
    bad = [dict(b) for b in beta]
    bad[2]["robust"], bad[1]["corruption_mean"] = 0.5, 0.4
    out = claims(t, betas, bad)
    assert "did not hold" in out[2] and "did not hold" in out[3]
    # An intermediate beta that wins by less than a point is not a result.
    close = [dict(b) for b in beta]
    close[1]["corruption_mean"] = 0.555
    assert "undecided" in claims(t, betas, close)[3]


def test_filter_components_are_the_principal_directions(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    # Filters that vary along one direction only: the first component is that direction.
    direction = torch.randn(3 * 4 * 4, generator=g)
    w = (torch.randn(50, 1, generator=g) * direction).reshape(50, 3, 4, 4) + 0.01 * torch.randn(50, 3, 4, 4, generator=g)
    tiles = figs.filter_components(w, n=28)
    assert tiles.shape == (28, 4, 4, 3) and tiles.dtype == np.uint8
    assert all(t.min() == 0 and t.max() == 255 for t in tiles)
    first = tiles[0].astype(float).transpose(2, 0, 1).reshape(-1)
    corr = np.corrcoef(first, direction.numpy())[0, 1]
    assert abs(corr) > 0.99
    out = figs.embedder_filters({"a": w}, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0 and out["a"].shape == (28, 4, 4, 3)


def test_token_plane_grids(tmp_path: Path) -> None:
    points = [(b1, b2) for b1 in (0.0, 1.0) for b2 in (0.0, 0.5, 1.0)]
    clean = [0.1 * i for i in range(6)]
    robust = [0.5 - 0.05 * i for i in range(6)]
    g = figs.token_plane(points, clean, robust, tmp_path / "p.png")
    assert g["clean"].shape == (3, 2)
    # Point (b1=1, b2=0.5) is index 4: row beta2=0.5, column beta1=1.
    assert np.isclose(g["clean"][1, 1], 40.0) and np.isclose(g["robust"][1, 1], 30.0)
    assert np.isclose(g["normalized_mean"].min(), 0.5) and np.isclose(g["normalized_mean"].max(), 0.5)
    assert (tmp_path / "p.png").exists()
