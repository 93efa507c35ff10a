"""The body of ``train.py``: data + model + method from config -> Lightning fit -> export.

Kept out of the script so pipelines and tests can call it with a composed config.
"""

from __future__ import annotations

import logging
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
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2 or devices not in ("auto", -1, None):
        return devices
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if "joblib" in str(hc.launcher.get("_target_", "")).lower():
            return [int(hc.job.num) % torch.cuda.device_count()]
    except Exception:
        pass
    return devices


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Fit the configured method, export the model, return the final metrics."""
    run_dir = Path(run_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
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
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if cfg.get("test_after_fit", True):
        for k, v in (trainer.test(method, datamodule=datamodule, verbose=False) or [{}])[0].items():
            metrics[k] = float(v)
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
