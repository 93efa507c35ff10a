"""Guards for the breakages of the mutation check (tests/mutation, issue 12) that no other test caught.

Each test pins a real value or behaviour, so that the named mutation of ``tests/mutation/mutations.py``
fails it:

- ``test_apgd_breaks_the_tiny_model``: APGD (linf and l2, E-AT's training attack) made a no-op or
  cut to one step (``apgd_*_noop``, ``apgd_*_one_step``);
- ``test_l1_apgd_needs_its_iterations``: l1-APGD cut to one step (``l1_apgd_one_step``);
- ``test_evaluate_threats_counts_exactly``: the clean count of ``evaluate_threats`` off by one
  (``robust_eval_clean_count_plus_one``);
- ``test_few_shot_picks_the_best_on_the_k_examples``: the few-shot study picking a random soup
  (``few_shot_selection_random``);
- ``test_resume_continues_from_the_checkpoint``: resume training from scratch (``train_resume_restarts``;
  tests/test_train.py checks the same through two train.py subprocesses, ~4x slower).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

# ----- a tiny trained model on a separable synthetic problem (as in tests/test_attacks.py) -------------

from tiny_problem import train_tiny  # noqa: E402  (shared with tests/test_attacks.py)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """TinyNet trained to 100 % test accuracy on the blobs; 128 test points."""
    with torch.random.fork_rng(devices=[]):
        return train_tiny()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ----- attacks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps,bound", [("linf", 0.05, 0.42), ("l2", 0.5, 0.58)], ids=["linf", "l2"])
def test_apgd_breaks_the_tiny_model(trained, norm: str, eps: float, bound: float) -> None:
    """APGD-10 (no random start, as E-AT trains) at a budget where a single step leaves half the points
    robust: measured 0.32 (linf) / 0.46 (l2) robust accuracy after 10 steps, 0.49 / 0.70 after one; the
    clean accuracy is 1. It also stays in the threat set and never lowers an example's loss."""
    from rws.attacks import APGD

    model, x, y = trained
    assert accuracy(model, x, y) == 1.0
    x10 = APGD({"norm": norm, "eps": eps}, steps=10)(model, x, y)
    x1 = APGD({"norm": norm, "eps": eps}, steps=1)(model, x, y)
    delta = (x10 - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and x10.min() >= 0 and x10.max() <= 1
    ra10, ra1 = accuracy(model, x10, y), accuracy(model, x1, y)
    assert ra10 <= bound, (norm, ra10)
    # The 10-step run's first iterate is the 1-step run's and it returns its best point: more steps
    # can only help, and here they help a lot.
    assert ra10 <= ra1 - 0.1, (norm, ra10, ra1)
    with torch.no_grad():
        l10 = nn.functional.cross_entropy(model(x10), y, reduction="none")
        l1 = nn.functional.cross_entropy(model(x1), y, reduction="none")
    assert (l10 >= l1 - 1e-5).all()


def test_l1_apgd_needs_its_iterations(trained) -> None:
    """l1-APGD at eps 4: one step moves too few coordinates to flip any prediction (measured robust
    accuracy 1.0); 10 steps with the sparsity schedule break most points (0.40)."""
    from rws.attacks import L1APGD

    model, x, y = trained
    threat = {"norm": "l1", "eps": 4.0}
    x10 = L1APGD(threat, steps=10, generator=torch.Generator().manual_seed(0))(model, x, y)
    x1 = L1APGD(threat, steps=1, generator=torch.Generator().manual_seed(0))(model, x, y)
    assert ((x10 - x).flatten(1).abs().sum(1) <= 4.0 * (1 + 1e-6)).all()
    ra10, ra1 = accuracy(model, x10, y), accuracy(model, x1, y)
    assert ra10 <= 0.6, ra10
    assert ra10 <= ra1 - 0.3, (ra10, ra1)


# ----- evaluation ------------------------------------------------------------------------------------

class _Lookup(nn.Module):
    """Predicts the class whose (constant) image it is shown, with a margin no small attack can flip:
    logits = 100 * (mean of the image's channels == class level)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("levels", torch.tensor([0.1, 0.35, 0.6, 0.85]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -100.0 * (x.flatten(1).mean(1, keepdim=True) - self.levels).abs()


def test_evaluate_threats_counts_exactly() -> None:
    """20 constant images in 3 batches of at most 8, 15 labelled right: clean, per-threat and union
    accuracy are exactly 15/20 (the attacks cannot move a prediction 0.25 levels with eps 1e-3)."""
    from rws.attacks.evaluate import evaluate_threats

    model = _Lookup().eval()
    levels = torch.tensor([0.1, 0.35, 0.6, 0.85])
    truth = torch.arange(20) % 4
    x = levels[truth].view(-1, 1, 1, 1).expand(20, 3, 4, 4).clone()
    y = truth.clone()
    y[[0, 5, 10, 15, 19]] = (y[[0, 5, 10, 15, 19]] + 1) % 4  # 5 wrong labels
    res = evaluate_threats(model, (x, y), [{"norm": "linf", "eps": 1e-3}, {"norm": "l2", "eps": 1e-3}],
                           attacks=("apgd-ce",), n_iter=2, batch_size=8, device="cpu", progress=False)
    assert res == {"clean": 0.75, "linf": 0.75, "l2": 0.75, "union": 0.75, "n": 20}


def test_few_shot_picks_the_best_on_the_k_examples() -> None:
    """Six specs with accuracies 0.2 ... 0.95 on 2000 examples: with k = 300 selection examples the
    best spec wins every trial (its held-out accuracy ~0.95, the oracle's); with k = 30 it still wins
    nearly always. A random pick would score the mean, ~0.58."""
    from rws.evaluation.selection import few_shot_study

    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
    correct = torch.rand(6, 2000, generator=g) < p[:, None]
    study = few_shot_study(correct, ks=(30, 300), trials=20, n_test=500, seed=0)
    oracle = study["oracle"]["mean"]
    assert 0.93 <= oracle <= 0.97
    assert study["k"]["300"]["mean"] == pytest.approx(oracle, abs=1e-12)
    assert study["k"]["30"]["mean"] >= oracle - 0.03


# ----- training --------------------------------------------------------------------------------------

def test_resume_continues_from_the_checkpoint(tmp_path, monkeypatch) -> None:
    """train() in-process on digits: one epoch, then resume=auto with max_epochs=2 trains only the
    second epoch's batches (a restart would train both again) and ends at global step 2 x steps."""
    from rws import training
    from rws.config import compose

    steps_run: list[int] = []
    real_build = training.build_method

    def counting_build(cfg):
        method = real_build(cfg)
        step = method.training_step
        steps_run.append(0)

        def counted(*args, **kwargs):
            steps_run[-1] += 1
            return step(*args, **kwargs)

        method.training_step = counted
        return method

    monkeypatch.setattr(training, "build_method", counting_build)
    for var in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything exports these: restore them after
        monkeypatch.setenv(var, "0")
    run = tmp_path / "run"

    def cfg(*extra: str):
        return compose("train", ["trainer=cpu", "data.subset_per_class=10", "trainer.enable_progress_bar=false",
                                 "logger=[]", "test_after_fit=false", f"paths.output_dir={tmp_path}",
                                 f"export_dir={tmp_path}/export", *extra])

    with torch.random.fork_rng(devices=[]):
        training.train(cfg("trainer.max_epochs=1"), run)
        first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        steps = first["global_step"]
        assert first["epoch"] == 0 and steps == steps_run[0] > 0
        metrics = training.train(cfg("trainer.max_epochs=2", "resume=auto"), run)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * steps and metrics["epochs"] == 2
    assert steps_run == [steps, steps], steps_run  # the resumed run trained epoch 1 only
