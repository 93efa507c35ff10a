"""rws.models.contracts: model modes (clean/robust, a β mix) and named heads; the wrappers
(ModeView, HeadView, HeadSelection) and the spec kinds that expose them to evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rws.attacks import build_attack, module_modes
from rws.models.contracts import (HeadSelection, HeadView, ModeView, default_head, forward_heads, get_mode,
                                  has_heads, has_modes, head_names, mix_weights, mode_names,
                                  register_selection_rule, selection_rule_names, set_mode, using_mode)


class TwoModeLinear(nn.Module):
    """ψ ∪ (w0·φ_clean + w1·φ_robust): a shared linear map plus one linear map per mode. The maps
    are linear, so mixing their parameters is mixing their outputs."""

    modes = ("clean", "robust")

    def __init__(self, num_classes: int = 3, d_in: int = 3 * 4 * 4) -> None:
        super().__init__()
        self.shared = nn.Linear(d_in, num_classes)
        self.adapters = nn.ModuleDict({m: nn.Linear(d_in, num_classes) for m in self.modes})
        self._mode: object = "clean"

    @property
    def mode(self):
        return self._mode

    def set_mode(self, mode) -> None:
        mix_weights(mode, self.modes)  # validates
        self._mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_clean, w_robust = mix_weights(self._mode, self.modes)
        z = x.flatten(1)
        return self.shared(z) + w_clean * self.adapters["clean"](z) + w_robust * self.adapters["robust"](z)


class TwoHeadNet(nn.Module):
    """A BN trunk and two dropout heads; ``forward`` is the default head."""

    heads = ("clean", "robust")
    default_head = "clean"

    def __init__(self, num_classes: int = 3, drop_rate: float = 0.5, d_in: int = 3 * 4 * 4) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head_layers = nn.ModuleDict({h: nn.Sequential(nn.Dropout(drop_rate), nn.Linear(16, num_classes))
                                          for h in self.heads})

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {h: self.head_layers[h](z) for h in self.heads}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(x)[self.default_head]


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def two_mode() -> TwoModeLinear:
    torch.manual_seed(0)
    return TwoModeLinear().eval()


def two_head(drop_rate: float = 0.5) -> TwoHeadNet:
    torch.manual_seed(0)
    model = TwoHeadNet(drop_rate=drop_rate)
    model.train()
    model(images(32, seed=5))  # non-trivial BN statistics
    return model.eval()


# ----- modes ---------------------------------------------------------------------------------------
def test_set_mode_switches_in_place_and_mixes() -> None:
    m, x = two_mode(), images()
    params = [id(p) for p in m.parameters()]
    state = {k: v.clone() for k, v in m.state_dict().items()}
    assert has_modes(m) and mode_names(m) == ("clean", "robust") and get_mode(m) == "clean"
    clean = m(x)
    set_mode(m, "robust")
    robust = m(x)
    assert m.mode == "robust" and not torch.allclose(clean, robust)
    # No rebuild, no parameter touched: the same objects with the same values.
    assert [id(p) for p in m.parameters()] == params
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    set_mode(m, 1.0)
    assert torch.equal(m(x), clean) and m.mode == 1.0
    set_mode(m, 0)
    assert torch.equal(m(x), robust)
    set_mode(m, 0.25)
    assert torch.allclose(m(x), 0.25 * clean + 0.75 * robust, atol=1e-6)
    set_mode(m, 1.5)  # extrapolation
    assert torch.allclose(m(x), 1.5 * clean - 0.5 * robust, atol=1e-6)
    set_mode(m, (1.0, 1.0))  # both adapters at full weight
    assert torch.allclose(m(x), clean + robust - m.shared(x.flatten(1)), atol=1e-6)
    assert mix_weights([0.2, 0.3], m.modes) == (0.2, 0.3)


def test_set_mode_errors_name_the_valid_modes() -> None:
    m = two_mode()
    with pytest.raises(ValueError, match="valid modes: clean, robust"):
        set_mode(m, "adversarial")
    with pytest.raises(ValueError, match="beta"):
        set_mode(m, True)
    with pytest.raises(ValueError, match="declares no modes"):
        set_mode(nn.Linear(2, 2), "clean")
    with pytest.raises(ValueError, match="exactly two modes"):
        mix_weights(0.5, ("a", "b", "c"))
    assert m.mode == "clean"
    assert not has_modes(nn.Linear(2, 2)) and not has_heads(nn.Linear(2, 2))


def test_using_mode_restores_the_previous_mode_even_on_error() -> None:
    m = two_mode()
    set_mode(m, 0.7)
    with using_mode(m, "robust"):
        assert m.mode == "robust"
    assert m.mode == 0.7
    with pytest.raises(RuntimeError):
        with using_mode(m, "clean"):
            raise RuntimeError("inside")
    assert m.mode == 0.7


def test_mode_view_and_attacks_in_the_mode() -> None:
    m, x = two_mode(), images(16)
    y = m(x).argmax(1)
    set_mode(m, "clean")
    robust_view = ModeView(m, "robust")
    with using_mode(m, "robust"):
        expected = m(x)
    assert torch.equal(robust_view(x), expected) and m.mode == "clean"

    def attack(model: nn.Module) -> torch.Tensor:
        pgd = build_attack({"norm": "linf", "eps": 8 / 255}, steps=3, generator=torch.Generator().manual_seed(0))
        return pgd(model, x, y)

    adv_robust, adv_clean = attack(robust_view), attack(ModeView(m, "clean"))
    assert m.mode == "clean"  # the attack through the view left the model's mode alone
    assert not torch.equal(adv_robust, adv_clean)
    # The attack through the view is the attack on the model switched to that mode.
    with using_mode(m, "robust"):
        assert torch.equal(attack(m), adv_robust)
    assert (adv_robust - x).abs().max() <= 8 / 255 + 1e-6
    with pytest.raises(ValueError, match="valid modes"):
        ModeView(m, "nope")
    # A view keeps the base's heads, answered in its mode.
    heads = two_head()
    assert head_names(ModeView(m, "robust")) == () and not has_modes(ModeView(m, "robust"))
    with pytest.raises(ValueError, match="declares no modes"):
        ModeView(heads, "clean")


# ----- heads ---------------------------------------------------------------------------------------
def test_head_view_is_that_head() -> None:
    m, x = two_head(), images()
    out = m.forward_heads(x)
    assert has_heads(m) and head_names(m) == ("clean", "robust") and default_head(m) == "clean"
    assert torch.equal(m(x), out["clean"])
    for h in m.heads:
        assert torch.equal(HeadView(m, h)(x), out[h])
    assert not torch.equal(out["clean"], out["robust"])
    with pytest.raises(ValueError, match="valid heads: clean, robust"):
        HeadView(m, "student")
    with pytest.raises(ValueError, match="declares no heads"):
        HeadView(nn.Linear(2, 2), "clean")


def test_head_selection_is_seeded_and_leaves_rng_and_flags_alone() -> None:
    m, x = two_head(), images(16)
    flags, bn_stats = module_modes(m), m.trunk[2].running_mean.clone()
    sel = HeadSelection(m, "max_confidence", samples=6, seed=3)
    rng = torch.get_rng_state()
    a = sel(x)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert module_modes(m) == flags                   # dropout switched back off, BN never touched
    assert torch.equal(m.trunk[2].running_mean, bn_stats)
    assert torch.equal(sel(x), a)                     # repeatable
    assert torch.equal(HeadSelection(m, "max_confidence", samples=6, seed=3)(x), a)
    assert not torch.equal(HeadSelection(m, "max_confidence", samples=6, seed=4)(x), a)
    # Without dropout the passes agree and the seed does not matter.
    quiet = two_head(drop_rate=0.0)
    assert torch.equal(HeadSelection(quiet, samples=4, seed=0)(x), HeadSelection(quiet, samples=4, seed=9)(x))


def test_head_selection_returns_the_chosen_heads_log_mean_probabilities() -> None:
    m, x = two_head(), images(16)
    sel = HeadSelection(m, "max_confidence", samples=5, seed=1)
    out, choice = sel.choose(x)
    probs = sel.head_probabilities(x)                 # (samples, heads, batch, classes)
    assert probs.shape == (5, 2, 16, 3)
    mean = probs.mean(0)
    expected_choice = torch.stack([mean[0].max(1).values, mean[1].max(1).values], 1).argmax(1)
    assert torch.equal(choice, expected_choice)
    assert torch.allclose(out.exp(), mean[choice, torch.arange(16)], atol=1e-6)
    assert torch.equal(sel(x), out)
    # samples=1 is one plain pass; the fixed rule is then that head's log-softmax.
    one = HeadSelection(m, "fixed", samples=1, head="robust")
    assert torch.allclose(one(x), HeadView(m, "robust")(x).log_softmax(1), atol=1e-5)
    assert not torch.allclose(HeadSelection(m, "fixed", samples=8, seed=0, head="robust")(x), one(x))


def test_selection_rule_registry_and_options() -> None:
    m = two_head()
    assert {"max_confidence", "fixed"} <= set(selection_rule_names())
    with pytest.raises(ValueError, match="unknown selection rule 'nope'; rules: .*max_confidence"):
        HeadSelection(m, "nope")
    with pytest.raises(ValueError, match="takes options"):
        HeadSelection(m, "max_confidence", temperature=2.0)
    with pytest.raises(ValueError, match="valid heads"):
        HeadSelection(m, "fixed", head="student")
    with pytest.raises(ValueError, match="samples"):
        HeadSelection(m, samples=0)
    with pytest.raises(ValueError, match="already registered"):
        register_selection_rule("fixed", lambda probs, heads: probs)

    def last_head(probs: torch.Tensor, heads: tuple[str, ...]) -> torch.Tensor:
        return torch.full((probs.shape[2],), len(heads) - 1, dtype=torch.long)

    register_selection_rule("test_last_head", last_head)
    x = images()
    assert torch.allclose(HeadSelection(m, "test_last_head")(x), HeadView(m, "robust")(x).log_softmax(1), atol=1e-5)


def test_count_correct_on_a_head_view_is_an_argmax_count() -> None:
    from rws.evaluation.cells import count_correct

    m = two_head()
    x, y = images(40, seed=2), torch.randint(3, (40,), generator=torch.Generator().manual_seed(2))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]
    for h in m.heads:
        expected = int((m.forward_heads(x)[h].argmax(1) == y).sum())
        assert count_correct(HeadView(m, h), batches, torch.device("cpu")) == (expected, 40)


def test_wrappers_pass_the_other_contract_through() -> None:
    class Both(TwoHeadNet):
        """Two heads whose trunk has a clean and a robust bias."""

        modes = ("clean", "robust")

        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.ParameterDict({k: nn.Parameter(torch.randn(16)) for k in self.modes})
            self.mode = "clean"

        def set_mode(self, mode) -> None:
            self.mode = mode

        def forward_heads(self, x):
            w = mix_weights(self.mode, self.modes)
            z = self.trunk(x) + w[0] * self.bias["clean"] + w[1] * self.bias["robust"]
            return {h: self.head_layers[h](z) for h in self.heads}

    torch.manual_seed(0)
    m, x = Both().eval(), images()
    view = HeadView(m, "robust")
    assert mode_names(view) == ("clean", "robust")
    with using_mode(view, "robust"):
        assert m.mode == "robust"
        robust = view(x)
    assert m.mode == "clean" and not torch.equal(view(x), robust)
    mv = ModeView(m, "robust")
    assert head_names(mv) == ("clean", "robust") and default_head(mv) == "clean"
    assert torch.equal(HeadView(mv, "robust")(x), robust) and m.mode == "clean"


# ----- exports and spec kinds -----------------------------------------------------------------------
@pytest.fixture
def registered_toys(monkeypatch):
    """Register the toy models under create_model names for this test only."""
    from rws.models import registry

    def two_head_net(num_classes: int, drop_rate: float = 0.5, **_: object) -> nn.Module:
        return TwoHeadNet(num_classes, drop_rate=drop_rate, d_in=3 * 4 * 4)

    def two_mode_net(num_classes: int, drop_rate: float = 0.0, **_: object) -> nn.Module:
        return TwoModeLinear(num_classes)

    for name, build in (("test_two_head", two_head_net), ("test_two_mode", two_mode_net)):
        monkeypatch.setitem(registry._ENTRIES, name, registry.ModelEntry(name, build, width=False))


def _export(tmp_path, name: str, **cfg):
    from rws.models import create_model
    from rws.weights.export import save_export

    cfg = {"_target_": "rws.models.create_model", "name": name, "num_classes": 3, **cfg}
    torch.manual_seed(0)
    model = create_model(**{k: v for k, v in cfg.items() if k != "_target_"})
    model.train()
    model(images(32, seed=5))
    return save_export(tmp_path / name, model.eval(), cfg), model


def test_multi_head_export_rebuilds_with_the_default_head(tmp_path, registered_toys) -> None:
    from rws.weights.export import load_export

    path, model = _export(tmp_path, "test_two_head", drop_rate=0.3)
    rebuilt = load_export(path).build()
    x = images()
    assert has_heads(rebuilt) and head_names(rebuilt) == ("clean", "robust")
    heads = forward_heads(rebuilt, x)  # through the Normalized wrapper: normalization applied
    assert torch.equal(rebuilt(x), heads["clean"])
    assert torch.equal(heads["robust"], forward_heads(model, x)["robust"])
    assert torch.equal(HeadView(rebuilt, "robust")(x), heads["robust"])


def test_spec_kinds_mode_and_heads(tmp_path, registered_toys) -> None:
    import rws.specs.kinds.heads  # noqa: F401  (registers the kinds until they are built-ins)
    import rws.specs.kinds.mode  # noqa: F401
    from rws.specs import SpecError, build, spec_name

    heads_path, _ = _export(tmp_path, "test_two_head")
    mode_path, _ = _export(tmp_path, "test_two_mode")
    x = images()
    base_h, base_m = {"kind": "export", "path": str(heads_path)}, {"kind": "export", "path": str(mode_path)}
    plain = build(base_h)
    view = build({"kind": "heads", "base": base_h, "head": "robust"})
    assert isinstance(view, HeadView) and torch.equal(view(x), forward_heads(plain, x)["robust"])
    sel_spec = {"kind": "heads", "base": base_h, "select": {"rule": "max_confidence", "samples": 4, "seed": 0}}
    sel = build(sel_spec)
    assert isinstance(sel, HeadSelection) and sel.samples == 4
    assert torch.equal(sel(x), HeadSelection(plain, "max_confidence", samples=4, seed=0)(x))
    assert spec_name(sel_spec) == "test_two_head[max_confidence]"

    robust = build({"kind": "mode", "base": base_m, "mode": "robust"})
    assert robust.net.mode == "robust"
    clean = build(base_m)
    with using_mode(clean, "robust"):
        assert torch.equal(robust(x), clean(x))
    assert torch.allclose(build({"kind": "mode", "base": base_m, "mode": 0.9})(x),
                          0.9 * clean(x) + 0.1 * robust(x), atol=1e-6)
    # Keys stay the export's, so weight arithmetic can nest on top of a mode.
    assert robust.state_dict().keys() == clean.state_dict().keys()

    with pytest.raises(SpecError, match="valid heads: clean, robust"):
        build({"kind": "heads", "base": base_h, "head": "student"})
    with pytest.raises(SpecError, match="valid modes: clean, robust"):
        build({"kind": "mode", "base": base_m, "mode": "adversarial"})
    with pytest.raises(SpecError, match="declares no modes"):
        build({"kind": "mode", "base": base_h, "mode": "robust"})
    with pytest.raises(SpecError, match="declares no heads"):
        build({"kind": "heads", "base": base_m, "head": "clean"})
    with pytest.raises(SpecError, match="exactly one of"):
        build({"kind": "heads", "base": base_h, "head": "clean", "select": {"rule": "max_confidence"}})
    with pytest.raises(SpecError, match="unknown rule"):
        build({"kind": "heads", "base": base_h, "select": {"rule": "nope"}})
    with pytest.raises(SpecError, match="samples"):
        build({"kind": "heads", "base": base_h, "select": {"rule": "max_confidence", "samples": 0}})
    with pytest.raises(SpecError, match="beta"):
        build({"kind": "mode", "base": base_m, "mode": [1, 2, 3]})
