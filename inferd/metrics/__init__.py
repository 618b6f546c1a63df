"""Prometheus metrics: every name and label lives in `registry.py`."""
