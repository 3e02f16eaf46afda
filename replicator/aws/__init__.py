"""The AWS adapter: boto3's clients behind :class:`~replicator.core._region.RegionApi`.

``_adapter.py`` builds every boto3 client of the replicator (:func:`build_region`);
``_calls.py`` paces, retries and translates each call; ``_writes.py`` carries
out the plans' operations; ``_iam.py`` writes the least-privilege policies.
"""
