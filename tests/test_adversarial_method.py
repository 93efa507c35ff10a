"""rws.methods.adversarial: single / MAX / SAT / E-AT adversarial training."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from rws.methods.adversarial import AdversarialModule

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second intra-op thread only adds synchronization, which costs
    seconds per test when other processes load the CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MODEL = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 4, "width": 0.25}
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
SCHED = {"name": "none", "warmup_epochs": 0}
THREATS = [{"norm": "linf", "eps": 8 / 255}, {"norm": "l2", "eps": 0.5}, {"norm": "l1", "eps": 4.0}]


def make(mode: str, threats=THREATS, **kw) -> AdversarialModule:
    torch.manual_seed(0)
    return AdversarialModule(model=MODEL, optim=OPTIM, sched=SCHED, mode=mode, threats=threats,
                             attack_steps=kw.pop("attack_steps", 2), **kw)


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_hparams_are_primitives_and_defaults_resolve() -> None:
    m = AdversarialModule(model=MODEL, optim=OPTIM, sched=SCHED, threats=[{"norm": "linf", "eps": None}])
    assert m.hparams["threats"] == [{"norm": "linf", "eps": pytest.approx(8 / 255)}]
    m = AdversarialModule(model=MODEL, optim=OPTIM, sched=SCHED, mode="sat", dataset_kind="imagenet",
                          threats=[{"norm": "l2"}, {"norm": "l1"}])
    assert [t.eps for t in m.threats] == [4.0, 255.0]
    with pytest.raises(ValueError):
        make("single")  # three threats
    with pytest.raises(ValueError):
        make("max", attack="fgsm_rs")  # one-step attacks are linf only


def test_max_picks_the_worst_norm_per_example() -> None:
    m = make("max")
    x, y = batch()
    recorded: list[torch.Tensor] = []

    class Recorder:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, model, x, y):
            out = self.inner(model, x, y)
            recorded.append(out)
            return out

    m.attacks = [Recorder(a) for a in m.attacks]
    x_adv, ids = m.adversarial_batch(x, y)
    m.model.eval()
    with torch.no_grad():
        losses = torch.stack([torch.nn.functional.cross_entropy(m.model(xa), y, reduction="none")
                              for xa in recorded], 1)
    worst = losses.argmax(1)
    assert torch.equal(ids, worst)
    expected = torch.stack(recorded, 1)[torch.arange(len(y)), worst]
    assert torch.equal(x_adv, expected)


def test_eat_ema_sampling_follows_running_error() -> None:
    """eat_statistic=ema (this project's earlier rule, kept as an option)."""
    m = make("eat", threats=[{"norm": "linf", "eps": 8 / 255}, {"norm": "l1", "eps": 4.0}], eat_statistic="ema")
    assert torch.allclose(m.sampling_probs(), torch.tensor([0.5, 0.5]))
    m.robust_error_ema.copy_(torch.tensor([0.2, 0.6]))
    assert torch.allclose(m.sampling_probs(), torch.tensor([0.25, 0.75]))
    draws = torch.tensor([m._pick_threat() for _ in range(4000)])
    assert abs((draws == 1).float().mean().item() - 0.75) < 0.03
    # The EMA moves toward the observed training robust error.
    m.update_error_ema(0, 1.0)
    assert m.robust_error_ema[0].item() == pytest.approx(0.9 * 0.2 + 0.1 * 1.0)
    # SAT stays uniform whatever the errors.
    s = make("sat", threats=[{"norm": "linf", "eps": 8 / 255}, {"norm": "l1", "eps": 4.0}])
    s.robust_error_ema.copy_(torch.tensor([0.2, 0.6]))
    s.update_eat_counts(0, 1, 10)
    s.update_eat_counts(1, 9, 10)
    assert torch.allclose(s.sampling_probs(), torch.tensor([0.5, 0.5]))


def _definition_probs(acc_norms: list[list[float]]) -> list[float]:
    """E-AT's norm sampling as github.com/fra31/robust-finetuning (train.py) defines it, restated:
    per norm [robust-correct count, attacked count] since training began; weights 1 - accuracy, the
    same weight for every norm until each has been attacked; random.choices normalizes the weights."""
    if all(n > 0 for _, n in acc_norms):
        weights = [1.0 - c / n for c, n in acc_norms]
    else:
        weights = [1.0 - 0.5] * len(acc_norms)
    return [w / sum(weights) for w in weights]


def test_eat_sampling_follows_the_definition() -> None:
    """Default E-AT: p_j proportional to 1 - the cumulative robust accuracy of norm j since training
    began, uniform until every norm has been attacked; after a hand-made sequence of per-norm robust
    accuracies the probabilities equal the definition's."""
    threats = [{"norm": "linf", "eps": 8 / 255}, {"norm": "l2", "eps": 0.5}, {"norm": "l1", "eps": 4.0}]
    m = make("eat", threats=threats)
    assert m.eat_statistic == "cumulative"
    # (threat, robust-correct, batch size) in training order; norm 2 comes last.
    sequence = [(0, 30, 64), (0, 10, 64), (1, 50, 64), (0, 0, 32), (1, 64, 64), (2, 16, 64), (2, 40, 64),
                (1, 20, 48), (0, 64, 64)]
    acc_norms = [[0.0, 0.0] for _ in threats]
    for step, (j, correct, n) in enumerate(sequence):
        m.update_eat_counts(j, correct, n)
        acc_norms[j][0] += correct
        acc_norms[j][1] += n
        expected = _definition_probs(acc_norms)
        probs = m.sampling_probs()
        assert probs.tolist() == pytest.approx(expected, abs=1e-6), step
        if step < 5:  # norm 2 not attacked yet: uniform, whatever the other accuracies
            assert probs.tolist() == pytest.approx([1 / 3] * 3)
    assert not torch.allclose(m.sampling_probs(), torch.full((3,), 1 / 3))
    # Cumulative, not a moving average: an old batch weighs as much as a new one.
    assert m.eat_errors().tolist() == pytest.approx([1 - 104 / 224, 1 - 134 / 176, 1 - 56 / 128])
    draws = torch.tensor([m._pick_threat() for _ in range(6000)])
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert freq.tolist() == pytest.approx(_definition_probs(acc_norms), abs=0.03)


class FixedAttack:
    """Returns the input unchanged and reports a chosen per-example robustness as its own record."""

    def __init__(self, correct: torch.Tensor | None) -> None:
        self.last_correct = correct

    def __call__(self, model, x, y):
        return x.clone()


def test_eat_counts_come_from_the_attack_itself() -> None:
    """The statistic is the attack's own robust accuracy (``last_correct``: correct at every point
    it evaluated, in its eval mode), not the train-mode accuracy of the batch after the attack."""
    m = make("eat", threats=[THREATS[0], THREATS[2]])
    x, y = batch(16)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[:5] = True
    m.attacks = [FixedAttack(mask), FixedAttack(mask)]
    m.train()
    _, ids = m.adversarial_batch(x, y)
    j = int(ids[0])
    assert m.eat_seen.tolist()[j] == 16 and m.eat_correct.tolist()[j] == 5
    assert m.eat_seen.sum() == 16
    # Without a record of its own, the attacked point is scored in the attack's model mode (eval).
    m.attacks = [FixedAttack(None), FixedAttack(None)]
    m.eat_seen.zero_(), m.eat_correct.zero_()
    _, ids = m.adversarial_batch(x, y)
    j = int(ids[0])
    m.model.eval()
    with torch.no_grad():
        expected = int((m.model(x).argmax(1) == y).sum())
    assert m.eat_seen.tolist()[j] == 16 and m.eat_correct.tolist()[j] == expected


def test_adversarial_eat_config_is_the_definition() -> None:
    """method=adversarial_eat: cumulative statistic, APGD for linf without random start, l1-APGD
    without random start and initial top-k 0.05; the earlier rule stays reachable by overrides."""
    from rws.attacks import APGD, L1APGD
    from rws.config import compose
    from rws.training import build_method

    cfg = compose("train", ["method=adversarial_eat", "model=small_cnn", "model.width=0.25"])
    m = build_method(cfg)
    assert m.mode == "eat" and m.eat_statistic == "cumulative"
    linf, l1 = m.attacks
    assert isinstance(linf, APGD) and not linf.random_start and linf.step_size == 2.0
    assert isinstance(l1, L1APGD) and not l1.random_start and l1.sparsity == 0.05
    old = build_method(compose("train", ["method=adversarial_eat", "model=small_cnn", "model.width=0.25",
                                         "method.eat_statistic=ema", "method.attack=pgd",
                                         "method.random_start=true", "method.l1_sparsity=0.2"]))
    assert old.eat_statistic == "ema"
    assert type(old.attacks[0]).__name__ == "PGD" and old.attacks[0].random_start
    assert old.attacks[1].random_start and old.attacks[1].sparsity == 0.2
    # Other methods keep their attacks: PGD with random start, l1-APGD at 0.2.
    sat = build_method(compose("train", ["method=adversarial_sat", "model=small_cnn", "model.width=0.25"]))
    assert [a.random_start for a in sat.attacks] == [True, True, True] and sat.attacks[2].sparsity == 0.2


def test_apgd_training_attack() -> None:
    """APGD as E-AT trains with it: starts at x (no generator draw, repeatable without one), stays in
    the threat set, returns the highest-loss point and records per-example robustness over its iterates."""
    from rws.attacks import build_attack

    m = make("single", threats=THREATS[:1])
    x, y = batch(32)
    for threat in (THREATS[0], THREATS[1]):
        gen = torch.Generator().manual_seed(5)
        state = gen.get_state()
        atk = build_attack(threat, attack="apgd", steps=6, generator=gen)
        a, b = atk(m.model, x, y), atk(m.model, x, y)
        assert torch.equal(a, b) and torch.equal(gen.get_state(), state)
        delta = (a - x).flatten(1)
        bound = delta.abs().amax(1) if threat["norm"] == "linf" else delta.norm(dim=1)
        assert (bound <= threat["eps"] * (1 + 1e-5)).all() and a.min() >= 0 and a.max() <= 1
        m.model.eval()
        with torch.no_grad():
            clean_ok = m.model(x).argmax(1) == y
            adv_ok = m.model(a).argmax(1) == y
            loss_x = torch.nn.functional.cross_entropy(m.model(x), y, reduction="none")
            loss_a = torch.nn.functional.cross_entropy(m.model(a), y, reduction="none")
        assert atk.last_correct.dtype == torch.bool and len(atk.last_correct) == 32
        assert not (atk.last_correct & ~clean_ok).any() and not (atk.last_correct & ~adv_ok).any()
        assert (loss_a >= loss_x - 1e-6).all()


@pytest.mark.parametrize("mode,threats,kw", [
    ("single", THREATS[:1], {}),
    ("single", THREATS[:1], {"attack": "n_fgsm", "clean_weight": 0.3}),
    ("max", THREATS, {}),
    ("sat", THREATS, {}),
    ("eat", [THREATS[0], THREATS[2]], {"eat_statistic": "ema"}),
    ("eat", [THREATS[0], THREATS[2]], {"attack": "apgd"}),
])
def test_one_training_step_updates_weights(mode: str, threats, kw, tmp_path) -> None:
    """One Lightning step: the weights move, and the model trains on adversarial inputs, not the clean
    batch: every input the model sees in train mode (the attacks and the worst-norm scoring run in eval
    mode) is x plus a perturbation inside one threat's ball (N-FGSM: 3 eps, it does not project) and at
    least a quarter of that radius away from x; with clean_weight the clean batch follows, unchanged."""
    from rws.attacks import ThreatModel

    m = make(mode, threats=threats, **kw)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    ema_before = m.robust_error_ema.clone()
    x, y = batch(16)
    seen: list[torch.Tensor] = []
    m.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()) if mod.training else None)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, DataLoader(TensorDataset(x, y), batch_size=16))
    after = m.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert len(seen) == (2 if kw.get("clean_weight") else 1), len(seen)
    if kw.get("clean_weight"):
        assert torch.equal(seen[1], x)
    x_adv = seen[0]
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    reach = 3 if kw.get("attack") == "n_fgsm" else 1
    inside = torch.zeros(16, dtype=torch.bool)
    for t in map(ThreatModel.from_config, threats):
        norm = t.norm_of(x_adv - x)
        inside |= (norm <= reach * t.eps * (1 + 1e-5)) & (norm >= 0.25 * t.eps)
    assert inside.all(), [ThreatModel.from_config(t).norm_of(x_adv - x) for t in threats]
    keys = trainer.callback_metrics.keys()
    assert any(k.startswith("train/adv_acc_") for k in keys), keys
    if mode == "eat" and m.eat_statistic == "ema":
        assert not torch.equal(m.robust_error_ema, ema_before)
    elif mode == "eat":
        assert int(m.eat_seen.sum()) == 16 and torch.equal(m.robust_error_ema, ema_before)
        assert any(k.startswith("train/eat_err_") for k in keys), keys


# ----- the step contract reproduces the pre-contract training step exactly -------------------------
def _reference_adversarial_step(m: AdversarialModule, x: torch.Tensor, y: torch.Tensor, log) -> torch.Tensor:
    """The training step as it was before ``step()``/``StepOutput`` (frozen copy): same RNG draws,
    same forward passes in the same order, same logs."""
    F = torch.nn.functional
    if m.mode == "max":
        xs = [atk(m.model, x, y) for atk in m.attacks]
        m.model.eval()  # the attack's model mode, as _loss_per_threat scores it
        with torch.no_grad():
            per = torch.stack([F.cross_entropy(m.model(xa), y, reduction="none") for xa in xs], 1)
        m.model.train()
        ids = per.argmax(1)
        x_adv = torch.stack(xs, 1)[torch.arange(len(y)), ids]
    else:
        if m.mode == "single":
            j = 0
        else:
            k = len(m.threats)
            probs = (m.robust_error_ema.detach().clamp_min(1e-3) / m.robust_error_ema.detach().clamp_min(1e-3).sum()
                     if m.mode == "eat" else torch.full((k,), 1.0 / k))
            j = int(torch.multinomial(probs, 1, generator=m._gen))
        ids = torch.full((len(y),), j, dtype=torch.long)
        x_adv = m.attacks[j](m.model, x, y)
    logits = m.model(x_adv)
    loss = F.cross_entropy(logits, y, label_smoothing=m.label_smoothing)
    if m.clean_weight > 0:
        clean = F.cross_entropy(m.model(x), y, label_smoothing=m.label_smoothing)
        log("train/clean_loss", clean, batch_size=len(y))
        loss = (1 - m.clean_weight) * loss + m.clean_weight * clean
    correct = (logits.detach().argmax(1) == y).float()
    for j, key in enumerate(m.threat_keys):
        sel = ids == j
        if int(sel.sum()) == 0:
            continue
        acc = correct[sel].mean()
        log(f"train/adv_acc_{key}", acc, batch_size=int(sel.sum()))
        if m.mode == "eat":
            m.robust_error_ema[j] = m.eat_momentum * m.robust_error_ema[j] + (1 - m.eat_momentum) * float(1 - float(acc))
    if m.mode in ("max", "sat", "eat"):
        for j, key in enumerate(m.threat_keys):
            log(f"train/frac_{key}", (ids == j).float().mean(), batch_size=len(y))
        if m.mode == "eat":
            for j, key in enumerate(m.threat_keys):
                log(f"train/eat_err_{key}", m.robust_error_ema[j].clone(), batch_size=None)
    log("train/loss", loss, batch_size=len(y))
    log("train/acc", (logits.detach().argmax(1) == y).float().mean(), batch_size=len(y))
    return loss


class LogRecorder:
    """Stands in for LightningModule.log: (name, value, batch_size) in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, torch.Tensor, int | None]] = []

    def __call__(self, name, value, batch_size=None, **_: object) -> None:
        if not torch.is_tensor(value):  # the torchmetrics accuracy object: read its batch value
            value = value._forward_cache
        self.calls.append((name, value.detach().clone(), batch_size))


@pytest.mark.parametrize("mode,threats,kw", [
    ("single", THREATS[:1], {}),
    ("single", THREATS[:1], {"attack": "n_fgsm", "clean_weight": 0.3}),
    ("single", THREATS[1:2], {"clean_weight": 0.5}),
    ("max", THREATS, {}),
    ("sat", THREATS, {}),
    ("eat", [THREATS[0], THREATS[2]], {"label_smoothing": 0.1, "eat_statistic": "ema"}),
])
def test_step_contract_matches_the_frozen_training_step(mode: str, threats, kw) -> None:
    """Three SGD steps through ``training_step`` (new) and through the frozen reference give
    bit-identical losses, logs, weights, E-AT errors and generator states."""
    new, ref = make(mode, threats=threats, **kw), make(mode, threats=threats, **kw)
    new.log, ref_log = LogRecorder(), LogRecorder()
    new.train(), ref.train()
    opts = [torch.optim.SGD(m.model.parameters(), lr=0.1) for m in (new, ref)]
    for i in range(3):
        x, y = batch(16)
        x = x.roll(i, 0)
        y = y.roll(2 * i, 0)
        for m, opt, run in ((new, opts[0], lambda b: new.training_step(b, i)),
                            (ref, opts[1], lambda b: _reference_adversarial_step(ref, *b, ref_log))):
            opt.zero_grad()
            loss = run((x, y))
            loss.backward()
            opt.step()
    assert [(n, b) for n, _, b in new.log.calls] == [(n, b) for n, _, b in ref_log.calls]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(new.log.calls, ref_log.calls))
    assert any(n.startswith("train/adv_acc_") for n, _, _ in new.log.calls)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(new.model.state_dict()[k], v), k
    assert torch.equal(new.robust_error_ema, ref.robust_error_ema)
    assert torch.equal(new._gen.get_state(), ref._gen.get_state())
