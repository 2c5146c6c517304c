"""The search: a validated space, the expansion arithmetic, strategies, the run's Optuna study, the loop.

``space`` (YAML in, typed objects out) → ``strategies`` propose (registered by name) → latency from
:mod:`scaler.measure` → candidates queued in the study (``store``), each trial a typed ``record`` →
workers (``worker``) train them with :mod:`scaler.proxy` → the strategy decides again (``run``, the
loop; ``progress``, its bars).
"""
