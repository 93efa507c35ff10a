"""Evaluate exports / model specs on robustness suites; write long-format results.

    python evaluate.py models=[outputs/runs/digits-small_cnn-nominal/<time>/export]
    python evaluate.py specs=soup.yaml suite=[clean,corruptions_quick] test_subset=256 device=cpu
    python evaluate.py models=[A,B] baseline_results=outputs/eval/<time> baseline_model=std
See docs/evaluation.md.
"""

from rws.cli.evaluate import main

if __name__ == "__main__":
    main()
