"""Where the tools' regions are, and their clients: flags, boto3's configuration, local regions.

:func:`resolve_regions` turns the command line into :class:`ToolRegions`: the
primary (and the secondary) as the replicator's
:class:`~replicator.aws._calls.RegionConfig`, from ``--region`` or
``--primary-region``/``--secondary-region``, ``--endpoint-url`` (or per
region, and per data plane), ``--profile``; or, with ``--local STATE_DIR``,
every endpoint of a running ``iotdr sim regions up`` from its
``regions.json`` (read here as a file: the tools never import the
simulators). :meth:`ToolRegions.connect` builds each region's clients with
the replicator's adapter (:func:`~replicator.aws._adapter.build_region`): one
quota limiter for all of them, AWS's default rates, throttling slowed down
for and counted, retries with jittered backoff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replicator._errors import ConfigError

if TYPE_CHECKING:
    from replicator.aws._adapter import Boto3Region
    from replicator.aws._calls import RegionConfig
    from replicator.runtime._quotas import QuotaLimiter

__all__ = ["LocalRegion", "ToolRegions", "resolve_regions"]

REGIONS_FILE = "regions.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRegion:
    """What a local region offers besides its APIs: the door and its trust anchor.

    Attributes:
        mqtts: the door's ``HOST:PORT`` (mTLS MQTT).
        endpoint: the endpoint name its server certificate carries (the SNI to send).
        ca_path: the CA that signed the door's certificate.
        admin_url: the door's admin endpoint, when it has one.
    """

    mqtts: str
    endpoint: str
    ca_path: Path
    admin_url: str | None = None


@dataclass(slots=True, kw_only=True)
class ToolRegions:
    """The regions a tool works on, the primary first, and their clients once connected."""

    primary: RegionConfig
    secondary: RegionConfig | None = None
    local: dict[str, LocalRegion] = field(default_factory=dict)
    clients: dict[str, Boto3Region] = field(default_factory=dict)
    limiter: QuotaLimiter | None = None

    def __repr__(self) -> str:
        names = [c.region for c in self.configs()]
        return f"ToolRegions({names}, local={bool(self.local)}, connected={sorted(self.clients)})"

    def configs(self) -> list[RegionConfig]:
        """The primary's configuration, then the secondary's if any."""
        return [self.primary] + ([self.secondary] if self.secondary is not None else [])

    def need_secondary(self, command: str) -> RegionConfig:
        """The secondary, or a usage error naming the flag ``command`` needs."""
        if self.secondary is None:
            raise ConfigError(
                f"{command} compares two regions: give --primary-region and --secondary-region "
                "(or --local STATE_DIR)"
            )
        return self.secondary

    def connect(self, *, quotas: dict[str, float] | None = None) -> ToolRegions:
        """Build each region's clients (one quota limiter for all); ``self`` for chaining."""
        from replicator.aws._adapter import build_region  # noqa: PLC0415
        from replicator.core._retry import RetryPolicy  # noqa: PLC0415
        from replicator.runtime._quotas import QuotaConfig, QuotaLimiter  # noqa: PLC0415

        self.limiter = QuotaLimiter(QuotaConfig.with_overrides(quotas))
        # Throttling is waited out (the bucket also slows down, and a bulk run retries a
        # throttled device again); an unreachable region is said within seconds.
        retry = RetryPolicy(max_attempts=8, base_s=0.2, cap_s=2.0)
        for config in self.configs():
            self.clients[config.region] = build_region(
                config, limiter=self.limiter, retry=retry, check_credentials=True
            )
        return self

    def client(self, region: str) -> Boto3Region:
        """The connected clients of ``region``."""
        return self.clients[region]

    def throttles(self) -> dict[str, int]:
        """Throttles answered so far, by ``region/API``."""
        return self.limiter.throttles() if self.limiter is not None else {}


def _read_local(state_dir: Path) -> dict[str, Any]:
    path = state_dir / REGIONS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no local regions are running with state directory {state_dir} ({path} not "
            "found): start them with `iotdr sim regions up --state-dir DIR`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
        raise ConfigError(f"{path} is not the regions file of `iotdr sim regions up`")
    return data


def _role(regions: dict[str, Any], role: str) -> str | None:
    return next((n for n, r in regions.items() if r.get("role") == role), None)


def resolve_regions(options: dict[str, Any]) -> ToolRegions:
    """The regions of the command line (see the module docstring).

    ``options`` holds ``region``, ``primary_region``, ``secondary_region``,
    ``endpoint_url``, ``primary_endpoint_url``, ``secondary_endpoint_url``,
    ``primary_data_endpoint_url``, ``secondary_data_endpoint_url``, ``profile``
    and ``local`` (any may be missing or None).

    Raises:
        ConfigError: no region, contradictory flags, or no local regions running.
    """
    from replicator.aws._calls import RegionConfig  # noqa: PLC0415 - botocore, when needed

    get = options.get
    if get("region") and (get("primary_region") or get("secondary_region")):
        raise ConfigError("give --region, or --primary-region/--secondary-region, not both")
    primary_name = get("region") or get("primary_region")
    secondary_name = None if get("region") else get("secondary_region")
    urls = {"primary": get("primary_endpoint_url"), "secondary": get("secondary_endpoint_url")}
    data_urls = {
        "primary": get("primary_data_endpoint_url"),
        "secondary": get("secondary_data_endpoint_url"),
    }
    local: dict[str, LocalRegion] = {}
    s3_url: str | None = None
    if get("local") is not None:
        found = _read_local(Path(str(get("local"))))
        regions: dict[str, Any] = found["regions"]
        s3_url = found.get("control_plane_url")  # the local regions' S3 (bulk registration)
        primary_name = primary_name or _role(regions, "primary")
        if not get("region"):
            secondary_name = secondary_name or _role(regions, "secondary")
        for name in (primary_name, secondary_name):
            if name is not None and name not in regions:
                raise ConfigError(
                    f"region {name} is not one of the local regions ({', '.join(regions)})"
                )
        for role, name in (("primary", primary_name), ("secondary", secondary_name)):
            if name is None:
                continue
            region = regions[name]
            urls[role] = urls[role] or found.get("control_plane_url")
            data_urls[role] = data_urls[role] or region.get("data_url")
            local[name] = LocalRegion(
                mqtts=str(region.get("mqtts") or ""),
                endpoint=str(region.get("endpoint") or ""),
                ca_path=Path(str(found.get("ca") or "")),
                admin_url=region.get("gateway_admin_url"),
            )
    if not primary_name:
        raise ConfigError(
            "no region: give --region (or --primary-region/--secondary-region), "
            "or --local STATE_DIR"
        )
    if secondary_name == primary_name:
        raise ConfigError(f"--primary-region and --secondary-region are both {primary_name}")

    def config(role: str, name: str) -> RegionConfig:
        return RegionConfig(
            region=name,
            endpoint_url=urls[role] or get("endpoint_url"),
            data_endpoint_url=data_urls[role],
            s3_endpoint_url=s3_url,
            profile=get("profile"),
        )

    return ToolRegions(
        primary=config("primary", primary_name),
        secondary=config("secondary", secondary_name) if secondary_name else None,
        local=local,
    )
