"""rws.attacks: threat models, exact l1-box projection, training attacks, module modes, evaluation."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rws.attacks import (FGSMRS, L1APGD, NFGSM, PGD, ThreatModel, TorchattacksPGD, build_attack,
                         default_eps, module_modes, parse_threats, preserve_modes, project_l1_box)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second intra-op thread only adds synchronization, which costs
    seconds per test when other processes load the CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----- a tiny trained model on a separable synthetic problem ------------------------------------

from tiny_problem import SHAPE, fit_images, train_tiny  # noqa: E402  (shared with test_guards.py, test_sweep.py)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return train_tiny()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), preserve_modes(model, "eval"):
        return (model(x).argmax(1) == y).float().mean().item()


# ----- threat models ------------------------------------------------------------------------------

def test_default_eps_and_parsing() -> None:
    assert default_eps("linf", "cifar") == pytest.approx(8 / 255)
    assert default_eps("l2", "cifar", "train") == 0.5
    assert default_eps("l2", "cifar", "eval") == pytest.approx(128 / 255)
    assert default_eps("L1", "cifar") == 12
    assert default_eps("Linf", "imagenet") == pytest.approx(4 / 255)
    assert default_eps("l2", "imagenet") == 4 and default_eps("l1", "imagenet") == 255
    assert ThreatModel("Linf", "8/255") == ThreatModel("linf", 8 / 255)
    ts = parse_threats([{"norm": "inf", "eps": None}, {"norm": 2, "eps": 1.0}, "l1"], "imagenet")
    assert [(t.norm, t.eps) for t in ts] == [("linf", pytest.approx(4 / 255)), ("l2", 1.0), ("l1", 255.0)]
    with pytest.raises(ValueError):
        ThreatModel("l3", 1.0)
    with pytest.raises(ValueError):
        build_attack({"norm": "l1", "eps": 1.0}, attack="fgsm_rs")


# ----- the l1-box projection --------------------------------------------------------------------

def _qp_projection(x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """Reference: the projection as a smooth QP in (p, n) with d = p - n, solved by SLSQP."""
    import numpy as np
    from scipy.optimize import minimize

    xv, zv = x.double().numpy(), z.double().numpy()
    d = len(zv)
    obj = lambda v: float(((v[:d] - v[d:] - zv) ** 2).sum())
    jac = lambda v: np.concatenate([2 * (v[:d] - v[d:] - zv), -2 * (v[:d] - v[d:] - zv)])
    bounds = [(0, 1 - xi) for xi in xv] + [(0, xi) for xi in xv]
    cons = [{"type": "ineq", "fun": lambda v: eps - v.sum(), "jac": lambda v: -np.ones(2 * d)}]
    best = None
    for start in (np.zeros(2 * d), np.concatenate([np.clip(zv, 0, None), np.clip(-zv, 0, None)]) * 0.1):
        r = minimize(obj, start, jac=jac, bounds=bounds, constraints=cons, method="SLSQP",
                     options={"ftol": 1e-14, "maxiter": 500})
        if best is None or r.fun < best.fun:
            best = r
    return torch.from_numpy(best.x[:d] - best.x[d:])


def test_l1_box_projection_exact_against_qp() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        d = 1 + trial % 4
        x = torch.rand(d, generator=g, dtype=torch.float64)
        if trial % 3 == 0:
            x[0] = 0.0 if trial % 2 else 1.0  # points on the box faces
        z = torch.randn(d, generator=g, dtype=torch.float64) * 0.8
        eps = float(torch.rand(1, generator=g)) * 1.2 + 0.05
        ours = project_l1_box(x[None], z[None], eps)[0]
        ref = _qp_projection(x, z, eps)
        # Both feasible, and ours is at least as close (it is the unique minimizer).
        assert ours.abs().sum() <= eps + 1e-9
        assert ((x + ours) >= -1e-12).all() and ((x + ours) <= 1 + 1e-12).all()
        assert torch.allclose(ours, ref, atol=1e-5), (x, z, eps, ours, ref)
        assert (ours - z).norm() <= (ref - z).norm() + 1e-9


def test_l1_box_projection_beats_random_feasible_points() -> None:
    g = torch.Generator().manual_seed(1)
    x, z, eps = torch.rand(1, 3, generator=g), torch.randn(1, 3, generator=g), 0.7
    p = project_l1_box(x, z, eps)
    dist = (p - z).norm()
    # Dense search over the box, keeping points inside the l1 ball.
    grid = torch.linspace(0, 1, 41)
    pts = torch.cartesian_prod(grid, grid, grid) - x
    pts = pts[pts.abs().sum(1) <= eps]
    assert dist <= (pts - z).norm(dim=1).min() + 1e-6


def test_l1_box_projection_idempotent_and_feasible() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, *SHAPE, generator=g)
    for scale, eps in [(0.05, 12.0), (1.0, 12.0), (1.0, 1.0), (3.0, 500.0)]:
        z = torch.randn(6, *SHAPE, generator=g) * scale
        p = project_l1_box(x, z, eps)
        assert (p.flatten(1).abs().sum(1) <= eps + 1e-5).all()
        assert ((x + p) >= 0).all() and ((x + p) <= 1).all()
        assert torch.allclose(project_l1_box(x, p, eps), p, atol=1e-6)
    # Per-sample radii.
    eps_b = torch.tensor([0.5, 1, 2, 4, 8, 16.0])
    p = project_l1_box(x, torch.randn(6, *SHAPE, generator=g), eps_b)
    assert (p.flatten(1).abs().sum(1) <= eps_b + 1e-5).all()


# ----- training attacks ---------------------------------------------------------------------------

ATTACK_CASES = [
    ("pgd", {"norm": "linf", "eps": 0.1}),
    ("pgd", {"norm": "l2", "eps": 1.0}),
    ("pgd", {"norm": "l1", "eps": 12.0}),
    ("torchattacks", {"norm": "linf", "eps": 0.1}),
    ("torchattacks", {"norm": "l2", "eps": 1.0}),
    ("fgsm_rs", {"norm": "linf", "eps": 0.1}),
    ("n_fgsm", {"norm": "linf", "eps": 0.1}),
]


@pytest.mark.parametrize("attack,threat", ATTACK_CASES)
def test_attack_respects_threat_and_lowers_accuracy(trained, attack: str, threat: dict) -> None:
    model, x, y = trained
    atk = build_attack(threat, attack=attack, steps=10, generator=torch.Generator().manual_seed(0))
    x_adv = atk(model, x, y)
    t = ThreatModel.from_config(threat)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    norms = t.norm_of(x_adv - x)
    # N-FGSM deliberately skips the projection: its perturbation is bounded by noise + step = 3 eps.
    bound = 3 * t.eps if attack == "n_fgsm" else t.eps
    assert (norms <= bound * (1 + 1e-6) + 1e-5).all(), norms.max()
    clean, adv = accuracy(model, x, y), accuracy(model, x_adv, y)
    assert clean > 0.9
    assert adv < clean - 0.4, (attack, threat, clean, adv)


def test_l1_apgd_small_eps_stays_in_ball(trained) -> None:
    model, x, y = trained
    for eps in (0.5, 3.0):
        x_adv = L1APGD({"norm": "l1", "eps": eps}, steps=8, generator=torch.Generator().manual_seed(0))(model, x, y)
        assert ((x_adv - x).flatten(1).abs().sum(1) <= eps + 1e-5).all()
        assert (x_adv >= 0).all() and (x_adv <= 1).all()
        # Sparse by design: far fewer coordinates move than a dense attack would.
        assert ((x_adv - x).abs() > 0).flatten(1).float().mean() < 0.9


def test_attacks_reproducible_with_generator(trained) -> None:
    model, x, y = trained
    for cls, threat in [(PGD, {"norm": "l2", "eps": 1.0}), (L1APGD, {"norm": "l1", "eps": 5.0}),
                        (FGSMRS, {"norm": "linf", "eps": 0.05}), (NFGSM, {"norm": "linf", "eps": 0.05})]:
        kw = {"steps": 3} if cls in (PGD, L1APGD) else {}
        a = cls(threat, generator=torch.Generator().manual_seed(3), **kw)(model, x[:32], y[:32])
        b = cls(threat, generator=torch.Generator().manual_seed(3), **kw)(model, x[:32], y[:32])
        assert torch.equal(a, b), cls


def _mixed_modes(model: nn.Module) -> dict[str, bool]:
    model.train()
    model.body[2].eval()  # BN frozen, as when fine-tuning with frozen statistics
    return module_modes(model)


@pytest.mark.parametrize("model_mode", ["eval", "train"])
def test_every_attack_preserves_module_modes(trained, model_mode: str) -> None:
    model, x, y = trained
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    attacks = [build_attack(th, attack=a, steps=2, model_mode=model_mode) for a, th in ATTACK_CASES]
    try:
        for atk in attacks:
            expected = _mixed_modes(model)
            atk(model, x[:16], y[:16])
            assert module_modes(model) == expected, atk
            assert all(p.grad is None for p in model.parameters()), "attacks must not touch parameter grads"
            if model_mode == "eval":  # eval-mode attacks leave BN running statistics untouched
                assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    finally:
        model.load_state_dict(before_state)
        model.eval()


def test_eval_preserves_modes_and_global_rng(trained) -> None:
    from rws.attacks.evaluate import robust_correct

    model, x, y = trained
    expected = _mixed_modes(model)
    torch.manual_seed(123)
    r0 = torch.rand(1)
    torch.manual_seed(123)
    robust_correct(model, x[:8], y[:8], ThreatModel("linf", 0.02), n_iter=2)
    assert torch.equal(torch.rand(1), r0), "evaluation must not reseed the caller's RNG"
    assert module_modes(model) == expected
    model.eval()


def test_torchattacks_device_from_input(trained) -> None:
    model, x, y = trained
    atk = TorchattacksPGD({"norm": "linf", "eps": 0.05}, steps=2)
    assert atk(model, x[:4], y[:4]).device == x.device


# ----- evaluation -----------------------------------------------------------------------------

def test_robust_and_union_correct(trained) -> None:
    from rws.attacks.evaluate import evaluate_threats, robust_correct, union_correct

    model, x, y = trained
    x, y = x[:32], y[:32]
    threats = [ThreatModel("linf", 0.03), ThreatModel("l1", 4.0)]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    per = [robust_correct(model, x, y, t, n_iter=4) for t in threats]
    for r in per:
        assert r.dtype == torch.bool and r.shape == (32,)
        assert not (r & ~clean).any(), "misclassified clean points are never robust"
    union = union_correct(model, x, y, threats, n_iter=4)
    for r in per:
        assert not (union & ~r).any()
        assert union.sum() <= r.sum()
    res = evaluate_threats(model, (x[:16], y[:16]), [ThreatModel("linf", 0.03), ThreatModel("l2", 0.4)],
                           attacks=("apgd-ce",), n_iter=4, batch_size=8, progress=False)
    assert set(res) == {"clean", "linf", "l2", "union", "n"} and res["n"] == 16
    assert res["union"] <= min(res["linf"], res["l2"]) <= res["clean"]
    # A large radius breaks this weakly separated problem.
    big = robust_correct(model, x[:16], y[:16], ThreatModel("linf", 0.2), attacks=("apgd-ce",), n_iter=4)
    assert big.float().mean() < 0.2


@pytest.fixture(scope="module")
def digits_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """small_cnn (width 0.25) trained for 3 epochs on the embedded digits (~98 % test accuracy), and
    the first 200 test images it classifies correctly: a real image model where l1 eps 6 leaves
    robust accuracy well between 0 and 1, so a weaker attack schedule shows."""
    from rws.data.digits import digits_splits
    from rws.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, width=0.25)
    x, y = digits_splits(32)["train"]
    x = x.float() / 255
    fit_images(model, x, y, 3, 3e-3, 0)
    xt, yt = digits_splits(32)["test"]
    xt = xt.float() / 255
    with torch.no_grad():
        ok = model(xt).argmax(1) == yt
    assert ok.float().mean() > 0.9
    return model, xt[ok][:200], yt[ok][:200]


@pytest.mark.parametrize("steps", [10, 20])
def test_l1_apgd_as_strong_as_autoattack(digits_cnn, steps: int) -> None:
    """Our training l1-APGD follows AutoAttack's APGD-L1 (check every max(0.04 N, 1) iterations, k and
    step size from the best point's sparsity), so at the same small budget, loss, single restart and
    seed (the same Gaussian start) its robust accuracy is within 2 points of the official one. The old
    l_inf-style checkpoint schedule was 20+ points weaker here."""
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = digits_cnn  # all classified correctly: clean accuracy 1
    eps = 6.0
    ours = L1APGD({"norm": "l1", "eps": eps}, steps=steps, generator=torch.Generator().manual_seed(0))(model, x, y)
    assert ((ours - x).flatten(1).abs().sum(1) <= eps * (1 + 1e-6)).all()
    with torch.random.fork_rng(devices=[]):  # AutoAttack reseeds the global RNG
        ref = APGDAttack(model, n_iter=steps, norm="L1", eps=eps, loss="ce", n_restarts=1, seed=0,
                         device=x.device).perturb(x, y)
    ra_ours, ra_ref = accuracy(model, ours, y), accuracy(model, ref, y)
    assert 0.05 < ra_ref < 0.95, ra_ref  # the comparison means something only between the extremes
    assert ra_ours < accuracy(model, x, y) == 1.0
    assert abs(ra_ours - ra_ref) <= 0.02, (steps, ra_ours, ra_ref)


def test_apgd_linf_tracks_autoattack(digits_cnn) -> None:
    """The E-AT training attack (APGD-CE for linf, no random start, rws.attacks.apgd) is APGD: at 20
    steps its robust accuracy is within 3 points of pyautoattack's APGD-CE (measured: 41.0 vs 42.0 at
    eps 2/255), and it is stronger than PGD-20 with random start (49.0)."""
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = digits_cnn
    eps, steps = 2 / 255, 20
    atk = build_attack({"norm": "linf", "eps": eps}, attack="apgd", steps=steps)
    ours = atk(model, x, y)
    assert ((ours - x).abs().amax((1, 2, 3)) <= eps + 1e-6).all()
    with torch.random.fork_rng(devices=[]):  # AutoAttack reseeds the global RNG
        ref = APGDAttack(model, n_iter=steps, norm="Linf", eps=eps, loss="ce", n_restarts=1, seed=0,
                         device=x.device).perturb(x, y)
    pgd = build_attack({"norm": "linf", "eps": eps}, steps=steps, generator=torch.Generator().manual_seed(0))(model, x, y)
    ra_ours, ra_ref, ra_pgd = accuracy(model, ours, y), accuracy(model, ref, y), accuracy(model, pgd, y)
    assert 0.1 < ra_ref < 0.9, ra_ref
    assert abs(ra_ours - ra_ref) <= 0.03, (ra_ours, ra_ref)
    assert ra_ours < ra_pgd, (ra_ours, ra_pgd)
    # Its own record: robust at every evaluated point implies robust at the returned one.
    assert atk.last_correct.float().mean().item() <= ra_ours


# ----- each attack against an independent implementation at the same budget ---------------------
# On digits_cnn (clean accuracy 1 on its 200 images) at radii where robust accuracy is well between 0
# and 1: there a wrong step size, step count, projection or start shows as a different robust accuracy.
# (At the TinyNet radii above one step already reaches 0 %, so any attack looks fine there.)

def _robust_acc(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(model, x_adv, y)


@pytest.mark.parametrize("threat,reference", [({"norm": "linf", "eps": 2 / 255}, "PGD"),
                                              ({"norm": "l2", "eps": 0.3}, "PGDL2")])
def test_pgd_matches_torchattacks_at_equal_budget(digits_cnn, threat: dict, reference: str) -> None:
    """Our PGD-10 (step 2.5 eps / steps, random start) and torchattacks' PGD / PGDL2 with the same
    steps, step and start (torchattacks draws its start from the global RNG, in the same order as our
    generator: the same uniform / Gaussian draws) reach the same robust accuracy within one sample
    (measured: linf 2/255 49.0 %, l2 0.3 40.0 %, both equal); 3 steps are strictly weaker."""
    import torchattacks

    model, x, y = digits_cnn
    n, eps, steps = len(y), threat["eps"], 10
    ours = build_attack(threat, steps=steps, generator=torch.Generator().manual_seed(0))(model, x, y)
    with torch.random.fork_rng(devices=[]), preserve_modes(model, "eval"):
        torch.manual_seed(0)
        ref = getattr(torchattacks, reference)(model, eps=eps, alpha=2.5 / steps * eps, steps=steps,
                                               random_start=True)(x, y)
    fewer = build_attack(threat, steps=3, generator=torch.Generator().manual_seed(0))(model, x, y)
    ra_ours, ra_ref, ra_fewer = (_robust_acc(model, a, y) for a in (ours, ref, fewer))
    assert 0.2 < ra_ref < 0.8, ra_ref  # between the extremes, where a weaker attack shows
    assert abs(ra_ours - ra_ref) <= 1 / n, (ra_ours, ra_ref)
    assert ra_ours < ra_fewer < accuracy(model, x, y) == 1.0, (ra_ours, ra_fewer)


def test_one_step_attacks_match_their_definitions(digits_cnn) -> None:
    """FGSM-RS equals torchattacks' FFGSM (uniform start in the eps-ball, one signed step of 1.25 eps,
    projection) given the same start: FFGSM draws a Gaussian it discards before its uniform start, so
    our generator skips the same draws. N-FGSM equals its definition (start U(-2 eps, 2 eps), one
    signed step of eps, no projection, clipped to the box) computed here. Both are weaker than PGD-10."""
    import torchattacks

    model, x, y = digits_cnn
    n, eps = len(y), 3 / 255
    gen = torch.Generator().manual_seed(0)
    torch.randn(x.shape, generator=gen)
    fgsm = build_attack({"norm": "linf", "eps": eps}, attack="fgsm_rs", generator=gen)(model, x, y)
    with torch.random.fork_rng(devices=[]), preserve_modes(model, "eval"):
        torch.manual_seed(0)
        ref = torchattacks.FFGSM(model, eps=eps, alpha=1.25 * eps)(x, y)
    ra_fgsm, ra_ref = _robust_acc(model, fgsm, y), _robust_acc(model, ref, y)
    assert 0.2 < ra_ref < 0.9 and abs(ra_fgsm - ra_ref) <= 1 / n, (ra_fgsm, ra_ref)

    nfgsm = build_attack({"norm": "linf", "eps": eps}, attack="n_fgsm",
                         generator=torch.Generator().manual_seed(0))(model, x, y)
    noise = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1) * (2 * eps)
    start = (x + noise).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(start), y), start)
    expected = (x + noise + eps * grad.sign()).clamp(0, 1)
    differ = (nfgsm - expected).abs() > 1e-6
    assert differ.float().mean() < 1e-3, differ.float().mean()  # sign ties at zero gradient only
    ra_nfgsm = _robust_acc(model, nfgsm, y)
    assert abs(ra_nfgsm - _robust_acc(model, expected, y)) <= 1 / n
    assert (nfgsm - x).abs().amax() > 1.5 * eps  # not projected back onto the eps-ball
    pgd = build_attack({"norm": "linf", "eps": eps}, steps=10, generator=torch.Generator().manual_seed(0))(model, x, y)
    ra_pgd = _robust_acc(model, pgd, y)
    assert ra_pgd < ra_fgsm < 1.0 and ra_nfgsm < 1.0, (ra_pgd, ra_fgsm, ra_nfgsm)


@pytest.mark.parametrize("norm,eps", [("linf", 2 / 255), ("l2", 0.3)])
def test_apgd_follows_autoattack_from_the_same_start(digits_cnn, norm: str, eps: float) -> None:
    """The E-AT training APGD (no random start) is pyautoattack's APGD-CE run from the clean image
    (``attack_single_run(x_init=x)``: same initial step 2 eps, momentum 0.75, step-size checks): at
    10 steps the same points (measured: linf identical, l2 2 of 200 points differ in the last digits),
    the same robust accuracy within one sample (51.0 % / 39.5 %) and the same record of points robust
    at every iterate. A broken momentum, step halving or checkpoint schedule takes other steps; 3 steps
    are strictly weaker."""
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = digits_cnn
    n, steps = len(y), 10
    atk = build_attack({"norm": norm, "eps": eps}, attack="apgd", steps=steps)
    ours = atk(model, x, y)
    ref_atk = APGDAttack(model, n_iter=steps, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, loss="ce",
                         n_restarts=1, seed=0, device=x.device)
    ref_atk.init_hyperparam(x)
    with torch.random.fork_rng(devices=[]), preserve_modes(model, "eval"):
        ref, ref_robust, _, _ = ref_atk.attack_single_run(x, y, x_init=x)
    same = ((ours - ref).flatten(1).abs().amax(1) <= 1e-4).float().mean().item()
    assert same >= 0.97, same
    ra_ours, ra_ref = _robust_acc(model, ours, y), _robust_acc(model, ref, y)
    assert 0.2 < ra_ref < 0.8, ra_ref
    assert abs(ra_ours - ra_ref) <= 1 / n, (ra_ours, ra_ref)
    assert (atk.last_correct != ref_robust).sum() <= 1
    fewer = build_attack({"norm": norm, "eps": eps}, attack="apgd", steps=3)(model, x, y)
    assert ra_ours < _robust_acc(model, fewer, y) < 1.0


def test_dlr_loss_matches_autoattack_and_hand_values() -> None:
    """The DLR loss (Croce & Hein 2020): -(z_y - max_{j != y} z_j) / (z_(1) - z_(3)), on hand-made logits
    and against pyautoattack's dlr_loss on random ones."""
    from pyautoattack.autopgd_base import APGDAttack

    from rws.attacks._common import per_sample_loss

    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, -1.0], [0.5, 2.5, 4.5, -3.0]])
    y = torch.tensor([0, 1, 0])
    # y=0 on top: -(3 - 1) / (3 - 0); y=1 below the top: -(1 - 3) / (3 - 0); -(0.5 - 4.5) / (4.5 - 0.5)
    assert per_sample_loss(z, y, "dlr").tolist() == pytest.approx([-2 / 3, 2 / 3, 1.0])
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(64, 10, generator=g) * 3, torch.randint(0, 10, (64,), generator=g)
    ref = APGDAttack.dlr_loss(None, z, y)
    assert torch.allclose(per_sample_loss(z, y, "dlr"), ref, atol=1e-6)
