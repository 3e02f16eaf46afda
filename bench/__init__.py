"""Benchmarks: scripts run by hand (``python bench/<name>.py``) that print JSON; not tests.

A package only so that mypy names its scripts ``bench.<name>``: ``bench/replicator.py``
would otherwise clash with the ``replicator`` package.
"""
