"""Evaluation: one engine for evaluate.py and sweep.py. See docs/evaluation.md.

    cells.py        a cell (suite, condition, level), its settings hash, counting helpers
    sources.py      data sources: TestStream (evaluate.py), FixedSubset (sweep.py); they own the seeding
    suites/         the suite registry: clean, corruptions, corruption_arrays, adversarial
    engine.py       models x planned cells -> rows + per-example correctness, resumable
    results.py      long-format rows (results.jsonl, shards), readers
    correctness.py  per-example correctness files (correct/)
    shards.py       shard=i/n
    pipeline.py     evaluate.py as a function of its config
    selection.py    best per target, best average, few-shot study
    summary.py      TA / RA / mCE per model from rows; metrics.py the metrics
    wandb_log.py    one wandb run with the rows, summary and figures

Submodules are imported where used so that reading results or building tables does not import the
data or corruption stacks.
"""
