"""Evaluate exports / model specs on robustness suites; write long-format results.

    python evaluate.py models=[outputs/runs/digits-small_cnn-nominal/<time>/export]
    python evaluate.py specs=soup.yaml suite=[clean,corruptions_quick] test_subset=256 device=cpu
    python evaluate.py models=[A,B] baseline_results=outputs/eval/<time> baseline_model=std
    python evaluate.py -m hydra/launcher=local 'shard=0/2,1/2' models=[A,B,C,D] out=outputs/eval/abcd
See docs/evaluation.md.
"""

from __future__ import annotations

from omegaconf import DictConfig

from rws.cli.entry import hydra_entry


@hydra_entry("evaluate")
def main(cfg: DictConfig) -> float | None:
    from rws.evaluation.pipeline import evaluate

    summary = evaluate(cfg)
    # Returned so a Hydra sweeper can optimize over specs: the first model's mean corruption accuracy.
    first = next(iter(summary["models"].values()), {})
    return first.get("RA", first.get("TA"))


if __name__ == "__main__":
    main()
