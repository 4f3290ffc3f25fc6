"""Search algorithms, one per file; each registers itself with ``experiments.sweep.registry.register``."""
