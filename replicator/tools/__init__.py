"""The operator tools (``iotdr tools ...``): provisioning, comparison, search and lookup.

One module per command family; each reads and writes through the
replicator's AWS layer (its clients, quotas, paging, retries and error
translation). ``_cli.py`` holds the click commands; ``replicator/cli.py``
registers them in the ``tools`` group.
"""

from __future__ import annotations

from replicator.tools._compare import CompareReport, Difference, compare_devices, differences
from replicator.tools._context import LocalRegion, ToolRegions, resolve_regions
from replicator.tools._lookup import Admission, admission
from replicator.tools._registry import CertificateView, DeviceView, RegionReader, search_things

__all__ = [
    "Admission",
    "CertificateView",
    "CompareReport",
    "DeviceView",
    "Difference",
    "LocalRegion",
    "RegionReader",
    "ToolRegions",
    "admission",
    "compare_devices",
    "differences",
    "resolve_regions",
    "search_things",
]
