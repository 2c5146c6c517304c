"""Measuring a network where it will run: latency on the target device, and its size (parameters, MACs).

Everything a search knows about speed comes from here; nothing here trains or searches.
"""
