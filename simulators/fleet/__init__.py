"""The fleet simulator: many real device agents driven through region outages.

``iotdr sim run`` stands up the local regions, provisions a fleet, runs the
replicator, starts virtual devices (each the real
:class:`device_agent.FailoverClient`) in device-host processes, plays a
scenario's timeline and writes a report. The scenario format and the report
are pure (:mod:`._scenario`, :mod:`._report`); the driver and the device
hosts are the edges.
"""
