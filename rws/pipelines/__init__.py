"""Multi-step drivers: each step is a real CLI call (rws.cli.train, rws.cli.evaluate, rws.stages.*), so a
pipeline is exactly what a user could type, and every intermediate file stays on disk. Each pipeline's
``plan(settings, out)`` lists its steps; ``rws.pipelines.runner.run`` runs them."""
