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
    x_adv, _ = m.train_inputs(x, y)
    m.model.eval()
    with torch.no_grad():
        losses = torch.stack([torch.nn.functional.cross_entropy(m.model(xa), y, reduction="none")
                              for xa in recorded], 1)
    worst = losses.argmax(1)
    assert torch.equal(m._norm_ids, worst)
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
