"""The fault suite of ``benchmarks/bench_faults.py``, one module per part (issue 14)."""
