"""Training methods as LightningModules, chosen by the ``method=`` config group."""
