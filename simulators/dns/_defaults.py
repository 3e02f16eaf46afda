"""The zone the local regions are served under when no zone file is given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulators._errors import ZoneError
from simulators._topology import DEFAULT_DOMAIN, DEFAULT_REGIONS
from simulators.dns._zone import Zone

if TYPE_CHECKING:
    from collections.abc import Sequence

    from simulators._topology import LocalRegion

__all__ = ["default_zone"]


def default_zone(
    regions: Sequence[LocalRegion] = DEFAULT_REGIONS,
    *,
    name: str = "iot",
    roles_ttl: int = 0,
    cname_ttl: int = 0,
    address_ttl: int = 60,
) -> Zone:
    """The ``iotdr.test.`` zone with the local regions' records.

    An A record per region endpoint, the device-facing CNAME ``iot`` on the
    first (primary) region, and the roles TXT ``_iot``
    ``{"primary": ..., "secondary": ...}`` from the first two regions.
    """
    if len(regions) < 2:
        msg = "the default zone needs a primary and a secondary region"
        raise ZoneError(msg)
    zone = Zone(f"{DEFAULT_DOMAIN}.")
    for region in regions:
        zone.set(region.endpoint + ".", "A", region.host, ttl=address_ttl)
    zone.set(name, "CNAME", regions[0].endpoint + ".", ttl=cname_ttl)
    zone.set_json(
        f"_{name}", {"primary": regions[0].name, "secondary": regions[1].name}, ttl=roles_ttl
    )
    return zone
