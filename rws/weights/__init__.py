"""Weights as data: export I/O, state-dict arithmetic, signatures, soups and model specs."""
