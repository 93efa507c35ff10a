import copy

import pytest
import torch
from torch import nn

from rws.weights.functional_soup import InPlaceSoup, predict
from rws.weights.grid import GridSpec
from rws.weights.soups import recalibrate_soup_bn, soup_state_dicts


def _net(seed: int, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.5),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2)
    m[1].num_batches_tracked.fill_(10 * (seed + 1))
    return m.eval()


def _states(n: int = 3) -> list[dict]:
    return [copy.deepcopy(_net(i).state_dict()) for i in range(n)]


def test_one_hot_soup_is_bit_exact():
    states = _states()
    for j in range(3):
        w = [1 if i == j else 0 for i in range(3)]
        out = soup_state_dicts(states, w)
        for k, v in states[j].items():
            if k.endswith("num_batches_tracked"):
                continue
            assert out[k].dtype == v.dtype
            assert torch.equal(out[k], v) and torch.equal(torch.signbit(out[k]), torch.signbit(v)), k
    # num_batches_tracked: max over members (documented choice).
    assert int(out["1.num_batches_tracked"]) == 30


def test_extrapolation_and_bn_stats_combined():
    states = _states(2)
    out = soup_state_dicts(states, [1.4, -0.4])
    k = "0.weight"
    assert torch.allclose(out[k], 1.4 * states[0][k] - 0.4 * states[1][k], atol=1e-6)
    mean = 0.3 * states[0]["1.running_mean"] + 0.7 * states[1]["1.running_mean"]
    assert torch.allclose(soup_state_dicts(states, [0.3, 0.7])["1.running_mean"], mean, atol=1e-6)
    assert (soup_state_dicts(states, [3, -2], affine=False)["1.running_var"] >= 0).all()


def test_affine_check_and_mismatch_lists_keys():
    states = _states(2)
    with pytest.raises(ValueError, match="sum to 1"):
        soup_state_dicts(states, [0.5, 0.6])
    soup_state_dicts(states, [0.5, 0.6], affine=False)
    bad = copy.deepcopy(states[1])
    bad["extra.weight"] = torch.zeros(2)
    bad["6.weight"] = torch.zeros(5, 4)
    del bad["6.bias"]
    with pytest.raises(ValueError) as e:
        soup_state_dicts([states[0], bad], [0.5, 0.5])
    msg = str(e.value)
    assert "6.bias" in msg and "extra.weight" in msg and "6.weight" in msg


def test_in_place_matches_building_each_soup():
    states = _states(3)
    x = torch.rand(8, 3, 8, 8)
    model = _net(99)
    soup = InPlaceSoup(model, states)
    grid = list(GridSpec.make(3, -0.5, 1.5, 0.5))
    for i, m in soup.iterate(grid):
        assert m is model
        ref = _net(0)
        ref.load_state_dict(soup_state_dicts(states, grid[i]))
        assert torch.equal(predict(m, x), predict(ref.eval(), x))
        for k, v in ref.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k


def test_recalibrate_soup_bn_restores_modes():
    m = _net(0)
    m[3].train()  # a dropout left in train mode must come back in train mode
    momentum = m[1].momentum
    x = torch.rand(16, 3, 8, 8)
    recalibrate_soup_bn(m, [(x[:8], None), (x[8:], None)])
    assert m[3].training and not m[1].training and m[1].momentum == momentum
    feats = m[0](x)
    assert torch.allclose(m[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert int(m[1].num_batches_tracked) == 2


def test_mixed_dtype_models_use_the_per_tensor_path():
    def mixed(seed):
        m = _net(seed)
        m[6].double()  # a float64 head: no single flat buffer, per-tensor foreach path instead
        return m

    states = [copy.deepcopy(mixed(i).state_dict()) for i in range(2)]
    soup = InPlaceSoup(mixed(5), states)
    assert soup.flat is None
    m = soup.set([1.2, -0.2])
    ref = soup_state_dicts(states, [1.2, -0.2])
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k]) and v.dtype == ref[k].dtype, k


def test_build_soup_from_exports(tmp_path):
    from rws.models import create_model
    from rws.specs import BuildContext, build
    from rws.weights.export import load_export, save_export

    paths = []
    for i, width in enumerate((0.25, 0.25, 0.5)):
        torch.manual_seed(i)
        cfg = {"name": "small_cnn", "num_classes": 10, "width": width}
        paths.append(str(save_export(tmp_path / f"m{i}", create_model(**cfg), cfg)))
    spec = {"kind": "soup", "members": [{"spec": {"kind": "export", "path": paths[0]}, "weight": 1.4},
                                        {"spec": {"kind": "export", "path": paths[1]}, "weight": -0.4}]}
    model = build(spec)
    ref = soup_state_dicts([load_export(p).state_dict for p in paths[:2]], [1.4, -0.4])
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    x = torch.rand(4, 3, 32, 32)

    class OneBatch:  # a datamodule with one calibration batch
        batch_size = 4

        def calibration_batches(self, n, batch_size=None):
            yield x, None

    recal = build({**spec, "bn": "recalibrate", "calibration_batches": 1}, context=BuildContext(data=OneBatch()))
    key = next(k for k in ref if k.endswith("running_mean"))
    assert not torch.equal(recal.state_dict()[key], ref[key])  # recomputed, not combined
    weight = key.replace("running_mean", "weight")
    assert torch.equal(recal.state_dict()[weight], ref[weight])  # parameters untouched
    spec["members"][1]["spec"]["path"] = paths[2]
    with pytest.raises(ValueError, match="shape"):
        build(spec)



@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_soup_weight_is_refused_naming_its_position(bad: float) -> None:
    from rws.weights.soups import check_weights

    with pytest.raises(ValueError, match=r"soup weight 1 is .*expected a finite number"):
        check_weights([0.5, bad], 2, affine=False)
