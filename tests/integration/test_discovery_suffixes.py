"""Endpoint names from DNS only under allowed domains: an unauthenticated answer must not
choose the name TLS verifies. Against the Route 53 stand-in on 127.0.0.1."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_agent._client import FailoverClient
from device_agent._config import AgentConfig, DiscoveryConfig, IdentityConfig
from device_agent._discovery import DiscoveryError, DnsDiscovery
from device_agent._endpoints import Endpoint

if TYPE_CHECKING:
    from collections.abc import Sequence

    from device_agent._status import AgentEvent
    from simulators.dns import ThreadedDNSServer

pytestmark = pytest.mark.integration

EAST = "local-ats.iot.us-east-1.iotdr.test"


def _discovery(
    server: ThreadedDNSServer,
    suffixes: Sequence[str] | None,
    endpoints: dict[str, Endpoint] | None = None,
) -> DnsDiscovery:
    return DnsDiscovery(
        "iot.iotdr.test",
        nameservers=[server.host],
        port=server.port,
        timeout_s=2.0,
        endpoints=endpoints,
        allowed_suffixes=suffixes,
    )


@pytest.mark.parametrize(
    "suffixes",
    [
        ("amazonaws.com", "amazonaws.com.cn"),  # the agent's default
        ("otdr.test",),  # a suffix must end at a label: iotdr.test is not under it
        (),
    ],
)
async def test_a_target_under_no_allowed_suffix_is_refused_in_one_line(
    dns_server: ThreadedDNSServer, suffixes: tuple[str, ...]
) -> None:
    with pytest.raises(DiscoveryError) as caught:
        await _discovery(dns_server, suffixes).discover()
    error = caught.value
    assert error.kind == "name_not_allowed"
    assert EAST in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("suffixes", "endpoints"),
    [
        (("iotdr.test",), None),
        ((".IOTDR.test.",), None),  # dots and case do not matter
        (("us-east-1.iotdr.test",), None),
        (("amazonaws.com",), {"us-east-1": Endpoint("us-east-1", EAST)}),  # configured: trusted
        (None, None),  # no check (the class's default)
    ],
)
async def test_a_target_under_an_allowed_suffix_or_configured_is_accepted(
    dns_server: ThreadedDNSServer,
    suffixes: tuple[str, ...] | None,
    endpoints: dict[str, Endpoint] | None,
) -> None:
    if endpoints is not None:
        endpoints["us-west-2"] = Endpoint("us-west-2", "local-ats.iot.us-west-2.iotdr.test")
    found = await _discovery(dns_server, suffixes, endpoints).discover()
    assert found.target == EAST
    assert found.region == "us-east-1"


async def test_the_agent_refuses_a_cname_outside_its_default_suffixes(
    dns_server: ThreadedDNSServer,
) -> None:
    here = Path("unused.pem")
    static = {
        r: Endpoint(r, f"x.iot.{r}.amazonaws.com", 1) for r in ("us-east-1", "us-west-2")
    }  # other names than the CNAME's target, and ports nothing listens on
    config = AgentConfig(
        identity=IdentityConfig(client_id="d", cert_path=here, key_path=here, ca_path=here),
        discovery=DiscoveryConfig(
            name="iot.iotdr.test",
            nameservers=(dns_server.host,),
            port=dns_server.port,
            endpoints=static,
        ),
    )
    events: list[AgentEvent] = []
    client = FailoverClient(
        config, ssl_context=ssl.create_default_context(), on_event=events.append
    )
    try:
        await client.start()
    finally:
        await client.close()
    failed = [e for e in events if e.name == "dns.failed"]
    assert failed
    assert failed[0].fields["kind"] == "name_not_allowed"
    assert EAST in failed[0].fields["detail"]
