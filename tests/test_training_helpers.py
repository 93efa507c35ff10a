"""rws.training's helpers that a single-process CPU fit never reaches: what ``trainer=ddp`` becomes on
the CPU, when a run counts as a CPU run, and the multi-process test split in which every test image is
counted once (Lightning's DistributedSampler pads with repeats). The DDP runs themselves:
tests/test_ddp.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra.utils import instantiate

from rws import training
from rws.config import compose


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


def test_runs_on_cpu(no_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert training._runs_on_cpu({"accelerator": "cpu"})
    assert training._runs_on_cpu({"accelerator": "auto"}) and training._runs_on_cpu({})
    assert not training._runs_on_cpu({"accelerator": "gpu"})
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # a Mac: auto picks MPS
    assert not training._runs_on_cpu({"accelerator": "auto"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not training._runs_on_cpu({"accelerator": "auto"}) and training._runs_on_cpu({"accelerator": "CPU"})


def test_cpu_ddp_drops_what_only_a_gpu_takes(no_gpu: None, caplog: pytest.LogCaptureFixture) -> None:
    gpu_preset = {"accelerator": "auto", "strategy": "ddp", "sync_batchnorm": True, "precision": "16-mixed",
                  "devices": -1, "max_epochs": 3}
    with caplog.at_level("INFO", logger="rws.train"):
        out = training._cpu_ddp(gpu_preset)
    assert out == {**gpu_preset, "sync_batchnorm": False, "precision": "32-true", "devices": 1}
    assert gpu_preset["sync_batchnorm"] is True  # the caller's dict is left alone
    assert "sync_batchnorm=false" in caplog.text and "precision=32-true" in caplog.text
    for precision in ("16", 16):
        assert training._cpu_ddp({"strategy": "ddp_spawn", "precision": precision})["precision"] == "32-true"
    ok = {"accelerator": "cpu", "strategy": "ddp", "devices": 2, "precision": "32-true"}
    assert training._cpu_ddp(ok) == ok                                  # nothing to change
    assert training._cpu_ddp({"strategy": "auto", "sync_batchnorm": True})["sync_batchnorm"] is True  # not DDP
    gpu = {"accelerator": "gpu", "strategy": "ddp", "sync_batchnorm": True}
    assert training._cpu_ddp(gpu) is gpu                                # a GPU run keeps its preset


def test_joblib_gpu_is_a_no_op_without_two_gpus(no_gpu: None) -> None:
    cfg = compose("train", ["trainer.devices=3"])
    assert training._joblib_gpu(cfg) == 3


class _Trainer:
    def __init__(self, world_size: int, rank: int) -> None:
        self.world_size, self.global_rank = world_size, rank
        self.calls: list[dict[str, Any]] = []

    def test(self, method: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(kwargs)
        return [{"test/acc": torch.tensor(0.5), "test/loss": 1}]


def _digits(**overrides: Any) -> Any:
    cfg = compose("train", [f"data.{k}={v}" for k, v in overrides.items()])
    return instantiate(cfg.data)


@pytest.mark.parametrize("world", [2, 3])
def test_multiprocess_test_split_counts_every_image_once(world: int) -> None:
    dm = _digits(test_subset=50, eval_batch_size=8)
    loaders = [training._test_loader_without_repeats(dm, _Trainer(world, r)) for r in range(world)]
    indices = [list(loader.sampler) for loader in loaders]
    n = len(loaders[0].dataset)
    assert n == 50
    assert sorted(i for part in indices for i in part) == list(range(n))  # each image on exactly one rank
    for r, part in enumerate(indices):
        assert part == list(range(r, n, world))                           # rank r: r, r + W, r + 2W, ...
    x, y = next(iter(loaders[1]))
    assert x.shape[0] == 8 and y.dtype == torch.long
    ref = dm.test_dataloader()
    assert loaders[0].batch_size == ref.batch_size and loaders[0].num_workers == ref.num_workers


def test_the_test_step_uses_that_split_only_with_several_processes() -> None:
    dm = _digits(test_subset=20)
    single = _Trainer(1, 0)
    assert training._test(single, object(), dm) == {"test/acc": 0.5, "test/loss": 1.0}
    assert single.calls == [{"datamodule": dm, "verbose": False}]
    multi = _Trainer(2, 1)
    assert training._test(multi, object(), dm) == {"test/acc": 0.5, "test/loss": 1.0}
    (call,) = multi.calls
    assert list(call["dataloaders"].sampler) == list(range(1, 20, 2)) and call["verbose"] is False


def test_no_repeat_split_falls_back_when_the_test_set_cannot_be_indexed() -> None:
    class Stream:  # an iterable loader: Lightning's own split applies
        def setup(self, stage: str) -> None:
            self.stage = stage

        def test_dataloader(self) -> Any:
            return iter([])

    dm = Stream()
    assert training._test_loader_without_repeats(dm, _Trainer(2, 0)) is None and dm.stage == "test"


def test_wandb_helpers_without_a_run() -> None:
    training._log_wandb_table([SimpleNamespace()], {"acc": 1.0})  # no WandbLogger: nothing to log
    training.finish_wandb()  # no active run: nothing to close
    import wandb

    assert wandb.run is None
