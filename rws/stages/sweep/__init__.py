"""sweep.py: a generator of specs (a soup grid, a spec list; α/β grids next) measured on named
targets by the evaluation engine, then a selection step. See docs/soups.md.

    generators.py   what is swept (SoupGrid: soups set in place; SpecList: built specs)
    targets.py      named selections of suite cells with their own k
    run.py          run_sweep (measure, resumable, shardable) and summarize_sweep (selection, figures)

Outputs in ``out``: results.jsonl (engine rows), correct/ (per-example correctness), sweep.json,
best.json/.md, summary.json, correctness.safetensors, few_shot.json, figures/.
"""

from rws.stages.sweep.run import run_sweep, summarize_sweep

__all__ = ["run_sweep", "summarize_sweep"]
