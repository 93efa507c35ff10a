"""train.py: config composition, schedules, init checks, export, resume, multirun."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rws.methods.optim import lr_factor
from rws.training import build_method
from rws.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
CONF = str(CONF_DIR)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("method", ["nominal", "corruption"])
def test_train_config_composes_and_builds(method: str) -> None:
    cfg = _compose([f"method={method}", "model=small_cnn", "data=digits"])
    assert cfg.method.name == method
    module = build_method(cfg)
    x = torch.rand(4, 3, 32, 32)
    assert module(x).shape == (4, 10)
    # Checkpoint hyperparameters must be primitives so weights_only=True can load them.
    def _plain(v):
        if isinstance(v, dict):
            return all(_plain(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return all(_plain(x) for x in v)
        return v is None or isinstance(v, (int, float, str, bool))
    assert _plain(dict(module.hparams))


def test_schedules() -> None:
    cos = {"name": "cosine"}
    assert lr_factor(0, 100, cos, 10) == pytest.approx(1.0)
    assert lr_factor(50, 100, cos, 10) == pytest.approx(0.5, abs=1e-6)
    assert lr_factor(100, 100, cos, 10) == pytest.approx(0.0, abs=1e-9)
    warm = {"name": "cosine", "warmup_epochs": 1}
    assert lr_factor(0, 100, warm, 10) == pytest.approx(0.1)
    ms = {"name": "multistep", "milestones": [2, 4], "gamma": 0.1}
    assert lr_factor(19, 100, ms, 10) == pytest.approx(1.0)
    assert lr_factor(20, 100, ms, 10) == pytest.approx(0.1)
    assert lr_factor(45, 100, ms, 10) == pytest.approx(0.01)
    pw = {"name": "piecewise", "epochs": [0, 2, 4], "factors": [0, 1, 0]}
    assert lr_factor(10, 40, pw, 10) == pytest.approx(0.5)
    assert lr_factor(30, 40, pw, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sched.name"):
        lr_factor(0, 10, {"name": "bogus"}, 1)


def test_corruption_method_is_repeatable() -> None:
    cfg = _compose(["method=corruption", "method.corruptions=[gaussian_noise,contrast]", "method.severity=[3,5]"])
    x, y = torch.rand(16, 3, 32, 32), torch.randint(10, (16,))
    a = build_method(cfg).corrupt_batch(x)
    b = build_method(cfg).corrupt_batch(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert a.min() >= 0 and a.max() <= 1


def _reference_step(m, x: torch.Tensor, y: torch.Tensor, log) -> torch.Tensor:
    """The training step of nominal/corruption training as it was before ``step()``/``StepOutput``
    (frozen copy): corruption draws from the private generator in the same order, then label-smoothed CE."""
    import torch.nn.functional as F
    from rws.corruptions import corrupt

    if hasattr(m, "corruption_names"):
        n = len(x)
        which = torch.randint(len(m.corruption_names), (n,), generator=m._gen)
        sev = torch.tensor(m.severities)[torch.randint(len(m.severities), (n,), generator=m._gen)]
        keep_clean = torch.rand(n, generator=m._gen) < m.p_clean
        out = x.clone()
        for ci in which.unique().tolist():
            for s in sev.unique().tolist():
                idx = ((which == ci) & (sev == s) & ~keep_clean).nonzero().flatten()
                if len(idx):
                    out[idx] = corrupt(x[idx], m.corruption_names[ci], int(s), table=m.table, generator=m._gen)
        x = out
    logits = m.model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=m.label_smoothing)
    log("train/loss", loss, batch_size=len(y))
    log("train/acc", (logits.detach().argmax(1) == y).float().mean(), batch_size=len(y))
    return loss


@pytest.mark.parametrize("overrides", [
    ["method=nominal", "method.label_smoothing=0.1"],
    ["method=corruption", "method.corruptions=[gaussian_noise,contrast,jpeg_compression]", "method.severity=[2,5]",
     "method.p_clean=0.25"],
])
def test_step_contract_matches_the_frozen_training_step(overrides: list[str]) -> None:
    """Two SGD steps through ``training_step`` (the step contract) and through the frozen
    pre-contract step give bit-identical losses, logged values, weights and generator states."""
    cfg = _compose([*overrides, "model.width=0.25"])
    calls: dict[str, list] = {"new": [], "ref": []}

    def recorder(key):
        def log(name, value, batch_size=None, **_):
            value = value if torch.is_tensor(value) else value._forward_cache  # the accuracy metric
            calls[key].append((name, value.detach().clone(), batch_size))
        return log

    torch.manual_seed(0)
    new = build_method(cfg)
    torch.manual_seed(0)
    ref = build_method(cfg)
    new.log = recorder("new")
    opts = {"new": torch.optim.SGD(new.model.parameters(), lr=0.1), "ref": torch.optim.SGD(ref.model.parameters(), lr=0.1)}
    g = torch.Generator().manual_seed(1)
    for i in range(2):
        x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g)
        for key, run in (("new", lambda: new.training_step((x, y), i)),
                         ("ref", lambda: _reference_step(ref, x, y, recorder("ref")))):
            opts[key].zero_grad()
            run().backward()
            opts[key].step()
    assert [(n, b) for n, _, b in calls["new"]] == [(n, b) for n, _, b in calls["ref"]]
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(calls["new"], calls["ref"]))
    for k, v in ref.model.state_dict().items():
        assert torch.equal(new.model.state_dict()[k], v), k
    if hasattr(ref, "_gen"):
        assert torch.equal(new._gen.get_state(), ref._gen.get_state())


def test_init_mismatch_lists_keys(tmp_path: Path) -> None:
    from rws.methods.init import load_init
    from rws.models import create_model
    from rws.weights.export import save_export

    cfg = {"_target_": "rws.models.create_model", "name": "small_cnn", "num_classes": 10}
    save_export(tmp_path / "e", create_model(**{k: v for k, v in cfg.items() if k != "_target_"}), cfg)
    other = create_model("small_cnn", num_classes=7)
    with pytest.raises(ValueError, match=r"shape: .*expected"):
        load_init(other, tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="export"):
        load_init(other, tmp_path / "nothing")
    # A new head for another number of classes: everything else comes from the init.
    skipped = load_init(other, tmp_path / "e", skip=["head"])
    from rws.models import head_keys
    from rws.weights.export import load_export

    assert skipped == head_keys(other) and skipped
    src = load_export(tmp_path / "e").state_dict
    assert all(torch.equal(v, src[k]) for k, v in other.state_dict().items() if k not in skipped)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_optimizers_step_like_torch(name: str) -> None:
    """method.optim.name=adam|adamw: configure_optimizers gives torch's Adam / AdamW with the config's lr,
    weight decay and betas, and three steps on the same gradients give torch's weights (Adam's L2 decay
    and AdamW's decoupled decay differ, so a swap of the two shows)."""
    import copy

    import torch.nn.functional as F

    cfg = _compose(["method=nominal", "model=small_cnn", "model.width=0.25", f"method.optim.name={name}",
                    "method.optim.lr=0.01", "method.optim.weight_decay=0.1", "++method.optim.betas=[0.8,0.95]",
                    "method.sched.name=none", "method.sched.warmup_epochs=0"])
    m = build_method(cfg)
    opt = m.configure_optimizers()
    ref_model = copy.deepcopy(m.model)
    cls, other = (torch.optim.Adam, torch.optim.AdamW) if name == "adam" else (torch.optim.AdamW, torch.optim.Adam)
    assert type(opt) is cls
    kw = {"lr": 0.01, "weight_decay": 0.1, "betas": (0.8, 0.95)}
    assert {k: opt.param_groups[0][k] for k in kw} == kw
    wrong_model = copy.deepcopy(m.model)
    refs = [(ref_model, cls(ref_model.parameters(), **kw)), (wrong_model, other(wrong_model.parameters(), **kw))]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.rand(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g)
        for model, o in [(m.model, opt), *refs]:
            o.zero_grad()
            F.cross_entropy(model(x), y).backward()
            o.step()
    ours, ref, wrong = (dict(mm.named_parameters()) for mm in (m.model, ref_model, wrong_model))
    assert all(torch.allclose(ours[k], ref[k], rtol=0, atol=1e-7) for k in ours)
    assert any(not torch.allclose(ours[k], wrong[k], rtol=0, atol=1e-6) for k in ours)


def test_init_from_a_lightning_checkpoint(tmp_path: Path) -> None:
    """init=<Lightning .ckpt> (train.py's code path, in-process) starts from the checkpoint's model: with
    lr 0 the exported parameters are the checkpoint's exactly, not the fresh model's."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from rws.config import compose
    from rws.training import train
    from rws.weights.export import load_export

    common = ["method=nominal", "model=small_cnn", "model.width=0.25", "method.sched.name=none"]
    torch.manual_seed(123)
    src = build_method(_compose(common))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(10, (16,), generator=g)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(src, DataLoader(TensorDataset(x, y), batch_size=8))
    trainer.save_checkpoint(tmp_path / "src.ckpt")
    want = {k[len("model."):]: v for k, v in torch.load(tmp_path / "src.ckpt", weights_only=True)["state_dict"].items()
            if k.startswith("model.")}
    cfg = compose("train", [*common, f"init={tmp_path / 'src.ckpt'}", "method.optim.lr=0", "data.subset_per_class=2",
                            "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                            "test_after_fit=false", "logger=[]", f"paths.output_dir={tmp_path}",
                            f"export_dir={tmp_path}/export"])
    train(cfg, tmp_path / "run")
    got = load_export(tmp_path / "export").state_dict
    params = [k for k, _ in src.model.named_parameters()]
    assert params and all(torch.equal(got[k], want[k]) for k in params)
    fresh = build_method(_compose(common)).model.state_dict()
    assert not all(torch.equal(got[k], fresh[k]) for k in params)


def _train(tmp: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *(["-m"] if multirun else []), "trainer=cpu", "trainer.max_epochs=1", "data.subset_per_class=20",
           f"paths.output_dir={tmp}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_exports_and_resumes(tmp_path: Path) -> None:
    from rws.weights.export import load_export

    run = tmp_path / "run"
    p = _train(tmp_path, f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr[-3000:]
    exp = load_export(run / "export")
    meta = exp.metrics
    assert "torch" in meta["versions"]
    # The commit of this checkout ('-dirty' with uncommitted changes to tracked files); 'unknown' only
    # where the code is not in a git checkout.
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    if head.returncode == 0:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        assert meta["git_commit"] == head.stdout.strip() + ("-dirty" if dirty else "")
    else:
        assert meta["git_commit"] == "unknown"
    assert meta["config"]["model"]["name"] == "small_cnn"
    assert 0.0 <= meta["metrics"]["test/acc"] <= 1.0
    model = exp.build()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # no unpickling of code
    steps = ckpt["global_step"]  # optimizer steps of one epoch
    assert ckpt["epoch"] == 0 and steps > 0
    # resume=auto continues from last.ckpt to a later epoch in the same run dir. Both runs log to
    # csv/metrics.csv: keep the first run's rows aside, so the file then holds the second run's only.
    (run / "csv" / "metrics.csv").rename(run / "csv" / "metrics.first.csv")
    p = _train(tmp_path, f"hydra.run.dir={run}", "resume=auto", "trainer.max_epochs=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * steps
    # Resumed, not restarted: the second run trained epoch 1 only (a restart logs epoch 0 again),
    # its optimizer steps continuing from the checkpoint's.
    train_rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("train/acc")]
    assert [(int(r["epoch"]), int(r["step"])) for r in train_rows] == [(1, 2 * steps - 1)]
    assert not list(run.rglob("*.tmp"))


def test_multirun_makes_distinct_runs(tmp_path: Path) -> None:
    p = _train(tmp_path, "seed=0,1", multirun=True)
    assert p.returncode == 0, p.stderr[-3000:]
    exports = sorted(tmp_path.rglob("export/model.safetensors"))
    assert len(exports) == 2 and exports[0].parent != exports[1].parent
    from safetensors.torch import load_file

    a, b = (load_file(str(e)) for e in exports)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different weights


@pytest.mark.parametrize("launcher,target", [("local", "joblib"), ("slurm", "submitit")])
def test_launcher_configs_compose(launcher: str, target: str) -> None:
    p = subprocess.run([sys.executable, "train.py", f"hydra/launcher={launcher}", "--cfg", "hydra"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    launcher_block = p.stdout.split("launcher:", 1)[1].split("\n  sweeper:", 1)[0]
    assert target in launcher_block.lower()


def test_wandb_logger_works_offline(tmp_path: Path) -> None:
    import os

    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "train.py", "logger=wandb", "trainer=cpu", "trainer.max_epochs=1",
           "data.subset_per_class=10", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (run / "csv" / "metrics.csv").is_file()  # the CSV logger stays on beside wandb
    # What the run logged, read back from its offline files: the resolved run config, the metrics'
    # history (the values of metrics.json) and the final_metrics table.
    metrics = json.loads((run / "metrics.json").read_text())
    (wandb_file,) = runs[0].glob("*.wandb")
    records = _wandb_records(wandb_file)
    key = lambda item: item.key or "/".join(item.nested_key)  # wandb writes either
    config = {key(i): json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert config["data"]["name"] == "digits" and config["method"]["name"] == "nominal" and config["seed"] == 0
    assert config["trainer"]["max_epochs"] == 1 and config["data"]["subset_per_class"] == 10
    history: dict[str, float] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.update({key(i): json.loads(i.value_json) for i in r.history.item})
    for key in ("train/acc", "val/acc", "test/acc", "test/loss"):
        assert history[key] == pytest.approx(metrics[key]), key
    (table,) = runs[0].glob("files/media/table/final_metrics_*.table.json")
    logged = dict(json.loads(table.read_text())["data"])
    assert logged == {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: a 7-byte file header,
    then 32 KiB blocks of chunks with 7-byte headers: crc32, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6] if left >= 7 else 0
        if left < 7 or (length == 0 and kind == 0):  # block trailer or zero padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out
