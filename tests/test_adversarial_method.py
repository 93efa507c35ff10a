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


def test_eat_sampling_follows_running_error() -> None:
    m = make("eat", threats=[{"norm": "linf", "eps": 8 / 255}, {"norm": "l1", "eps": 4.0}])
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
    assert torch.allclose(s.sampling_probs(), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("mode,threats,kw", [
    ("single", THREATS[:1], {}),
    ("single", THREATS[:1], {"attack": "n_fgsm", "clean_weight": 0.3}),
    ("max", THREATS, {}),
    ("sat", THREATS, {}),
    ("eat", [THREATS[0], THREATS[2]], {}),
])
def test_one_training_step_updates_weights(mode: str, threats, kw, tmp_path) -> None:
    m = make(mode, threats=threats, **kw)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    ema_before = m.robust_error_ema.clone()
    x, y = batch(16)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, DataLoader(TensorDataset(x, y), batch_size=16))
    after = m.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    keys = trainer.callback_metrics.keys()
    assert any(k.startswith("train/adv_acc_") for k in keys), keys
    if mode == "eat":
        assert not torch.equal(m.robust_error_ema, ema_before)


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
    ("eat", [THREATS[0], THREATS[2]], {"label_smoothing": 0.1}),
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
