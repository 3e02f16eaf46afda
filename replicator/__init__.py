"""Replication of an AWS IoT registry and its shadows from a primary region to a secondary.

Imports nothing from ``simulators``; boto3 (the ``replicator`` extra) is
imported by the modules that talk to AWS, not here.
"""

from __future__ import annotations

from replicator._errors import ReplicatorError

__all__ = ["ReplicatorError"]
