"""Multi-step drivers: each step is a real CLI call (train.py, evaluate.py, rws.stages.*), so a
pipeline is exactly what a user could type, and every intermediate file stays on disk."""
