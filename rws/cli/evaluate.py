"""Evaluate exports / model specs on robustness suites; write long-format results.

    python evaluate.py models=[outputs/runs/digits-small_cnn-nominal/<time>/export]
    python evaluate.py specs=soup.yaml suite=[clean,corruptions_quick] test_subset=256 device=cpu
    python evaluate.py models=[A,B] baseline_results=outputs/eval/<time> baseline_model=std
    python evaluate.py -m hydra/launcher=local 'shard=0/2,1/2' models=[A,B,C,D] out=outputs/eval/abcd
See docs/evaluation.md.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rws.evaluation.pipeline import evaluate


# An absolute path: rws/conf is a data folder (no __init__.py), which Hydra only finds as a file path.
@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    summary = evaluate(cfg)
    # Returned so a Hydra sweeper can optimize over specs: the first model's mean corruption accuracy.
    first = next(iter(summary["models"].values()), {})
    return first.get("RA", first.get("TA"))


if __name__ == "__main__":
    main()
