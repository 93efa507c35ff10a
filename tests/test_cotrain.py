"""rws.methods.cotrain (Eq. 2 co-training in clean/robust modes) and the paper's attacks: targeted
linf PGD and PGD with Adam (rws.attacks.pgd_adam), also from the adversarial suite."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rws.attacks import PGD, PGDAdam, ThreatModel, build_attack, preserve_modes
from rws.attacks._common import random_other_class
from rws.methods.cotrain import CoTrainModule
from rws.models.contracts import get_mode, mix_weights, set_mode, using_mode


K, SHAPE = 4, (3, 8, 8)
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
SCHED = {"name": "none", "warmup_epochs": 0}


class ToyTwoMode(nn.Module):
    """Shared trunk psi (linear + BN) with a per-mode token added to the hidden features (a stand-in
    for dual cls tokens) and a shared head; ``forward_log`` records (mode, input requires grad)."""

    modes = ("clean", "robust")

    def __init__(self, num_classes: int = K, d_in: int = 3 * 8 * 8) -> None:
        super().__init__()
        self.trunk = nn.Linear(d_in, 16)
        self.bn = nn.BatchNorm1d(16)
        self.token = nn.ParameterDict({m: nn.Parameter(0.5 * torch.randn(16)) for m in self.modes})
        self.head = nn.Linear(16, num_classes)
        self._mode: object = "clean"
        self.forward_log: list[tuple[object, bool]] = []

    @property
    def mode(self):
        return self._mode

    def set_mode(self, mode) -> None:
        mix_weights(mode, self.modes)
        self._mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_log.append((self._mode, x.requires_grad))
        w0, w1 = mix_weights(self._mode, self.modes)
        # The token goes after BN: before it, BN's batch-mean subtraction would cancel it in train mode.
        h = self.bn(self.trunk(x.flatten(1))) + w0 * self.token["clean"] + w1 * self.token["robust"]
        return self.head(torch.relu(h))


def _toy_network(model: nn.Module) -> ToyTwoMode:
    return model.net  # inside the Normalized wrapper


@pytest.fixture
def toy_registered(monkeypatch):
    from rws.models import registry

    def build(num_classes: int, drop_rate: float = 0.0, **_: object) -> nn.Module:
        return ToyTwoMode(num_classes)

    def plain(num_classes: int, drop_rate: float = 0.0, **_: object) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

    for name, fn in (("test_cotrain_toy", build), ("test_cotrain_plain", plain)):
        monkeypatch.setitem(registry._ENTRIES, name, registry.ModelEntry(name, fn, width=False))


TOY = {"_target_": "rws.models.create_model", "name": "test_cotrain_toy", "num_classes": K}


def make(**kw) -> CoTrainModule:
    torch.manual_seed(0)
    kw.setdefault("threat", {"norm": "linf", "eps": 8 / 255})
    return CoTrainModule(model=TOY, optim=OPTIM, sched=SCHED, **kw)


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, K, (n,), generator=g)


# ----- Eq. 2 ----------------------------------------------------------------------------------------
def test_loss_is_eq2_with_a_fixed_delta(toy_registered) -> None:
    m = make(alpha=0.3, label_smoothing=0.1)
    m.train()
    x, y = batch()
    delta = 0.03 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    seen: list[object] = []

    def fixed_attack(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append(get_mode(model))
        return xb + delta

    m.attack = fixed_attack
    set_mode(m.model, 0.7)  # whatever mode the model was in comes back after the step
    out = m.step(x, y)
    assert seen == ["robust"] and get_mode(m.model) == 0.7

    # By hand, on a copy in the same train state (BN in train mode sees the same two batches).
    ref = CoTrainModule(model=TOY, optim=OPTIM, sched=SCHED, threat={"norm": "linf", "eps": 8 / 255})
    ref.load_state_dict(m.state_dict())  # BN statistics too: taken after the step, so reset below
    ref.model.net.bn.reset_running_stats()
    ref.train()
    with using_mode(ref.model, "clean"):
        clean_logits = ref.model(x)
    with using_mode(ref.model, "robust"):
        adv_logits = ref.model(x + delta)
    clean = F.cross_entropy(clean_logits, y, label_smoothing=0.1)
    adv = F.cross_entropy(adv_logits, y, label_smoothing=0.1)
    assert torch.allclose(out.loss, 0.3 * clean + 0.7 * adv, atol=1e-6)
    assert torch.allclose(out.logs["train/clean_loss"][0], clean, atol=1e-6)
    assert torch.allclose(out.logs["train/adv_loss"][0], adv, atol=1e-6)
    acc_c = (clean_logits.argmax(1) == y).float().mean()
    acc_a = (adv_logits.argmax(1) == y).float().mean()
    assert out.logs["train/clean_acc"][0] == acc_c and out.logs["train/adv_acc"][0] == acc_a
    assert list(out.logs) == ["train/clean_loss", "train/clean_acc", "train/adv_loss", "train/adv_acc"]
    # train/acc is over both halves.
    assert out.logits.shape == (2 * len(y), K) and torch.equal(out.target, torch.cat([y, y]))
    # The gradient reaches each mode's token only through its own loss term.
    out.loss.backward()
    g_clean = torch.autograd.grad(0.3 * clean, ref.model.net.token["clean"], retain_graph=True)[0]
    g_robust = torch.autograd.grad(0.7 * adv, ref.model.net.token["robust"])[0]
    assert torch.allclose(m.model.net.token["clean"].grad, g_clean, atol=1e-6)
    assert torch.allclose(m.model.net.token["robust"].grad, g_robust, atol=1e-6)


def test_delta_is_found_in_robust_mode(toy_registered) -> None:
    m = make(alpha=0.5, attack_steps=3, step_size=0.5)
    net = _toy_network(m.model)
    x, y = batch()
    net.forward_log.clear()
    out = m.step(x, y)
    # Attack forwards take an input that requires grad (the input gradient); all three ran in robust mode.
    assert net.forward_log == [("clean", False), ("robust", True), ("robust", True), ("robust", True),
                               ("robust", False)]
    assert torch.isfinite(out.loss)
    # The attack ran the model in eval mode (model_mode) and put the train flags back.
    assert m.model.training


def test_alpha_one_never_attacks_and_alpha_zero_skips_the_clean_pass(toy_registered) -> None:
    m = make(alpha=1.0)

    def boom(*_a):
        raise AssertionError("alpha=1 must not attack")

    m.attack = boom
    x, y = batch()
    out = m.step(x, y)
    with using_mode(m.model, "clean"):
        nominal = F.cross_entropy(m.model(x), y)
    assert torch.allclose(out.loss, nominal, atol=1e-6)
    assert list(out.logs) == ["train/clean_loss", "train/clean_acc"] and out.logits.shape == (len(y), K)

    m = make(alpha=0.0, attack_steps=2)
    net = _toy_network(m.model)
    net.forward_log.clear()
    out = m.step(x, y)
    assert [mode for mode, _ in net.forward_log] == ["robust"] * 3
    assert list(out.logs) == ["train/adv_loss", "train/adv_acc"]
    assert torch.equal(out.loss, out.logs["train/adv_loss"][0])


def test_config_errors(toy_registered) -> None:
    plain = {**TOY, "name": "test_cotrain_plain"}
    with pytest.raises(ValueError, match="model.adapter"):
        CoTrainModule(model=plain, optim=OPTIM, sched=SCHED)
    with pytest.raises(ValueError, match="alpha"):
        make(alpha=1.5)
    with pytest.raises(ValueError, match="targeted"):
        make(attack="fgsm_rs", targeted=True)
    with pytest.raises(ValueError, match="init_radius"):
        make(attack="pgd", init_radius=2.0)
    m = make(threat=None)
    assert m.hparams["threat"] == {"norm": "linf", "eps": pytest.approx(8 / 255)}  # cifar default
    m = make(threat={"norm": "linf", "eps": "4/255"}, dataset_kind="imagenet")
    assert m.threat.eps == pytest.approx(4 / 255) and isinstance(m.hparams["threat"]["eps"], float)


def test_seeded_attack_repeats_and_leaves_the_global_rng(toy_registered) -> None:
    x, y = batch()
    a, b = make(seed=3, targeted=True), make(seed=3, targeted=True)
    torch.manual_seed(11)
    r0 = torch.rand(1)
    torch.manual_seed(11)
    xa = a.adversarial_batch(x, y)
    assert torch.equal(torch.rand(1), r0)
    assert torch.equal(xa, b.adversarial_batch(x, y))
    assert not torch.equal(xa, make(seed=4, targeted=True).adversarial_batch(x, y))


def test_fit_logs_the_four_values(toy_registered) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    m = make(alpha=0.5)
    x, y = batch(32)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    trainer.fit(m, DataLoader(TensorDataset(x, y), batch_size=16))
    metrics = trainer.callback_metrics
    for key in ("train/clean_loss", "train/adv_loss", "train/clean_acc", "train/adv_acc", "train/acc"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    after = m.model.state_dict()
    for key in ("net.token.clean", "net.token.robust", "net.trunk.weight"):
        assert not torch.equal(before[key], after[key]), key


# ----- presets ------------------------------------------------------------------------------------
PAPER = {  # preset: (attack, absolute step in pixels, absolute init radius or None); eps 4/255
    "cotrain_pgd2": ("pgd", 2.5 / 255, None),
    "cotrain_pgd5": ("pgd", 1 / 255, None),
    "cotrain_fastat": ("fgsm_rs", 4 / 255, 4 / 255),
    "cotrain_nfgsm": ("n_fgsm", 3 / 255, 8 / 255),
    "cotrain_fastat_appendix": ("fgsm_rs", 5 / 255, 4 / 255),
    "cotrain_nfgsm_appendix": ("n_fgsm", 6 / 255, 8 / 255),
    "cotrain_targeted": ("pgd", 2.5 / 255, None),
}


def _compose(method: str):
    from hydra import compose, initialize_config_dir

    from rws.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"method={method}", "data=digits"])


def _method_kwargs(cfg) -> dict:
    from omegaconf import OmegaConf

    kw = OmegaConf.to_container(cfg.method, resolve=True)
    kw.pop("_target_"), kw.pop("name")
    return kw


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_presets_have_the_papers_absolute_sizes(toy_registered, preset: str) -> None:
    kind, step, init = PAPER[preset]
    module = CoTrainModule(model=TOY, **_method_kwargs(_compose(preset)))
    atk = module.attack
    assert module.threat == ThreatModel("linf", 4 / 255) and module.alpha == 0.5
    assert type(atk).__name__ == {"pgd": "PGD", "fgsm_rs": "FGSMRS", "n_fgsm": "NFGSM"}[kind]
    assert atk.step_size * atk.threat.eps == pytest.approx(step)
    if init is not None:
        radius = atk.noise if kind == "n_fgsm" else atk.init_radius
        assert radius * atk.threat.eps == pytest.approx(init)
    assert getattr(atk, "targeted", False) == (preset == "cotrain_targeted")
    assert getattr(atk, "steps", 1) == {"cotrain_pgd5": 5}.get(preset, 2 if kind == "pgd" else 1)


def test_base_and_recipe_presets(toy_registered) -> None:
    base = _compose("cotrain")
    assert base.method.threat.eps is None and base.method.attack_steps == 2
    m = CoTrainModule(model=TOY, **_method_kwargs(base))
    assert m.threat.eps == pytest.approx(8 / 255)  # digits is a cifar-kind set
    l2 = CoTrainModule(model=TOY, **_method_kwargs(_compose("cotrain_l2")))
    assert l2.threat == ThreatModel("l2", 0.5)
    paper = _compose("cotrain_paper")
    assert paper.method.optim.name == "adamw" and list(paper.method.optim.betas) == [0.9, 0.95]
    assert paper.method.optim.weight_decay == 0.3 and paper.method.label_smoothing == 0.1
    assert Fraction(str(paper.method.threat.eps)) == Fraction(4, 255)


# ----- attacks on a small trained model -------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.head = nn.Linear(32, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2, (K, *SHAPE), generator=g).float() * 2 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    return (0.5 + 0.06 * patterns[y] + 0.12 * torch.randn(n, *SHAPE, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet()
    x, y = blobs(1024, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2, foreach=False)
    for _ in range(120):
        idx = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    xt, yt = blobs(256, 2)
    return model.eval(), xt, yt


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), preserve_modes(model, "eval"):
        return (model(x).argmax(1) == y).float().mean().item()


def test_random_targets_are_never_the_label_and_cover_the_others() -> None:
    y = torch.arange(K).repeat(500)
    t = random_other_class(y, K, torch.Generator().manual_seed(0))
    assert not (t == y).any()
    for c in range(K):  # every other class is drawn for each label, about equally often
        counts = torch.bincount(t[y == c], minlength=K)
        assert counts[c] == 0 and (counts[torch.arange(K) != c] > 120).all()
    with pytest.raises(ValueError, match="2 classes"):
        random_other_class(y[:3] * 0, 1, None)


def test_targeted_pgd_moves_toward_the_target(trained) -> None:
    model, x, y = trained
    atk = build_attack({"norm": "linf", "eps": 0.05}, steps=10, targeted=True,
                       generator=torch.Generator().manual_seed(0))
    x_adv = atk(model, x, y)
    target = atk.last_targets
    assert target is not None and not (target == y).any()
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p_clean = model(x).softmax(1).gather(1, target[:, None]).squeeze(1)
        p_adv = model(x_adv).softmax(1).gather(1, target[:, None]).squeeze(1)
        hit = (model(x_adv).argmax(1) == target).float().mean()
    assert (p_adv > p_clean).float().mean() > 0.95 and p_adv.mean() > p_clean.mean() + 0.2
    assert hit > 0.2  # a good share of the examples now predict the target
    # The targets come from the attack's generator: same seed, same targets.
    again = PGD({"norm": "linf", "eps": 0.05}, steps=10, targeted=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(model, x, y), x_adv) and torch.equal(again.last_targets, target)
    # Untargeted PGD is unchanged by the option's existence (no target drawn, same stream).
    plain = PGD({"norm": "linf", "eps": 0.05}, steps=3, generator=torch.Generator().manual_seed(0))
    assert plain.last_targets is None and plain(model, x, y).shape == x.shape and plain.last_targets is None


def test_pgd_adam_stays_in_eps_and_is_at_least_as_strong_as_pgd10(trained) -> None:
    model, x, y = trained
    threat = ThreatModel("linf", 0.05)
    adam = PGDAdam(threat, generator=torch.Generator().manual_seed(0))
    assert (adam.steps, adam.milestones) == (40, (20, 30))
    assert [adam.lr_at(k) for k in (0, 19, 20, 29, 30, 39)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    x_adam = adam(model, x, y)
    x_pgd = PGD(threat, steps=10, generator=torch.Generator().manual_seed(0))(model, x, y)
    assert (x_adam - x).abs().max() <= threat.eps + 1e-6
    assert x_adam.min() >= 0 and x_adam.max() <= 1
    clean, acc_adam, acc_pgd = accuracy(model, x, y), accuracy(model, x_adam, y), accuracy(model, x_pgd, y)
    assert clean > 0.95 and acc_pgd < clean - 0.3
    assert acc_adam <= acc_pgd, (acc_adam, acc_pgd)
    # keep_best can only lower accuracy further; the sign update and l2 are valid settings too.
    best = PGDAdam(threat, keep_best=True, generator=torch.Generator().manual_seed(0))(model, x, y)
    assert accuracy(model, best, y) <= acc_adam and (best - x).abs().max() <= threat.eps + 1e-6
    x_l2 = PGDAdam({"norm": "l2", "eps": 0.5}, steps=5, update="sign")(model, x, y)
    assert ((x_l2 - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    with pytest.raises(ValueError, match="l1"):
        PGDAdam({"norm": "l1", "eps": 1.0})
    with pytest.raises(ValueError, match="update"):
        PGDAdam(threat, update="adam")


def test_pgd_adam_in_robust_correct_and_the_suite(trained) -> None:
    from rws.attacks.evaluate import check_eval_attack, robust_correct
    from rws.evaluation.suites.adversarial import AdversarialSuite

    model, x, y = trained
    threat = ThreatModel("linf", 0.05)
    r = robust_correct(model, x[:64], y[:64], threat, attacks=["pgd40-adam"], seed=0)
    x_adv = PGDAdam(threat, steps=40, generator=torch.Generator().manual_seed(0))(model, x[:64], y[:64])
    with torch.no_grad():
        direct = (model(x[:64]).argmax(1) == y[:64]) & (model(x_adv).argmax(1) == y[:64])
    assert torch.equal(r, direct)
    # "pgd-adam" takes n_iter steps: with n_iter=40 it is the same attack.
    assert torch.equal(robust_correct(model, x[:64], y[:64], threat, attacks=["pgd-adam"], n_iter=40), r)
    with pytest.warns(UserWarning, match="l1"):
        robust_correct(model, x[:8], y[:8], ThreatModel("l1", 1.0), attacks=["pgd40-adam"])
    with pytest.raises(ValueError, match="pgd40-adam"):
        check_eval_attack("pgd-adamw")
    suite = AdversarialSuite({"name": "adversarial", "attacks": ["apgd-ce", "apgd-t", "pgd40-adam"]})
    assert suite.attacks == ["apgd-ce", "apgd-t", "pgd40-adam"]
    assert AdversarialSuite({"name": "adversarial"}).attacks == ["apgd-ce", "apgd-t"]  # default unchanged
    with pytest.raises(ValueError, match="unknown evaluation attack"):
        AdversarialSuite({"name": "adversarial", "attacks": ["pgd40"]})


# ----- the real adapter model --------------------------------------------------------------------
def test_vit_cls_token_adapter_cotrains_for_two_steps() -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    cfg = {"_target_": "rws.models.create_model", "name": "vit_cpu_patch4_32", "num_classes": 10,
           "adapter": "cls_token"}
    torch.manual_seed(0)
    m = CoTrainModule(model=cfg, optim=OPTIM, sched=SCHED, threat={"norm": "linf", "eps": 4 / 255},
                      attack_steps=2, step_size=0.625)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
    net = m.model.net  # the DualModeNetwork inside Normalized
    assert net.adapter_kind == "cls_token"
    before = {k: (c.detach().clone(), r.detach().clone()) for k, (c, r) in net.domain_parameters().items()}
    assert before and all(torch.equal(c, r) for c, r in before.values())  # both modes start alike
    shared_before = net.net.blocks[0].attn.qkv.weight.detach().clone()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(m, DataLoader(data, batch_size=8))
    for key in ("train/clean_loss", "train/adv_loss", "train/clean_acc", "train/adv_acc"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    # Each mode's token learned from its own loss term, so the two diverged; the shared trunk learned too.
    for name, (clean, robust) in net.domain_parameters().items():
        c0, r0 = before[name]
        assert not torch.equal(clean, c0) and not torch.equal(robust, r0) and not torch.equal(clean, robust), name
    assert not torch.equal(net.net.blocks[0].attn.qkv.weight, shared_before)
    assert net.mode == "clean"  # the step restores the mode the model was in


def test_train_config_builds_cotrain_on_an_adapter_model() -> None:
    from hydra import compose, initialize_config_dir

    from rws.config import CONF_DIR
    from rws.training import build_method

    def cfg(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=["method=cotrain_pgd2", "model=vit_cpu_patch4_32",
                                                           "data=digits", *overrides])

    module = build_method(cfg("model.adapter=cls_token"))
    assert isinstance(module, CoTrainModule) and module.model.net.adapter_kind == "cls_token"
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = module.step(x, y)
    assert torch.isfinite(out.loss) and out.logits.shape == (8, 10)
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="model.adapter"):  # hydra wraps the ValueError
        build_method(cfg())  # adapter: null, a plain ViT
