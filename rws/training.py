"""The body of ``train.py``: data + model + method from config -> Lightning fit -> export.

Kept out of the script so pipelines and tests can call it with a composed config.
"""

from __future__ import annotations

import logging
import os
import warnings
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rws.methods.init import load_init
from rws.utils.checkpoint_io import AtomicCheckpointIO
from rws.utils.io import write_json
from rws.weights.export import save_export

log = logging.getLogger("rws.train")
# Raised inside Lightning itself on every fit with torch 2.14; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def build_method(cfg: DictConfig) -> pl.LightningModule:
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    method_cfg.pop("name", None)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    # Not recursive: the model config (it has a _target_) must reach the module as a dict, so the
    # module can rebuild the model and store the config in the export.
    return instantiate(method_cfg, model=model_cfg, _convert_="all", _recursive_=False)


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is not None and "_target_" in lcfg:
            if name == "wandb":
                import wandb  # noqa: F401  (fail early with a clear ImportError)
            loggers.append(instantiate(lcfg))
    return loggers


def _joblib_gpu(cfg: DictConfig) -> Any:
    """joblib runs multirun jobs in parallel but gives every job GPU 0; spread them instead."""
    devices = cfg.trainer.get("devices", "auto")
    many_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= 2
    if many_gpus and devices in ("auto", -1, None):  # pragma: no cover - needs two or more CUDA GPUs
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if "joblib" in str(hc.launcher.get("_target_", "")).lower():
                return [int(hc.job.num) % torch.cuda.device_count()]
        except Exception:
            pass
    return devices


def _runs_on_cpu(trainer_cfg: dict[str, Any]) -> bool:
    """Whether the Trainer will run on the CPU: ``accelerator: cpu``, or ``auto`` without CUDA or MPS."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    if accelerator == "cpu":
        return True
    if accelerator != "auto" or torch.cuda.is_available():
        return False
    mps = getattr(torch.backends, "mps", None)
    return not (mps is not None and mps.is_available())


def _cpu_ddp(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """``trainer=ddp`` on the CPU: Lightning's DDP takes the gloo backend there by itself; what a GPU
    preset carries that the CPU cannot take is dropped here: SyncBatchNorm (CUDA only: DDP refuses it
    on CPU modules), fp16 mixed precision (none on CPU; Lightning would silently switch to bf16), and
    ``devices: -1`` (every GPU; one process on the CPU, ``trainer.devices=N`` for N)."""
    strategy = trainer_cfg.get("strategy")
    if not (isinstance(strategy, str) and strategy.startswith("ddp")) or not _runs_on_cpu(trainer_cfg):
        return trainer_cfg
    out = dict(trainer_cfg)
    changed = []
    if out.get("sync_batchnorm"):
        out["sync_batchnorm"] = False
        changed.append("sync_batchnorm=false (CUDA only)")
    if str(out.get("precision")) in ("16-mixed", "16"):
        out["precision"] = "32-true"
        changed.append(f"precision=32-true (no {trainer_cfg.get('precision')} on CPU)")
    if out.get("devices") in (-1, "-1"):
        out["devices"] = 1
        changed.append("devices=1 (-1 means every GPU; set trainer.devices=N for N CPU processes)")
    if changed:
        log.info("%s on the CPU (gloo backend): %s", strategy, ", ".join(changed))
    return out


def _test_loader_without_repeats(datamodule: Any, trainer: pl.Trainer) -> Any:
    """The test split for a multi-process run, each image on exactly one rank.

    Lightning splits an evaluation set over the ranks with ``DistributedSampler``, which pads it with
    repeated images until every rank has the same count, so the synced test accuracy would count some
    images twice. This loader gives rank r the images r, r + W, r + 2W, ... (ranks may differ by one
    image; Lightning leaves a ``DistributedSampler`` it is given alone). None when the split cannot be
    indexed (then Lightning's default applies)."""
    from torch.utils.data import DataLoader
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or loader.batch_size is None or not hasattr(dataset, "__len__"):
        return None
    sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                           shuffle=False)
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      persistent_workers=loader.persistent_workers)


def _test(trainer: pl.Trainer, method: pl.LightningModule, datamodule: Any) -> dict[str, float]:
    loader = _test_loader_without_repeats(datamodule, trainer) if trainer.world_size > 1 else None
    if loader is None:
        results = trainer.test(method, datamodule=datamodule, verbose=False)
    else:
        results = trainer.test(method, dataloaders=loader, verbose=False)
    return {k: float(v) for k, v in (results or [{}])[0].items()}


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Fit the configured method, export the model, return the final metrics."""
    run_dir = Path(run_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    if os.environ.get("LOCAL_RANK", "0") == "0" and hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()  # a missing or empty dataset fails here, before the run writes anything
    method = build_method(cfg)
    if cfg.get("init"):
        skipped = load_init(method.model, cfg.init, skip=list(cfg.get("init_skip") or []))
        log.info("initialized from %s%s", cfg.init, f" (kept fresh: {skipped})" if skipped else "")
        method.reset_ema()  # the weight average starts at the loaded weights, not the random ones

    ckpt_dir = run_dir / "checkpoints"
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}",
                                              auto_insert_metric_name=False, save_last=True, save_top_k=1)
    loggers = build_loggers(cfg)
    for lg in loggers:  # the whole resolved run config, not only the module's hyperparameters
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["devices"] = _joblib_gpu(cfg)
    trainer_cfg = _cpu_ddp(trainer_cfg)
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=[checkpoint], logger=loggers or False,
                                      default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()])

    ckpt_path = cfg.get("resume")
    if ckpt_path == "auto":
        last = ckpt_dir / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
        log.info("resume=auto: %s", ckpt_path or "no last.ckpt, starting fresh")
    elif ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"resume={ckpt_path}: no such checkpoint")

    t0 = time.time()
    trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.time() - t0
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        log.info("%d processes, %s backend", trainer.world_size, torch.distributed.get_backend())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if cfg.get("test_after_fit", True):
        metrics.update(_test(trainer, method, datamodule))
    metrics["fit_seconds"] = round(fit_seconds, 2)
    metrics["epochs"] = int(trainer.current_epoch)

    run_cfg = OmegaConf.to_container(cfg, resolve=False)
    if trainer.is_global_zero:
        fingerprint = getattr(datamodule, "fingerprint", None)
        if fingerprint:
            metrics["data_fingerprint"] = fingerprint() if callable(fingerprint) else fingerprint
        save_export(cfg.export_dir, method.export_model(), method.model_cfg, metrics=metrics, run_cfg=run_cfg)
        write_json(run_dir / "metrics.json", metrics)
        log.info("export written to %s", cfg.export_dir)
        _log_wandb_table(loggers, metrics)
    return metrics


def _log_wandb_table(loggers: list[Any], metrics: dict[str, Any]) -> None:
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            import wandb

            table = wandb.Table(columns=["metric", "value"], data=[[k, v] for k, v in metrics.items()
                                                                    if isinstance(v, (int, float))])
            lg.experiment.log({"final_metrics": table})


def finish_wandb() -> None:
    """Close the wandb run; without this every job of a multirun logs into one run."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass
