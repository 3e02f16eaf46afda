"""The ``iotdr sim`` command group: local regions' building blocks from the shell.

Only click is imported at the top, so ``iotdr --help`` stays fast and works
without the ``sim`` extra; each command imports what it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import click

from device_agent.cli import emit
from simulators._errors import SimulatorError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from simulators import BrokerKind

__all__ = ["sim"]


def parse_address(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST`` with a default port) as a (host, port) pair.

    Raises:
        click.BadParameter: not an IP address and a port number.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, str(default_port) if default_port is not None else ""
    try:
        address = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        msg = f"{value!r} is not HOST:PORT with an IP address, e.g. 127.0.0.1:5353"
        raise click.BadParameter(msg) from None
    if not address.is_loopback:
        msg = f"{host} is not a loopback address: the simulators listen on 127.0.0.0/8 only"
        raise click.BadParameter(msg)
    if not 0 <= port <= 65535:
        msg = f"port {port} is out of range (0..65535)"
        raise click.BadParameter(msg)
    return host, port


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    del ctx, param
    return None if value is None else parse_address(value)


def _wait_for_signal() -> Iterator[None]:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(1.0):
            yield None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_AMQTT_DEVICES = 200
"""The default fleet is cut to this many devices when the brokers are the embedded amqtt."""

_broker_option = click.option(
    "--broker",
    type=click.Choice(["auto", "mosquitto", "amqtt"]),
    default="auto",
    show_default=True,
    help="auto = mosquitto when installed, else amqtt (MQTT 3.1.1 only).",
)


@click.group()
def sim() -> None:
    """Local AWS IoT regions, the Route 53 stand-in and the fleet simulator."""


# -- dns --------------------------------------------------------------------------------


@sim.group()
def dns() -> None:
    """The Route 53 stand-in: an authoritative DNS server on loopback."""


@dns.command("serve")
@click.option(
    "--zone",
    "zone_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Zone file (YAML or JSON): origin, default_ttl, negative_ttl, records. "
    "Default: iotdr.test. with the local regions us-east-1 (primary) and us-west-2.",
)
@click.option(
    "--listen",
    default="127.0.0.1:5353",
    show_default=True,
    callback=_address,
    help="Loopback address and port for UDP and TCP (port 0 picks one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def dns_serve(zone_path: Path | None, listen: tuple[str, int], as_json: bool) -> None:
    """Serve a zone until interrupted; change records with `iotdr sim dns set`."""
    from simulators.dns import ThreadedDNSServer, default_zone, load_zone_file  # noqa: PLC0415

    zone = load_zone_file(zone_path) if zone_path is not None else default_zone()
    host, port = listen
    with ThreadedDNSServer(zone, host=host, port=port) as server:
        ready = {
            "dns": f"{server.host}:{server.port}",
            "zone": zone.origin.to_text(),
            "records": len(zone.records()),
        }
        emit(
            ready,
            as_json=as_json,
            text=f"serving {ready['zone']} on {ready['dns']} (UDP and TCP); Ctrl-C stops",
        )
        for _ in _wait_for_signal():
            pass


@dns.command("set")
@click.argument("name")
@click.argument(
    "rdtype", metavar="TYPE", type=click.Choice(["A", "AAAA", "CNAME", "TXT"], case_sensitive=False)
)
@click.argument("values", nargs=-1)
@click.option("--server", required=True, callback=_address, help="The DNS server, HOST:PORT.")
@click.option("--ttl", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1))
@click.option("--json-value", "json_value", help="TXT only: a JSON value to store (validated).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def dns_set(
    name: str,
    rdtype: str,
    values: tuple[str, ...],
    server: tuple[str, int],
    ttl: int,
    json_value: str | None,
    as_json: bool,
) -> None:
    """Replace the TYPE records of NAME on a running server (DNS UPDATE)."""
    from simulators.dns import json_text  # noqa: PLC0415
    from simulators.dns._control import set_records, zone_origin  # noqa: PLC0415

    rdtype = rdtype.upper()
    if json_value is not None:
        if rdtype != "TXT" or values:
            msg = "--json-value is for TXT records, instead of VALUES"
            raise click.UsageError(msg)
        values = (json_text(json_value, where="--json-value"),)
    if not values:
        msg = "give at least one VALUE (or --json-value for TXT)"
        raise click.UsageError(msg)
    origin = zone_origin(server, name)
    set_records(server, origin, name, rdtype, list(values), ttl=ttl)
    result = {"name": name, "type": rdtype, "values": list(values), "ttl": ttl, "zone": origin}
    emit(result, as_json=as_json, text=f"{name} {ttl} {rdtype} {' '.join(values)}")


@dns.command("delete")
@click.argument("name")
@click.argument(
    "rdtype",
    metavar="[TYPE]",
    required=False,
    type=click.Choice(["A", "AAAA", "CNAME", "TXT"], case_sensitive=False),
)
@click.option("--server", required=True, callback=_address, help="The DNS server, HOST:PORT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def dns_delete(name: str, rdtype: str | None, server: tuple[str, int], as_json: bool) -> None:
    """Delete the TYPE records of NAME (all of them without TYPE) on a running server."""
    from simulators.dns._control import delete_records, zone_origin  # noqa: PLC0415

    rdtype = rdtype.upper() if rdtype else None
    origin = zone_origin(server, name)
    delete_records(server, origin, name, rdtype)
    result = {"name": name, "type": rdtype, "deleted": True, "zone": origin}
    emit(result, as_json=as_json, text=f"deleted {name} {rdtype or '(all types)'}")


# -- pki --------------------------------------------------------------------------------


@sim.group()
def pki() -> None:
    """The local fleet PKI: root CA, region server certificates, device identities."""


_pki_dir = click.option(
    "--dir",
    "directory",
    default=Path("pki"),
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The fleet PKI folder (holds fleet-ca.crt and fleet-ca.key).",
)
_algorithm = click.option(
    "--algorithm",
    type=click.Choice(["ec", "rsa"]),
    default="ec",
    show_default=True,
    help="ec = P-256, rsa = 2048 bits.",
)


@pki.command("init")
@_pki_dir
@_algorithm
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pki_init(directory: Path, algorithm: str, as_json: bool) -> None:
    """Create the fleet root CA in --dir (kept if it is there already)."""
    from simulators._pki import FleetPKI, certificate_id  # noqa: PLC0415

    fleet = FleetPKI.load_or_create(directory, algorithm="rsa" if algorithm == "rsa" else "ec")
    result = {"ca": str(fleet.ca_path), "ca_certificate_id": certificate_id(fleet.ca_cert)}
    emit(result, as_json=as_json, text=f"fleet CA: {fleet.ca_path}")


@pki.command("server")
@click.argument("name")
@_pki_dir
@click.option("--dns-name", "dns_names", multiple=True, required=True, help="A SAN host name.")
@click.option("--ip", "ips", multiple=True, help="A SAN IP address (repeatable).")
@_algorithm
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pki_server(
    name: str,
    directory: Path,
    dns_names: tuple[str, ...],
    ips: tuple[str, ...],
    algorithm: str,
    as_json: bool,
) -> None:
    """Issue a TLS server certificate NAME (e.g. a region) with the given SANs."""
    from simulators._pki import FleetPKI  # noqa: PLC0415

    fleet = FleetPKI.load(directory)
    issued = fleet.issue_server(
        name,
        dns_names=list(dns_names),
        ip_addresses=list(ips),
        algorithm="rsa" if algorithm == "rsa" else "ec",
    )
    result = {"cert": str(issued.cert_path), "key": str(issued.key_path)}
    emit(result, as_json=as_json, text=f"{issued.cert_path}\n{issued.key_path}")


@pki.command("devices")
@_pki_dir
@click.option("--count", required=True, type=click.IntRange(1, 10_000_000))
@click.option("--prefix", default="device-", show_default=True, help="Thing name prefix.")
@click.option("--start", default=0, show_default=True, type=click.IntRange(0), help="First index.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder (default: DIR/devices).",
)
@click.option(
    "--sign/--no-sign",
    default=True,
    show_default=True,
    help="Issue certificates with the fleet CA, or keys and CSRs only.",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: one per core).")
@_algorithm
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pki_devices(
    directory: Path,
    count: int,
    prefix: str,
    start: int,
    out: Path | None,
    sign: bool,
    workers: int | None,
    algorithm: str,
    as_json: bool,
) -> None:
    """Generate COUNT device keys and CSRs (and certificates) on every core.

    With --sign (the default) the fleet CA in --dir signs them; it is created
    on first use.
    """
    from simulators._keygen import device_names, generate_device_identities  # noqa: PLC0415
    from simulators._pki import FleetPKI  # noqa: PLC0415

    fleet = FleetPKI.load_or_create(directory) if sign else None
    result = generate_device_identities(
        out or directory / "devices",
        device_names(count, prefix=prefix, start=start),
        algorithm="rsa" if algorithm == "rsa" else "ec",
        pki=fleet,
        workers=workers,
    )
    summary = {
        "count": result.count,
        "directory": str(result.directory),
        "manifest": str(result.manifest_path),
        "signed": result.signed,
        "algorithm": result.algorithm,
        "workers": result.workers,
        "elapsed_s": round(result.elapsed_s, 3),
        "per_second": round(result.per_second, 1),
    }
    emit(
        summary,
        as_json=as_json,
        text=f"{result.count} identities in {result.directory} "
        f"({result.elapsed_s:.1f} s, {result.per_second:.0f}/s)",
    )


# -- broker -----------------------------------------------------------------------------


@sim.group()
def broker() -> None:
    """A region's MQTT broker (mosquitto, or the embedded amqtt when mosquitto is absent)."""


@broker.command("serve")
@click.option("--region", default="us-east-1", show_default=True)
@click.option(
    "--listen",
    default="127.0.0.2:1883",
    show_default=True,
    callback=_address,
    help="Plain MQTT listener HOST:PORT.",
)
@click.option("--tls-port", type=click.IntRange(0, 65535), help="Also an mTLS listener here.")
@click.option(
    "--pki",
    "pki_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Fleet PKI folder for --tls-port (created if missing).",
)
@click.option(
    "--endpoint",
    help="Host name the server certificate covers (default local-ats.iot.REGION.iotdr.test).",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "mosquitto", "amqtt"]),
    default="auto",
    show_default=True,
    help="auto = mosquitto when installed, else amqtt (MQTT 3.1.1 only).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("state"),
    show_default=True,
    help="Where the configuration and the broker log go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ready line as JSON.")
def broker_serve(
    region: str,
    listen: tuple[str, int],
    tls_port: int | None,
    pki_dir: Path | None,
    endpoint: str | None,
    kind: str,
    state_dir: Path,
    as_json: bool,
) -> None:
    """Run one region's broker until interrupted."""
    from simulators import (  # noqa: PLC0415
        BrokerError,
        BrokerSpec,
        FleetPKI,
        TLSFiles,
        endpoint_name,
        start_broker,
    )

    host, port = listen
    tls = None
    if tls_port is not None:
        if pki_dir is None:
            msg = "--tls-port needs --pki (the fleet PKI folder)"
            raise click.UsageError(msg)
        fleet = FleetPKI.load_or_create(pki_dir)
        server = fleet.server_certificate(
            region, dns_names=[endpoint or endpoint_name(region)], ip_addresses=[host]
        )
        tls = TLSFiles(ca_path=fleet.ca_path, cert_path=server.cert_path, key_path=server.key_path)
    spec = BrokerSpec(
        region=region, state_dir=state_dir, host=host, port=port, tls_port=tls_port, tls=tls
    )
    chosen = cast('BrokerKind | Literal["auto"]', kind)  # click.Choice checked it
    with start_broker(spec, kind=chosen) as running:
        ready = {
            "region": region,
            "kind": running.kind,
            "mqtt5": running.mqtt5,
            "mqtt": f"{running.host}:{running.port}",
            "mqtts": f"{running.host}:{running.tls_port}" if running.tls_port else None,
            "ca": str(tls.ca_path) if tls else None,
            "pid": running.pid,
            "log": str(running.log_path),
        }
        emit(ready, as_json=as_json, text=f"{running!r}; Ctrl-C stops")
        for _ in _wait_for_signal():
            if not running.is_running:
                msg = f"broker {region} exited: {running.log_tail()} (log: {running.log_path})"
                raise BrokerError(msg, region=region)


# -- drill ------------------------------------------------------------------------------


@sim.command("drill")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(["down", "blackhole", "dns_flip"]),
    help="Fault kind to drill (repeatable; default: down).",
)
@click.option("--trials", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--stability-window",
    "stability_window_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="The device's failback window in seconds (the library default is 60).",
)
@click.option(
    "--dr-jitter",
    "dr_jitter_s",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="The device's DR-mode jitter in seconds (dns_flip).",
)
@_broker_option
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep each kind's regions, logs and report here (default: a temporary folder).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def drill(
    faults: tuple[str, ...],
    trials: int,
    stability_window_s: float,
    dr_jitter_s: float,
    broker: str,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Drill a region outage: a one-device scenario of `iotdr sim run`, per fault kind.

    Each fault kind is a short scenario on the local regions (the door in
    front of each broker, control plane, shadows, DNS, health checker,
    replicator) with one device per trial, each the real agent over mTLS
    publishing numbered QoS 1 messages: the fault a few seconds after the
    devices connect, the heal once they have failed over, the end once they
    have failed back. Reports failover and failback times (p50/max over the
    trials) and messages lost; with --state-dir, each kind's full report is
    in STATE_DIR/KIND/report. Exit code 1 if a message was lost or a move
    did not happen in time.
    """
    from simulators._drill import DrillOptions, run_drill  # noqa: PLC0415

    options = DrillOptions(
        faults=cast("tuple[Any, ...]", faults or ("down",)),
        trials=trials,
        stability_window_s=stability_window_s,
        dr_jitter_s=dr_jitter_s,
        state_dir=state_dir,
        broker=cast('Literal["auto", "mosquitto", "amqtt"]', broker),
    )
    report = run_drill(options)
    lines = [
        f"{'fault':10} {'failover p50/max':>18} {'failback p50/max':>18} {'sent':>6} {'lost':>5}"
    ]
    for kind, result in report["results"].items():
        over, back = result["failover_s"], result["failback_s"]
        lines.append(
            f"{kind:10} {_pair(over):>18} {_pair(back):>18} {result['published']:>6} "
            f"{result['lost']:>5}"
        )
    emit(report, as_json=as_json, text="\n".join(lines))
    if any(r["lost"] or r["incomplete_trials"] for r in report["results"].values()):
        raise click.exceptions.Exit(1)


@sim.command("run")
@click.option(
    "--scenario",
    "scenario_name",
    default="region-outage",
    show_default=True,
    metavar="NAME|FILE",
    help="A built-in scenario (see `iotdr sim scenarios`) or a scenario YAML file.",
)
@click.option("--devices", type=click.IntRange(1), help="Fleet size (default: the scenario's own).")
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("iotdr-report"),
    show_default=True,
    help="Where report.json, report.md, timeline.csv and the plots go.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The fleet's randomness.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="Device-host processes (default: one per core).",
)
@_broker_option
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep keys, outboxes and logs here (default: a temporary folder, removed after).",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Run shard I of N of the fleet (from 0; shard 0 plays the region steps). "
    "Needs --regions or --target aws, and --start-at.",
)
@click.option(
    "--regions",
    "regions_dir",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="STATE_DIR",
    help="Attach to the local regions `iotdr sim regions up --state-dir STATE_DIR` runs.",
)
@click.option(
    "--start-at",
    type=float,
    metavar="EPOCH",
    help="Wall-clock t = 0 in seconds since the epoch, the same for every shard "
    "(e.g. $(date -d '+2 min' +%s)).",
)
@click.option(
    "--target",
    type=click.Choice(["local", "aws"]),
    default="local",
    show_default=True,
    help="local: local regions; aws: AWS IoT in a test account (device-side faults only).",
)
@click.option(
    "--target-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="--target aws: a TOML file with device_name, identities, ca, [endpoints], [route53].",
)
@click.option(
    "--identities",
    type=click.Path(path_type=Path, file_okay=False),
    help="--target aws: the directory with results.json.",
)
@click.option("--device-name", help="--target aws: the CNAME the devices resolve.")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="REGION=HOST",
    help="--target aws: a region's ATS endpoint, repeatable, the primary first.",
)
@click.option(
    "--ca",
    type=click.Path(path_type=Path, dir_okay=False),
    help="--target aws: Amazon Root CA 1 (PEM).",
)
@click.option(
    "--route53-zone",
    metavar="ID",
    help="--target aws: the hosted zone of the CNAME that dns steps flip.",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout.")
def run(
    scenario_name: str,
    devices: int | None,
    report_dir: Path,
    seed: int,
    processes: int | None,
    broker: str,
    state_dir: Path | None,
    shard: str | None,
    regions_dir: Path | None,
    start_at: float | None,
    target: str,
    target_file: Path | None,
    identities: Path | None,
    device_name: str | None,
    endpoints: tuple[str, ...],
    ca: Path | None,
    route53_zone: str | None,
    as_json: bool,
) -> None:
    """Drive a fleet of real device agents through a scenario of region outages.

    Starts local regions (the door in front of each broker, control plane,
    shadows, DNS, health checker), provisions the fleet in both regions,
    runs the replicator, starts the devices (each the real agent, over mTLS),
    plays the scenario's timeline, stops everything it started and writes the
    report. Exit code 1 when the verdict is FAIL (a device that did not move,
    a lost message, ...). With --regions it attaches to running regions
    instead; with --shard it runs its share of the fleet; with --target aws
    it drills a real AWS account.
    """
    from simulators._broker import mosquitto_binary  # noqa: PLC0415
    from simulators.fleet._driver import RunOptions, run_fleet  # noqa: PLC0415
    from simulators.fleet._live import LiveDisplay  # noqa: PLC0415
    from simulators.fleet._scenario import load_scenario, with_devices  # noqa: PLC0415
    from simulators.fleet._shard import parse_shard  # noqa: PLC0415

    aws_options = {
        "--target-file": target_file, "--identities": identities, "--device-name": device_name,
        "--endpoint": endpoints, "--ca": ca, "--route53-zone": route53_zone,
    }  # fmt: skip
    given = [name for name, value in aws_options.items() if value]
    if target != "aws" and given:
        msg = f"{', '.join(given)}: only with --target aws"
        raise click.UsageError(msg)
    scenario = load_scenario(scenario_name)
    local_fleet = target == "local" and regions_dir is None
    if devices is not None:
        scenario = with_devices(scenario, devices)
    elif (
        local_fleet
        and scenario.devices > _AMQTT_DEVICES
        and (broker == "amqtt" or (broker == "auto" and mosquitto_binary() is None))
    ):
        # The embedded broker is pure Python: measured, 1,000 devices did not even all
        # connect in 140 s on 2 cores, while mosquitto carries them with room to spare.
        why = "--broker amqtt" if broker == "amqtt" else "mosquitto is not installed"
        click.echo(
            f"iotdr: {why}: the embedded amqtt broker carries about {_AMQTT_DEVICES} devices "
            f"on this machine, so the run has {_AMQTT_DEVICES} instead of {scenario.devices} "
            "(--devices to choose; apt-get install mosquitto for the full fleet)",
            err=True,
        )
        scenario = with_devices(scenario, _AMQTT_DEVICES)
    options = RunOptions(
        scenario=scenario,
        report_dir=report_dir,
        seed=seed,
        processes=processes,
        state_dir=state_dir,
        broker=cast('Literal["auto", "mosquitto", "amqtt"]', broker),
        shard=parse_shard(shard) if shard is not None else None,
        regions=regions_dir,
        start_at=start_at,
        aws=_aws_target(aws_options) if target == "aws" else None,
    )
    with LiveDisplay(scenario.name) as display:
        report = run_fleet(
            dataclasses.replace(options, progress=display.update if display.enabled else None)
        )
    emit(report, as_json=as_json, text=_run_summary(report, report_dir))
    if not report.get("verdict", {}).get("ok", False):
        raise click.exceptions.Exit(1)


def _aws_target(options: dict[str, Any]) -> Any:
    """The AWS target of ``--target aws``: the target file's values under the options given."""
    from simulators.fleet._aws_target import load_target_file  # noqa: PLC0415

    endpoints: dict[str, str] = {}
    for item in options["--endpoint"]:
        region, sep, host = item.partition("=")
        if not sep or not region or not host:
            msg = f"--endpoint {item!r} is not REGION=HOST"
            raise click.BadParameter(msg)
        endpoints[region] = host
    route53 = {"hosted_zone_id": options["--route53-zone"]} if options["--route53-zone"] else None
    return load_target_file(
        options["--target-file"],
        identities=options["--identities"],
        device_name=options["--device-name"],
        endpoints=endpoints,
        ca=options["--ca"],
        route53=route53,
    )


def _run_summary(report: dict[str, Any], report_dir: Path) -> str:
    verdict = report.get("verdict", {})
    verdict_word = "PASS" if verdict.get("ok") else "FAIL"
    head = f"{verdict_word}: {report['scenario']}, {report['devices']} devices"
    lines = [f"{head}, {report['duration_s']:.0f} s"]
    lines += [f"  - {problem}" for problem in verdict.get("problems", [])]
    for kind in ("failover", "failback"):
        stats = report.get(kind, {})
        if stats.get("count"):
            lines.append(
                f"{kind:9} {stats['count']:>6} devices  p50 {stats['p50_s']:.2f} s  "
                f"p95 {stats['p95_s']:.2f} s  max {stats['max_s']:.2f} s"
            )
    messages = report.get("messages", {})
    lines.append(
        "messages  sent {sent}  delivered {delivered}  lost {lost}  duplicated {duplicated}".format(
            **{k: messages.get(k, 0) for k in ("sent", "delivered", "lost", "duplicated")}
        )
    )
    lines.append(f"report    {report_dir}/report.md (and report.json, timeline.csv, plots)")
    return "\n".join(lines)


@sim.command("scenarios")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def scenarios(as_json: bool) -> None:
    """List the built-in scenarios of `iotdr sim run`, one line each."""
    from simulators.fleet._scenario import builtin_scenarios  # noqa: PLC0415

    found = builtin_scenarios()
    rows = {
        name: {
            "description": s.description,
            "devices": s.devices,
            "duration_s": s.duration_s,
            "replication": s.replication,
        }
        for name, s in found.items()
    }
    width = max(len(name) for name in rows)
    text = "\n".join(
        f"{name:{width}}  {row['devices']:>5} devices {row['duration_s']:>5.0f} s  "
        f"{row['description']}"
        for name, row in rows.items()
    )
    emit(rows, as_json=as_json, text=text)


@sim.group("report")
def report_group() -> None:
    """Fleet run reports: merge the reports of a sharded run."""


@report_group.command("merge")
@click.argument(
    "directories", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False)
)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("iotdr-report"),
    show_default=True,
    help="Where the merged report goes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the merged report.json on stdout.")
def report_merge(directories: tuple[Path, ...], report_dir: Path, as_json: bool) -> None:
    """Merge the report directories of every shard (`sim run --shard I/N`) into one report.

    The shards' raw records are merged and the report built once, with the
    same schema, markdown and plots as one run of the whole fleet. Exit code
    1 when the merged verdict is FAIL.
    """
    from simulators.fleet._merge import merge_reports  # noqa: PLC0415

    report = merge_reports(list(directories), report_dir)
    emit(report, as_json=as_json, text=_run_summary(report, report_dir))
    if not report.get("verdict", {}).get("ok", False):
        raise click.exceptions.Exit(1)


def _pair(summary: dict[str, float | None]) -> str:
    if summary["p50"] is None:
        return "-"
    return f"{summary['p50']:.2f} / {summary['max']:.2f} s"


# -- regions ----------------------------------------------------------------------------


@sim.group()
def regions() -> None:
    """Local AWS IoT regions: brokers, shadows, control plane and DNS on loopback."""


_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("state"),
    show_default=True,
    help="Keys, configurations, logs, and regions.json while the regions run.",
)


@regions.command("up")
@_state_dir_option
@_broker_option
@click.option("--mqtt-port", default=1883, show_default=True, type=click.IntRange(0, 65535))
@click.option("--mqtts-port", default=8883, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data-port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The shadow services' iot-data HTTP API, on each region's IP.",
)
@click.option(
    "--control-plane-port", default=5000, show_default=True, type=click.IntRange(0, 65535)
)
@click.option("--dns-port", default=5353, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--quota",
    "quotas",
    multiple=True,
    help="API=TPS control-plane quota override, repeatable (e.g. CreateThing=5, default=50).",
)
@click.option(
    "--thing-type-delete-after",
    "thing_type_delete_after_s",
    metavar="SECONDS",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0, 1e9, max_open=True),
    help="How long a thing type must be deprecated before DeleteThingType deletes it (AWS: 300).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON object.")
def regions_up(
    state_dir: Path,
    broker: str,
    mqtt_port: int,
    mqtts_port: int,
    data_port: int,
    control_plane_port: int,
    dns_port: int,
    quotas: tuple[str, ...],
    thing_type_delete_after_s: float,
    as_json: bool,
) -> None:
    """Start the local regions (us-east-1 primary, us-west-2 secondary) until interrupted.

    Ports are the same on each region's own loopback IP (127.0.0.2, 127.0.0.3);
    0 picks free ones. Everything started is stopped on Ctrl-C or SIGTERM.
    """
    from simulators._regions import LocalRegions, RegionPorts  # noqa: PLC0415

    overrides: dict[str, float] = {}
    for item in quotas:
        api, sep, value = item.partition("=")
        try:
            overrides[api] = float(value)
        except ValueError:
            sep = ""
        if not sep or not api:
            msg = f"--quota {item!r} is not API=TPS, e.g. CreateThing=5"
            raise click.BadParameter(msg)
    local = LocalRegions(
        state_dir=state_dir,
        ports=RegionPorts(
            mqtt=mqtt_port,
            mqtts=mqtts_port,
            data=data_port,
            control_plane=control_plane_port,
            dns=dns_port,
        ),
        broker_kind=cast('Literal["auto", "mosquitto", "amqtt"]', broker),
        quotas=overrides or None,
        thing_type_delete_after_s=thing_type_delete_after_s,
    )
    with local:
        path = local.write_regions_file()
        try:
            endpoints = local.endpoints()
            text = "\n".join(
                [
                    *(
                        f"{name:10} {r['role']:9} mqtts {r['mqtts']:21} mqtt {r['mqtt']:21} "
                        f"data {r['data_url']}  ({r['broker']})"
                        for name, r in endpoints["regions"].items()
                    ),
                    f"control plane {endpoints['control_plane_url']}",
                    (
                        f"dns           {endpoints['dns']} (zone {endpoints['zone']}, devices "
                        f"resolve {endpoints['device_name']})"
                    ),
                    f"fleet CA      {endpoints['ca']}",
                    "Ctrl-C stops everything",
                ]
            )
            emit(endpoints, as_json=as_json, text=text)
            for _ in _wait_for_signal():
                local.write_regions_file()  # fresh health for `regions status`
        finally:
            path.unlink(missing_ok=True)


@regions.command("status")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def regions_status(state_dir: Path, as_json: bool) -> None:
    """Whether the local regions started from --state-dir answer. Exit 1 if a part does not."""
    from simulators._regions import probe_regions, read_regions_file  # noqa: PLC0415
    from simulators.controlplane import ControlPlaneAdmin  # noqa: PLC0415
    from simulators.gateway import GatewayAdmin  # noqa: PLC0415

    endpoints = read_regions_file(state_dir)
    health = probe_regions(endpoints)
    for region in endpoints.get("regions", {}).values():  # the doors' counters, live
        with contextlib.suppress(SimulatorError):
            region["gateway"] = GatewayAdmin(region["gateway_admin_url"]).status()
    result: dict[str, Any] = {**endpoints, "health": health}
    with contextlib.suppress(SimulatorError):
        result["control_plane"] = ControlPlaneAdmin(endpoints["control_plane_url"]).status()
    healthy = (
        health["running"]
        and health["control_plane"]
        and health["dns"]
        and all(all(v for v in parts.values()) for parts in health["regions"].values())
    )
    checker = endpoints.get("health_checker") or {}
    lines = [f"{'running' if healthy else 'NOT healthy'}: {state_dir}"]
    lines += [
        f"  {name:10} "
        + " ".join(f"{k}={'ok' if v else 'DOWN'}" for k, v in parts.items())
        + (
            f" checker={'healthy' if checker['regions'][name]['healthy'] else 'UNHEALTHY'}"
            if name in checker.get("regions", {})
            else ""
        )
        + _door_summary(endpoints["regions"][name].get("gateway"))
        for name, parts in health["regions"].items()
    ]
    lines.append(f"  {endpoints.get('device_name')} -> {health.get('cname')}")
    emit(result, as_json=as_json, text="\n".join(lines))
    if not healthy:
        raise click.exceptions.Exit(1)


def _door_summary(door: dict[str, Any] | None) -> str:
    if not door:
        return ""
    fault = door.get("fault", {})
    mode = fault.get("mode", fault) if isinstance(fault, dict) else fault
    live = door.get("connections", {}).get("live", 0)
    refused = sum(door.get("refused", {}).values())
    summary = f" door={mode} live={live} admitted={door.get('admitted', 0)} refused={refused}"
    # What the IoT policies refused or denied, by reason (policy_connect_denied, ...).
    policy = {k: v for k, v in sorted(door.get("policy", {}).items()) if v}
    if policy:
        summary += " " + " ".join(f"{reason}={n}" for reason, n in policy.items())
    return summary


# -- faults -----------------------------------------------------------------------------

_CONTROL_PLANE_MODES = {"control-plane-down": "http503", "control-plane-drop": "drop"}
_DOOR_MODES = ("down", "blackhole", "partial", "degraded")


@sim.command("fault")
@click.argument("region")
@click.argument(
    "mode", metavar="MODE", type=click.Choice([*_DOOR_MODES, *_CONTROL_PLANE_MODES, "up"])
)
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fault(region: str, mode: str, state_dir: Path, as_json: bool) -> None:
    r"""Inject a fault into REGION of the running local regions, or clear them all (up).

    \b
    Devices' side (the region's door):
      down       connects refused, live connections reset
      blackhole  silence: no more bytes, no RST; new connects time out
      partial    devices cannot get through; the health checker can
      degraded   added latency; new CONNECTs answered "server unavailable"
    Control plane:
      control-plane-down  every API call answered HTTP 503
      control-plane-drop  connections closed without an answer
    up clears both.
    """
    from simulators._regions import read_regions_file  # noqa: PLC0415
    from simulators.controlplane import ControlPlaneAdmin  # noqa: PLC0415
    from simulators.gateway import GatewayAdmin  # noqa: PLC0415

    endpoints = read_regions_file(state_dir)
    regions_running = endpoints.get("regions", {})
    if region not in regions_running:
        msg = f"unknown region {region!r} (running: {', '.join(regions_running)})"
        raise click.BadParameter(msg, param_hint="REGION")
    control = ControlPlaneAdmin(endpoints["control_plane_url"])
    door = GatewayAdmin(regions_running[region]["gateway_admin_url"])
    result: dict[str, Any] = {"region": region, "mode": mode}
    if mode in _CONTROL_PLANE_MODES:
        control.set_outage(region, cast("Any", _CONTROL_PLANE_MODES[mode]))
        result["control_plane"] = _CONTROL_PLANE_MODES[mode]
    elif mode in _DOOR_MODES:
        door.set_fault(mode)
        result["door"] = mode
    else:
        control.set_outage(region, "up")
        door.set_fault("up")
        result.update(control_plane="up", door="up")
    emit(result, as_json=as_json, text=f"{region}: {mode}")
