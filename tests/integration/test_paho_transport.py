"""The paho transport on loopback: SNI, verification, failure kinds, never blocking the loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING

import pytest

from device_agent._endpoints import Endpoint
from device_agent._paho import PahoTransport
from device_agent._transport import ConnectError, ConnectParams, TransportCallbacks
from simulators import DEFAULT_REGIONS, FleetPKI

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from simulators import Broker
    from simulators.pytest_plugin import FleetFixture

pytestmark = pytest.mark.integration

REGION = DEFAULT_REGIONS[0]


def _context(fleet: FleetFixture, name: str) -> ssl.SSLContext:
    device = fleet.pki.issue_device(name)
    context = ssl.create_default_context(cafile=str(fleet.pki.ca_path))
    context.load_cert_chain(str(device.cert_path), str(device.key_path))
    return context


def _transport(
    context: ssl.SSLContext, port: int, *, host: str = REGION.endpoint, address: str = REGION.host
) -> PahoTransport:
    params = ConnectParams(
        endpoint=Endpoint(REGION.name, host, port),
        address=address,
        client_id="transport-test",
        ssl_context=context,
        timeout_s=2.0,
    )
    return PahoTransport(params, TransportCallbacks(lambda *a: None, lambda kind: None))


@pytest.fixture
def sni_server(fleet_pki: FleetFixture) -> Iterator[tuple[int, list[str | None]]]:
    """A TLS server on 127.0.0.1 that records the SNI of each handshake, then hangs up."""
    seen: list[str | None] = []
    server_cert = fleet_pki.servers[REGION.name]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server_cert.cert_path), str(server_cert.key_path))
    context.sni_callback = lambda sock, name, ctx: seen.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    stop.set()
    listener.close()
    thread.join(5)


async def test_sni_is_the_endpoint_name_while_the_socket_goes_to_the_address(
    fleet_pki: FleetFixture, sni_server: tuple[int, list[str | None]]
) -> None:
    port, seen = sni_server
    transport = _transport(_context(fleet_pki, "sni"), port, address="127.0.0.1")
    with pytest.raises(ConnectError):
        await transport.connect()  # the server hangs up after the handshake
    assert seen == [REGION.endpoint]


async def test_connects_and_round_trips(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture
) -> None:
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    received: asyncio.Queue[bytes] = asyncio.Queue()
    params = ConnectParams(
        endpoint=Endpoint(REGION.name, REGION.endpoint, broker.tls_port),
        address=REGION.host,
        client_id="round-trip",
        ssl_context=_context(fleet_pki, "round-trip"),
    )
    transport = PahoTransport(
        params, TransportCallbacks(lambda t, p, q, r: received.put_nowait(p), lambda k: None)
    )
    assert await transport.connect() is False
    assert await transport.subscribe("t/round-trip", 1) == 1
    for n in range(50):
        await transport.publish("t/round-trip", str(n).encode(), 1)
    got = [int(await asyncio.wait_for(received.get(), 5)) for _ in range(50)]
    assert got == list(range(50))
    await transport.disconnect()
    assert not transport.connected


@pytest.mark.parametrize(
    ("case", "kind"),
    [("wrong-name", "tls"), ("no-listener", "refused"), ("foreign-cert", "not_authorized")],
)
async def test_failure_kinds(
    region_brokers: dict[str, Broker],
    fleet_pki: FleetFixture,
    tmp_path: Path,
    case: str,
    kind: str,
) -> None:
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    context = _context(fleet_pki, "kinds")
    if case == "wrong-name":
        transport = _transport(context, broker.tls_port, host=DEFAULT_REGIONS[1].endpoint)
    elif case == "no-listener":
        with socket.socket() as probe:
            probe.bind((REGION.host, 0))
            free = probe.getsockname()[1]
        transport = _transport(context, free)
    else:
        stranger = FleetPKI.create(tmp_path / "foreign").issue_device("stranger")
        foreign = ssl.create_default_context(cafile=str(fleet_pki.pki.ca_path))
        foreign.load_cert_chain(str(stranger.cert_path), str(stranger.key_path))
        transport = _transport(foreign, broker.tls_port)
    with pytest.raises(ConnectError) as info:
        await transport.connect()
    assert info.value.kind == kind, str(info.value)
    assert info.value.region == REGION.name


async def test_silent_listener_times_out_without_blocking_the_loop(
    fleet_pki: FleetFixture,
) -> None:
    silent = socket.create_server((REGION.host, 0))  # accepts in the kernel, never answers
    try:
        port = silent.getsockname()[1]
        context = _context(fleet_pki, "silent")
        lags: list[float] = []

        async def ticker() -> None:
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - before)

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        results = await asyncio.gather(
            *(_transport(context, port).connect() for _ in range(20)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        tick.cancel()
    finally:
        silent.close()
    assert all(isinstance(r, ConnectError) and r.kind == "timeout" for r in results)
    assert elapsed < 4.0  # the attempts ran side by side, each with its own 2 s deadline
    assert max(lags) < 0.3


async def test_keep_alive_of_every_connection_from_one_housekeeping_task(
    region_brokers: dict[str, Broker], fleet_pki: FleetFixture
) -> None:
    """paho's keep-alive runs for all connections of a loop from one task, and one
    connection whose housekeeping fails does not stop the others'."""
    broker = region_brokers[REGION.name]
    assert broker.tls_port is not None
    pongs: dict[str, int] = {}
    transports: list[PahoTransport] = []
    for name in ("keep-a", "keep-b", "keep-broken"):
        params = ConnectParams(
            endpoint=Endpoint(REGION.name, REGION.endpoint, broker.tls_port),
            address=REGION.host,
            client_id=name,
            ssl_context=_context(fleet_pki, name),
            keepalive_s=1,
        )
        transport = PahoTransport(params, TransportCallbacks(lambda *a: None, lambda k: None))
        await transport.connect()
        pongs[name] = 0
        transport._client.on_pingresp = lambda name=name: pongs.__setitem__(name, pongs[name] + 1)
        transports.append(transport)
    broken = transports[2]._client

    def fail() -> object:
        raise RuntimeError("housekeeping of this connection fails")

    broken.loop_misc = fail  # type: ignore[method-assign,assignment]
    before = {task for task in asyncio.all_tasks() if "_Housekeeping" in repr(task)}
    assert len(before) == 1  # one task for the three connections
    async with asyncio.timeout(15):
        while min(pongs["keep-a"], pongs["keep-b"]) < 2:  # noqa: ASYNC110 - counted by paho
            await asyncio.sleep(0.1)
    assert pongs["keep-broken"] == 0  # its housekeeping raised: it was dropped, alone
    for transport in transports:
        await transport.disconnect()
