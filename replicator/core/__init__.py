"""The pure core: states, change records, plans, sync points, ARNs, the JITR screen.

No I/O here: no boto3, sockets, threads, clocks or logging. The planners take
the states read in both regions and return the writes; :class:`RegionApi`
(``_region.py``) is the port the runtime reads and writes the regions through.
"""
