"""The search: a validated space, the expansion arithmetic, strategies, the run's Optuna study, the loop.

``space`` (YAML in, typed objects out) → ``strategies`` propose → latency from :mod:`scaler.measure`
→ candidates queued in the study (``store``) → workers train them with :mod:`scaler.proxy` → the
strategy decides again (``run``).
"""
