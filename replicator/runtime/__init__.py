"""The runtime: the journal and its worker, quotas, feeds, the service host, the composition root.

``_worker.py`` is the one loop that claims journaled changes and decides what
a failure means (retry, dead-letter, stop); the engine (``_engine.py``) and the
JITR handler (``_jitr.py``) only say how to apply one change. ``_build.py``
turns one :class:`Settings` tree into the regions, journals, engines and handler.
"""
