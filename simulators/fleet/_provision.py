"""Provisioning a simulated fleet: identities from the regions' fleet PKI, and their registration.

Two paths, for two moments of a run:

- :func:`provision_fleet`, before the scenario: the fleet's steady state.
  Identities (EC P-256 keys, mode 0600, certificates signed by the fleet CA the
  regions trust) are generated on every core (:func:`generate_device_identities`),
  then registered in bulk in every region through the control plane's
  bulk-registration endpoint: unthrottled and without registry events, as if
  the replicator had caught up. It returns once each region's door admits them.
- :func:`register_new_devices`, during the scenario: devices the scenario
  creates. They go through the AWS APIs in the primary only
  (RegisterCertificateWithoutCA ACTIVE, CreateThing, AttachThingPrincipal),
  throttled at the primary's quotas and published as registry events, so the
  replicator has real work to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulators._errors import SimulatorError
from simulators._keygen import device_names, generate_device_identities
from simulators._pki import CertifiedKey, load_certificate
from simulators._regions import iot_client, register_device

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from simulators._pki import FleetPKI
    from simulators._regions import LocalRegions

__all__ = [
    "ProvisionTimes",
    "fleet_device_names",
    "issue_identities",
    "provision_fleet",
    "register_new_devices",
]

logger = logging.getLogger(__name__)

DEVICE_PREFIX = "sim-"
"""The simulated devices' thing names: ``sim-00001``, ``sim-00002``, ..."""


def fleet_device_names(count: int, *, start: int = 1) -> list[str]:
    """``count`` thing names ``sim-00001``... from number ``start``, zero-padded to sort."""
    return device_names(count, prefix=DEVICE_PREFIX, start=start)


@dataclass(slots=True)
class ProvisionTimes:
    """Where :func:`provision_fleet` spent its time (for the bench script and the report).

    Attributes:
        keys_s: seconds generating keys and certificates.
        registration_s: seconds registering, until every door admitted the fleet.
    """

    keys_s: float = 0.0
    registration_s: float = 0.0


def provision_fleet(
    regions: LocalRegions,
    names: Sequence[str],
    *,
    register_in: Sequence[str] | None = None,
    workers: int | None = None,
    times: ProvisionTimes | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> list[CertifiedKey]:
    """Issue an identity per name and register the fleet in ``register_in`` (all regions).

    Keys and certificates are generated in parallel processes, signed by the
    regions' fleet CA (``regions.pki``), and written under its ``devices/``
    folder (keys mode 0600). Then each region gets the whole fleet in bulk
    (:meth:`LocalRegions.register_fleet`): no registry events, and the call
    returns once each region's door admits every device. An empty
    ``register_in`` issues identities only.

    Args:
        regions: the running local regions.
        names: thing names (see :func:`fleet_device_names`); each becomes a CN.
        register_in: the regions to register in; None for all of them.
        workers: key-generation processes; default one per core.
        times: filled with the seconds spent on keys and on registration.
        timer: the clock for ``times``.

    Raises:
        SimulatorError: the regions are not running, a name is repeated, or a
            region refused the fleet.
    """
    pki = _running_pki(regions)
    if len(set(names)) != len(names):
        msg = "device names must be unique"
        raise SimulatorError(msg)
    started = timer()
    devices = issue_identities(pki, names, workers)
    registered = timer()
    if register_in is None or register_in:
        regions.register_fleet(devices, register_in)
    if times is not None:
        times.keys_s = registered - started
        times.registration_s = timer() - registered
    logger.info(
        "fleet.provisioned",
        extra={
            "devices": len(devices),
            "regions": list(register_in) if register_in is not None else "all",
            "keys_s": round(registered - started, 3),
            "registration_s": round(timer() - registered, 3),
        },
    )
    return devices


def register_new_devices(
    regions: LocalRegions,
    names: Sequence[str],
    *,
    region: str | None = None,
    workers: int | None = 1,
    pki: FleetPKI | None = None,
) -> list[CertifiedKey]:
    """Issue identities for devices created during a run and register them the AWS way.

    Each device is registered in ``region`` (the primary by default) only, by
    RegisterCertificateWithoutCA (ACTIVE), CreateThing and
    AttachThingPrincipal through boto3 against the control plane: throttled
    at that region's quotas (the client waits them out), with registry events
    published, so the replicator copies them to the other regions.

    Args:
        regions: the running local regions.
        names: thing names of the new devices.
        region: where to register them; None for the primary.
        workers: key-generation processes (1: in this process, fine for tens).
        pki: the CA that signs them (default: the regions' fleet CA); a JITR run
            uses a device CA registered in the secondary with auto-registration.

    Raises:
        SimulatorError: the regions are not running, or a call failed after its retries.
    """
    pki = pki or _running_pki(regions)
    target = region or regions.regions[0].name
    plane = regions.control_plane
    if plane is None:
        msg = "the local regions are not running"
        raise SimulatorError(msg)
    regions.gateway(target)  # an unknown region fails here, before any key is made
    devices = issue_identities(pki, names, workers)
    iot = iot_client(plane.url, target)
    for device in devices:
        register_device(plane.url, target, device, iot=iot)
    logger.info("fleet.devices_created", extra={"region": target, "devices": len(devices)})
    return devices


def _running_pki(regions: LocalRegions) -> FleetPKI:
    if regions.pki is None:
        msg = "the local regions are not running: start them before provisioning a fleet"
        raise SimulatorError(msg)
    return regions.pki


def issue_identities(
    pki: FleetPKI, names: Sequence[str], workers: int | None = None
) -> list[CertifiedKey]:
    """Key pairs and certificates for ``names`` under ``pki``'s ``devices/`` folder."""
    directory: Path = pki.directory / "devices"
    if not names:
        return []
    generate_device_identities(directory, list(names), pki=pki, workers=workers)
    devices = []
    for name in names:
        cert_path = directory / f"{name}.crt"
        devices.append(
            CertifiedKey(
                name=name,
                cert_path=cert_path,
                key_path=directory / f"{name}.key",
                certificate=load_certificate(cert_path),
            )
        )
    return devices
