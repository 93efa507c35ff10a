"""The Hydra entry points, inside the package so they run from an installed wheel:

    python -m rws.cli.train ...      (same as python train.py ... in a checkout; also `rws-train`)
    python -m rws.cli.evaluate ...   (evaluate.py, `rws-evaluate`)
    python -m rws.cli.sweep ...      (sweep.py, `rws-sweep`)

Each loads its config from ``rws/conf`` (the one copy of the configs).
"""
