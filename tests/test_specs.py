"""Model specs: canonical form, stable ids, validation, building (incl. nested specs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rws.weights.specs import SpecError, build, canonical, load_spec, spec_id, spec_name, validate


def _soup(a: str, b: str, wa: float, wb: float, **kw) -> dict:
    return {"kind": "soup", "bn": "combine",
            "members": [{"spec": {"kind": "export", "path": a}, "weight": wa},
                        {"spec": {"kind": "export", "path": b}, "weight": wb}], **kw}


def test_spec_id_stable_under_key_order_path_spelling_and_numbers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    x = _soup("runs/a/export", "runs/b/export", 0.5, 0.5)
    y = {"members": [{"weight": 0.5, "spec": {"path": str(tmp_path / "runs/a/../a/export"), "kind": "export"}},
                     {"weight": 0.50000000000001, "spec": {"path": "./runs/b/export", "kind": "export"}}],
         "bn": "combine", "kind": "soup", "name": "cosmetic names do not count"}
    assert spec_id(x) == spec_id(y)
    assert len(spec_id(x)) == 12 and int(spec_id(x), 16) >= 0
    assert canonical(x)["members"][0]["spec"]["path"] == str(tmp_path / "runs/a/export")
    # 1 and 1.0 are the same alpha.
    p1 = {"kind": "patch", "base": {"kind": "export", "path": "e"}, "signatures": [{"path": "s", "alpha": 1}]}
    p2 = {"kind": "patch", "base": {"kind": "export", "path": "e"}, "signatures": [{"path": "s", "alpha": 1.0}]}
    assert spec_id(p1) == spec_id(p2)
    from omegaconf import OmegaConf
    assert spec_id(OmegaConf.create(p1)) == spec_id(p1)


def test_spec_id_differs_when_weights_or_paths_differ() -> None:
    base = _soup("/r/a", "/r/b", 0.5, 0.5)
    assert spec_id(base) != spec_id(_soup("/r/a", "/r/b", 0.6, 0.4))
    assert spec_id(base) != spec_id(_soup("/r/a", "/r/c", 0.5, 0.5))
    assert spec_id(base) != spec_id(_soup("/r/a", "/r/b", 0.5, 0.5, bn="recalibrate"))
    p = lambda a: {"kind": "patch", "base": {"kind": "export", "path": "/e"},  # noqa: E731
                   "signatures": [{"path": "/s", "alpha": a}]}
    assert spec_id(p(1.0)) != spec_id(p(0.5))


def test_validation_errors_name_kind_and_key() -> None:
    with pytest.raises(SpecError, match=r"unknown spec kind 'bogus'.*export, patch, soup, adapter"):
        validate({"kind": "bogus"})
    with pytest.raises(SpecError, match=r"missing key 'kind'"):
        validate({"path": "x"})
    with pytest.raises(SpecError, match=r"kind 'export' is missing key 'path'.*'kind': 'export'"):
        validate({"kind": "export"})
    with pytest.raises(SpecError, match=r"kind 'patch' is missing key 'signatures'"):
        validate({"kind": "patch", "base": {"kind": "export", "path": "e"}})
    # Nested: the error says where in the tree.
    bad = {"kind": "soup", "members": [{"spec": {"kind": "export", "path": "a"}, "weight": 1},
                                       {"spec": {"kind": "patch", "base": {"kind": "export"}, "signatures": []}}]}
    with pytest.raises(SpecError, match=r"members\[1\]\.spec\.base: .*missing key 'path'"):
        validate(bad)
    with pytest.raises(SpecError, match=r"members\[0\]: missing key 'spec'"):
        validate({"kind": "soup", "members": [{"weight": 1}]})


def _export(path: Path, seed: int) -> Path:
    from rws.models import create_model
    from rws.weights.export import save_export

    torch.manual_seed(seed)
    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    return save_export(path, create_model("small_cnn", num_classes=10), cfg)


def test_load_spec_forms_and_build_export(tmp_path: Path) -> None:
    e = _export(tmp_path / "std" / "export", 0)
    spec = load_spec(e)
    assert spec == {"kind": "export", "path": str(e)}
    assert spec_name(spec) == "std"
    f = tmp_path / "spec.yaml"
    f.write_text(f"kind: export\npath: {e}\n")
    assert spec_id(load_spec(f)) == spec_id(spec)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "nope.yaml")
    m = build(spec)
    assert not m.training
    from rws.weights.export import load_export
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), load_export(e).build()(x))
    with pytest.raises(NotImplementedError, match="adapter"):
        build({"kind": "adapter", "base": spec})


def test_nested_soup_builds_recursively(tmp_path: Path) -> None:
    a, b = _export(tmp_path / "a" / "export", 0), _export(tmp_path / "b" / "export", 1)
    inner = _soup(str(a), str(b), 0.5, 0.5)
    # A soup of (a soup, a) with weights 0.5/0.5 equals the flat soup 0.75 a + 0.25 b.
    nested = {"kind": "soup", "bn": "combine", "members": [{"spec": inner, "weight": 0.5},
                                                           {"spec": {"kind": "export", "path": str(a)}, "weight": 0.5}]}
    flat = _soup(str(a), str(b), 0.75, 0.25)
    got, want = build(nested).state_dict(), build(flat).state_dict()
    for k in want:
        if want[k].is_floating_point():
            assert torch.allclose(got[k], want[k], atol=1e-6), k
    assert spec_name(nested) == "soup2"
