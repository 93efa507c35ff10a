"""Model specs: canonical form, stable ids, the kind registry, validation, building (incl. nested
specs), declarative calibration sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rws.specs import (BuildContext, SpecError, SpecKind, build, canonical, get_kind, kind_names, load_spec,
                       register_kind, spec_id, spec_name, validate)
from rws.specs import registry


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
    assert spec_id(base) != spec_id(_soup("/r/a", "/r/b", 0.5, 0.5, bn="recalibrate"))
    assert spec_id(base) != spec_id(_soup("/r/a", "/r/c", 0.5, 0.5))
    p = lambda a: {"kind": "patch", "base": {"kind": "export", "path": "/e"},  # noqa: E731
                   "signatures": [{"path": "/s", "alpha": a}]}
    assert spec_id(p(1.0)) != spec_id(p(0.5))


# Ids computed with the pre-registry code (rws/weights/specs.py before issue 7): they key stored
# result rows and resume markers, so they must never change.
FIXED_IDS = {
    "6722262bb3aa": {"kind": "export", "path": "/runs/std/export"},
    "18ece167396b": {"kind": "patch", "base": {"kind": "export", "path": "/runs/std/export"},
                     "signatures": [{"path": "/sigs/fog.safetensors", "alpha": 0.5},
                                    {"path": "/sigs/snow.safetensors", "alpha": 1}],
                     "bn_policy": "robust", "name": "cosmetic"},
    "65ab9762ea01": {"kind": "patch", "base": {"kind": "export", "path": "/runs/std/export"},
                     "signatures": [{"path": "/sigs/fog.safetensors", "alpha": 1.0}], "bn_policy": "recalibrate",
                     "calibration": {"corruption": "fog", "severity": 5, "batches": 10, "split": "train"}},
    "637aa78518e4": {"kind": "soup", "bn": "combine", "affine": True,
                     "members": [{"spec": {"kind": "export", "path": "/r/a/export"}, "weight": 0.6},
                                 {"spec": {"kind": "export", "path": "/r/b/export"}, "weight": 0.4}]},
    "28c031526fc7": {"kind": "soup", "bn": "recalibrate", "calibration_batches": 8, "members": [
        {"spec": {"kind": "soup", "members": [{"spec": {"kind": "export", "path": "/r/a/export"}, "weight": 0.5},
                                              {"spec": {"kind": "export", "path": "/r/b/export"}, "weight": 0.5}]},
         "weight": 0.5},
        {"spec": {"kind": "patch", "base": {"kind": "export", "path": "/r/a/export"},
                  "signatures": [{"path": "/s/x.safetensors"}]}, "weight": 0.5}]},
}


@pytest.mark.parametrize("want", list(FIXED_IDS))
def test_spec_ids_unchanged(want: str) -> None:
    spec = FIXED_IDS[want]
    assert spec_id(spec) == want
    validate(spec)  # and each is still a valid spec


def test_registry_lists_kinds_and_rejects_unknown() -> None:
    assert kind_names()[:3] == ["export", "patch", "soup"]
    assert get_kind("patch").required == ("base", "signatures")
    with pytest.raises(SpecError, match=r"unknown spec kind 'bogus'; kinds: export, patch, soup, mode, heads"):
        get_kind("bogus")
    with pytest.raises(SpecError, match=r"spec: unknown spec kind 'bogus'.*kinds: export, patch, soup, mode, heads"):
        validate({"kind": "bogus"})
    # A second, different kind under a taken name is refused; re-registering the same one is not.
    with pytest.raises(SpecError, match="'export' is already registered"):
        register_kind(SpecKind(name="export", required=(), build=lambda spec, ctx: torch.nn.Identity()))
    assert register_kind(get_kind("export")) is get_kind("export")


def test_validation_errors_name_kind_and_key() -> None:
    with pytest.raises(SpecError, match=r"missing key 'kind'"):
        validate({"path": "x"})
    with pytest.raises(SpecError, match=r"kind 'export' is missing key 'path'.*'kind': 'export'"):
        validate({"kind": "export"})
    with pytest.raises(SpecError, match=r"kind 'patch' is missing key 'signatures'"):
        validate({"kind": "patch", "base": {"kind": "export", "path": "e"}})
    # Nested: the error says where in the tree.
    bad = {"kind": "soup", "members": [{"spec": {"kind": "export", "path": "a"}, "weight": 1},
                                       {"spec": {"kind": "patch", "base": {"kind": "export"},
                                                 "signatures": [{"path": "s"}]}}]}
    with pytest.raises(SpecError, match=r"members\[1\]\.spec\.base: .*missing key 'path'"):
        validate(bad)
    with pytest.raises(SpecError, match=r"members\[0\]: missing key 'spec'"):
        validate({"kind": "soup", "members": [{"weight": 1}]})
    patch = {"kind": "patch", "base": {"kind": "export", "path": "e"}, "signatures": [{"path": "s"}]}
    with pytest.raises(SpecError, match=r"spec\.signatures must be a non-empty list"):
        validate({**patch, "signatures": []})
    with pytest.raises(SpecError, match=r"spec\.bn_mix must be one of affine, convex"):
        validate({**patch, "bn_mix": "median"})
    with pytest.raises(SpecError, match=r"bn_policy: recalibrate needs a 'calibration' source"):
        validate({**patch, "bn_policy": "recalibrate"})
    with pytest.raises(SpecError, match=r"'calibration' is only used with bn_policy: recalibrate"):
        validate({**patch, "bn_policy": "std", "calibration": {"batches": 1}})
    soup = _soup("a", "b", 0.5, 0.5)
    with pytest.raises(SpecError, match=r"spec\.bn must be one of combine, recalibrate"):
        validate({**soup, "bn": "average"})
    with pytest.raises(SpecError, match=r"calibration_batches only apply to bn: recalibrate"):
        validate({**soup, "calibration_batches": 4})
    with pytest.raises(SpecError, match="not both"):
        validate({**soup, "bn": "recalibrate", "calibration_batches": 4, "calibration": {"batches": 4}})
    with pytest.raises(SpecError, match=r"spec\.calibration_batches must be a positive integer, got 0"):
        validate({**soup, "bn": "recalibrate", "calibration_batches": 0})


@pytest.mark.parametrize("source, match", [
    ({"split": "test", "batches": 2}, r"calibration\.split must be 'train' .* or 'val'"),
    ({"split": "train"}, r"missing key 'batches'"),
    ({"batches": 0}, r"calibration\.batches must be a positive integer"),
    ({"batches": 2, "corruption": "fgo"}, r"calibration\.corruption: unknown corruption 'fgo'"),
    ({"batches": 2, "corruption": "fog", "corruptions": ["fog"]}, "not both"),
    ({"batches": 2, "corruptions": []}, r"corruptions must be a non-empty list"),
    ({"batches": 2, "corruption": "fog", "severity": 6}, r"severity must be one of \[1, 2, 3, 4, 5\]"),
    ({"batches": 2, "data": "cifar11"}, r"calibration\.data: unknown data config 'cifar11'.*cifar10"),
    ({"batches": 2, "overrides": "data.batch_size=4"}, r"overrides must be a list"),
    ({"batches": 2, "seed": 1.5}, r"seed must be an integer"),
    ({"batches": 2, "corruption_name": "fog"}, r"unknown calibration key\(s\) \['corruption_name'\]"),
])
def test_calibration_source_errors(source: dict, match: str) -> None:
    spec = {"kind": "patch", "base": {"kind": "export", "path": "e"}, "signatures": [{"path": "s"}],
            "bn_policy": "recalibrate", "calibration": source}
    with pytest.raises(SpecError, match=match):
        validate(spec)


def _export(path: Path, seed: int) -> Path:
    from rws.models import create_model
    from rws.weights.export import save_export

    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics, so combining/recalibrating them shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    return save_export(path, model, cfg)


class FakeDataModule:
    """The datamodule surface calibration needs: calibration_batches, batch_size, corruption_table."""

    batch_size = 6
    corruption_table = "cifar"

    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []

    def calibration_batches(self, n_batches: int, batch_size: int | None = None):
        bs = batch_size or self.batch_size
        self.requests.append((n_batches, bs))
        g = torch.Generator().manual_seed(77)
        for _ in range(n_batches):
            yield torch.rand(bs, 3, 32, 32, generator=g), torch.randint(0, 10, (bs,), generator=g)


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    # The context reads an export's state dict from its file, with the built model's values.
    assert _equal_states(BuildContext().state_dict(spec), m.state_dict())


def test_nested_soup_builds_recursively(tmp_path: Path) -> None:
    from rws.weights.export import load_export
    from rws.weights.soups import soup_state_dicts

    a, b = _export(tmp_path / "a" / "export", 0), _export(tmp_path / "b" / "export", 1)
    flat = _soup(str(a), str(b), 0.6, 0.4)
    # The flat soup is exactly the soup arithmetic over the exports' files.
    ref = soup_state_dicts([load_export(a).state_dict, load_export(b).state_dict], [0.6, 0.4])
    assert _equal_states(build(flat).state_dict(), ref)
    # A one-hot inner soup is a bit-exact copy of its member: the nested path (members built) gives
    # the very tensors of the flat path (members read).
    copy_of_a = _soup(str(a), str(b), 1.0, 0.0)
    nested = {"kind": "soup", "bn": "combine", "members": [{"spec": copy_of_a, "weight": 0.6},
                                                           {"spec": {"kind": "export", "path": str(b)}, "weight": 0.4}]}
    assert _equal_states(build(nested).state_dict(), ref)
    assert list(BuildContext().state_dict(copy_of_a)) == list(load_export(a).state_dict)  # sorted, like a file
    # A soup of (a soup, a) with weights 0.5/0.5 is the flat soup 0.75 a + 0.25 b up to rounding.
    inner = _soup(str(a), str(b), 0.5, 0.5)
    halves = {"kind": "soup", "members": [{"spec": inner, "weight": 0.5},
                                          {"spec": {"kind": "export", "path": str(a)}, "weight": 0.5}]}
    got, want = build(halves).state_dict(), build(_soup(str(a), str(b), 0.75, 0.25)).state_dict()
    for k in want:
        if want[k].is_floating_point():
            assert torch.allclose(got[k], want[k], atol=1e-6), k
    assert spec_name(halves) == "soup2"


def test_soup_members_with_different_model_configs_are_refused(tmp_path: Path) -> None:
    import yaml

    a, b = _export(tmp_path / "a" / "export", 0), _export(tmp_path / "b" / "export", 1)
    cfg = yaml.safe_load((b / "model.yaml").read_text())
    (b / "model.yaml").write_text(yaml.safe_dump({**cfg, "drop_rate": 0.3}))  # same shapes, other model
    with pytest.raises(SpecError, match="different model configs"):
        build(_soup(str(a), str(b), 0.5, 0.5))


@pytest.fixture
def scaled_kind(monkeypatch: pytest.MonkeyPatch) -> SpecKind:
    """A kind defined by a test: ``{kind: scaled, base: <spec>, factor}`` multiplies every floating
    tensor of its base by ``factor``."""

    def check(spec: dict, where: str) -> None:
        if not isinstance(spec["factor"], (int, float)):
            raise SpecError(f"{where}.factor must be a number")

    def build_scaled(spec: dict, ctx: BuildContext) -> torch.nn.Module:
        model = ctx.build(spec["base"])
        with torch.no_grad():
            for v in model.state_dict().values():
                if v.is_floating_point():
                    v.mul_(spec["factor"])
        return model

    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))  # registrations end with the test
    return register_kind(SpecKind(name="scaled", required=("base", "factor"), build=build_scaled,
                                  children=lambda spec: [(".base", spec["base"])], check=check,
                                  display=lambda spec, name_of: f"{spec['factor']}x{name_of(spec['base'])}"))


def test_custom_kind_builds_and_nests_inside_a_soup(tmp_path: Path, scaled_kind: SpecKind) -> None:
    a = _export(tmp_path / "a" / "export", 0)
    ea = {"kind": "export", "path": str(a)}
    doubled = {"kind": "scaled", "base": ea, "factor": 2}
    assert "scaled" in kind_names() and spec_name(doubled) == "2xa"
    soup = {"kind": "soup", "members": [{"spec": doubled, "weight": 0.5}, {"spec": ea, "weight": 0.5}]}
    validate(soup)
    got, plain = build(soup).state_dict(), build(ea).state_dict()
    for k, v in plain.items():
        if v.is_floating_point():
            assert torch.allclose(got[k], 1.5 * v, atol=1e-6), k
    # Validation recurses through the custom kind's children, with its own checks.
    with pytest.raises(SpecError, match=r"members\[0\]\.spec\.base: .*missing key 'path'"):
        validate({"kind": "soup", "members": [{"spec": {"kind": "scaled", "base": {"kind": "export"}, "factor": 2}}]})
    with pytest.raises(SpecError, match=r"members\[0\]\.spec\.factor must be a number"):
        validate({"kind": "soup", "members": [{"spec": {**doubled, "factor": "two"}}]})


def _rws_cpu_stream(dm: FakeDataModule, cs: list[str], n: int):
    """The stream rws_cpu's eval_recalibrated fed to Patcher.recalibrate (reference, copied)."""
    from rws.corruptions import corrupt

    gen = torch.Generator().manual_seed(1234)
    return (corrupt(x, cs[i % len(cs)], 5, table=dm.corruption_table, generator=gen)
            for i, (x, _) in enumerate(dm.calibration_batches(n, dm.batch_size)))


def test_calibration_stream_matches_the_rws_cpu_loop() -> None:
    cs = ["gaussian_noise", "shot_noise"]
    dm = FakeDataModule()
    got = list(BuildContext(data=dm).calibration_batches(
        {"split": "train", "corruptions": cs, "severity": 5, "batches": 4}))
    want = list(_rws_cpu_stream(FakeDataModule(), cs, 4))
    assert len(got) == 4 and dm.requests == [(4, 6)]
    for (x, y), ref in zip(got, want):
        assert torch.equal(x, ref) and y.shape == (6,)
    # Batches alternate between the corruptions: both differ from the plain batches.
    plain = list(FakeDataModule().calibration_batches(4))
    assert all(not torch.equal(x, p) for (x, _), (p, _) in zip(got, plain))
    # Another seed, another stream; no corruption: the plain batches, at the requested batch size.
    other = list(BuildContext(data=dm).calibration_batches({"corruptions": cs, "batches": 4, "seed": 0}))
    assert not torch.equal(other[0][0], got[0][0])
    plain3 = list(BuildContext(data=dm).calibration_batches({"batches": 2, "batch_size": 3}))
    assert dm.requests[-1] == (2, 3)
    assert all(torch.equal(x, p) for (x, _), (p, _) in zip(plain3, FakeDataModule().calibration_batches(2, 3)))
    with pytest.raises(SpecError, match="no default datamodule"):
        list(BuildContext().calibration_batches({"batches": 2}))


def test_calibration_source_with_data_composes_and_caches_the_datamodule(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from rws.config import compose

    overrides = ["data.subset_per_class=3", f"paths.cache_dir={tmp_path}"]
    source = {"data": "digits", "overrides": overrides, "batches": 2, "batch_size": 4}
    ctx = BuildContext()
    got = list(ctx.calibration_batches(source))
    assert len(ctx.cache) == 1
    (dm,) = ctx.cache.values()
    list(ctx.calibration_batches(source))
    assert list(ctx.cache.values()) == [dm]  # composed once
    ref = instantiate(compose("evaluate", ["data=digits", *overrides]).data)
    ref.setup()
    want = list(ref.calibration_batches(2, 4))
    assert len(got) == 2 and all(torch.equal(x, r) and torch.equal(y, s) for (x, y), (r, s) in zip(got, want))


def _signature(tmp_path: Path, std: Path, seed: int, corruption: str) -> Path:
    from rws.weights.export import load_export
    from rws.weights.signature_io import Signature, save_signature

    state = load_export(std).state_dict
    g = torch.Generator().manual_seed(seed)
    keys = [k for k in state if k.startswith("net.blocks.0.")]
    assert keys, "small_cnn's first block is the patched layer"
    rws = {k: torch.randn(state[k].shape, generator=g) * 0.05 for k in keys
           if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    stats = {k: state[k] * 1.1 for k in keys if k.endswith(("running_mean", "running_var"))}
    return save_signature(tmp_path / f"{corruption}.safetensors",
                          Signature(rws=rws, stats=stats, layers=["net.blocks.0"], bn_policy="robust",
                                    corruption=corruption))


def test_recalibrated_patch_is_reproducible_and_equals_the_rws_cpu_build(tmp_path: Path) -> None:
    from rws.weights.patching import Patcher

    std = _export(tmp_path / "std" / "export", 0)
    fog, snow = _signature(tmp_path, std, 1, "fog"), _signature(tmp_path, std, 2, "snow")
    sigs = [{"path": str(fog), "alpha": 1.0}, {"path": str(snow), "alpha": 1.0}]
    cs = ["fog", "snow"]
    spec = {"kind": "patch", "base": {"kind": "export", "path": str(std)}, "signatures": sigs,
            "bn_policy": "recalibrate", "calibration": {"split": "train", "corruptions": cs, "severity": 5, "batches": 3}}
    one = build(spec, context=BuildContext(data=FakeDataModule())).state_dict()
    two = build(spec, context=BuildContext(data=FakeDataModule())).state_dict()
    assert _equal_states(one, two)
    # rws_cpu's custom build function, as it was.
    model = build(spec["base"])
    patcher = Patcher(model, [(s["path"], s["alpha"]) for s in sigs], bn_policy="recalibrate")
    patcher.apply()
    patcher.recalibrate(_rws_cpu_stream(FakeDataModule(), cs, 3))
    assert _equal_states(one, model.eval().state_dict())
    # Not the unrecalibrated model: the patched BN layer's statistics were re-estimated, the others kept.
    unrecalibrated = {k: v for k, v in spec.items() if k != "calibration"} | {"bn_policy": "robust"}
    robust = build(unrecalibrated).state_dict()
    assert not torch.equal(one["net.blocks.0.bn.running_mean"], robust["net.blocks.0.bn.running_mean"])
    assert torch.equal(one["net.blocks.0.conv.weight"], robust["net.blocks.0.conv.weight"])
    other = [k for k in one if k.endswith("running_mean") and not k.startswith("net.blocks.0.")]
    assert other and all(torch.equal(one[k], robust[k]) for k in other)


def test_recalibrated_soup_matches_the_old_calibration_batches_path(tmp_path: Path) -> None:
    from rws.weights.export import load_export
    from rws.weights.soups import recalibrate_soup_bn, soup_state_dicts

    a, b = _export(tmp_path / "a" / "export", 0), _export(tmp_path / "b" / "export", 1)
    spec = {**_soup(str(a), str(b), 0.6, 0.4), "bn": "recalibrate", "calibration_batches": 3}
    dm = FakeDataModule()
    got = build(spec, context=BuildContext(data=dm)).state_dict()
    assert dm.requests == [(3, dm.batch_size)]
    # The old build_soup(spec, calibration=dm.calibration_batches(N, dm.batch_size)), spelled out.
    ref = load_export(a).build()
    ref.load_state_dict(soup_state_dicts([load_export(a).state_dict, load_export(b).state_dict], [0.6, 0.4]))
    recalibrate_soup_bn(ref.eval(), FakeDataModule().calibration_batches(3, dm.batch_size), 3, "cpu")
    assert _equal_states(got, ref.state_dict())
    combined = build(_soup(str(a), str(b), 0.6, 0.4))
    key = "net.blocks.0.bn.running_mean"
    assert not torch.equal(got[key], combined.state_dict()[key])
    # Without calibration_batches: the evaluation default of 20; a declarative source works the same way.
    dm = FakeDataModule()
    build({k: v for k, v in spec.items() if k != "calibration_batches"}, context=BuildContext(data=dm))
    assert dm.requests == [(20, dm.batch_size)]
    source = {k: v for k, v in spec.items() if k != "calibration_batches"} | {"calibration": {"split": "train", "batches": 3}}
    assert _equal_states(build(source, context=BuildContext(data=FakeDataModule())).state_dict(), got)


@pytest.mark.parametrize("module", ["rws.weights.patching", "rws.weights.soups", "rws.weights.functional_soup"])
def test_weight_arithmetic_imports_no_spec_module(module: str) -> None:
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.startswith('rws.specs') "
            f"or m == 'rws.weights.specs']; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
