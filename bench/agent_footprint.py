"""Benchmark: what the agent costs a device, on each transport.

For ``paho`` and ``crt`` it runs ``iotdr agent run`` as its own process
against two local brokers (mosquitto when installed) and the DNS stand-in,
and reports, once connected:

- ``idle``: RSS (MiB) and CPU (% of one core) with no traffic but the
  agent's own probes, over ``--seconds``;
- ``busy``: the same while it publishes 10 QoS 1 messages a second
  (the daemon's heartbeat every 0.1 s, through the durable outbox);
- ``import_s``: the time to import what the daemon imports, in a fresh
  interpreter (the best of three);
- ``installed_mib``: the installed size of the minimal dependency set
  (device_agent, dnspython, paho-mqtt, click; plus awscrt for ``crt``);
- ``import_rss_mib``: where the memory goes before the agent runs: the RSS of
  a fresh interpreter after each group of imports, in the order the daemon's
  dependencies bring them (cumulative; a module two groups share counts in
  the first). ``idle`` minus the last figure is what running costs: the
  connection, TLS and SQLite at work (their code pages) and the agent's state.

The daemon runs the agent as installed: a copy of ``device_agent`` with its
bytecode compiled, as pip compiles it at install. A checkout run with
``PYTHONDONTWRITEBYTECODE`` (as in CI) has no ``__pycache__``, so the agent
would compile its modules at every start, which costs RSS (about 0.8 MiB
idle) that an installed agent never spends; ``--from-source`` measures that.

Prints one JSON object. Goal (issue 14): idle CPU near zero, RSS under 30 MB
with paho. Run by hand, never by the test suite:

    python -m bench.agent_footprint --seconds 20
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from simulators import DEFAULT_REGIONS, BrokerSpec, FleetPKI, TLSFiles, start_broker
from simulators.dns import ThreadedDNSServer, default_zone

ROOT = Path(__file__).resolve().parents[1]
_PAGE = 4096
_TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
_DISTRIBUTIONS = {
    "paho": ("dnspython", "paho-mqtt", "click"),
    "crt": ("dnspython", "paho-mqtt", "click", "awscrt"),
}
_IMPORTS = {
    "paho": "import device_agent.cli, device_agent._daemon, device_agent._paho",
    "crt": "import device_agent.cli, device_agent._daemon, device_agent._crt, awscrt.mqtt5",
}
# The daemon's imports in groups, in the order its dependencies bring them in.
_BASE_LAYERS = (
    (
        "stdlib: asyncio, ssl, sqlite3, json, logging, tomllib",
        "asyncio ssl sqlite3 json logging tomllib",
    ),
    ("click", "click"),
    ("paho's stdlib: urllib.request, http.client, email, uuid", "urllib.request uuid"),
    ("dnspython: dns.resolver (paho imports it when installed)", "dns.resolver dns.asyncresolver"),
    ("paho-mqtt", "paho.mqtt.client"),
)
_LAYERS = {
    "paho": (
        *_BASE_LAYERS,
        ("device_agent", "device_agent.cli device_agent._daemon device_agent._paho"),
    ),
    "crt": (
        *_BASE_LAYERS,
        ("awscrt", "awscrt.mqtt5"),
        ("device_agent", "device_agent.cli device_agent._daemon device_agent._crt"),
    ),
}
_LAYERS_CODE = """
import importlib, json, sys
def rss():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return round(int(line.split()[1]) / 1024, 1)
found = {"interpreter": rss()}
for name, modules in json.loads(sys.argv[1]):
    for module in modules.split():
        importlib.import_module(module)
    found[name] = rss()
print(json.dumps(found))
"""


def _config(
    state: Path, pki: FleetPKI, ports: dict[str, int], dns: ThreadedDNSServer, beat_s: float
) -> Path:
    device = pki.issue_device("footprint")
    endpoints = "\n".join(f'{r.name} = "{r.endpoint}:{ports[r.name]}"' for r in DEFAULT_REGIONS)
    heartbeat = f'heartbeat_topic = "dt/{{client_id}}/beat"\nheartbeat_interval_s = {beat_s}\n'
    path = state / f"agent-{beat_s}.toml"
    path.write_text(
        f"""
[identity]
client_id = "footprint"
cert = "{device.cert_path}"
key = "{device.key_path}"
ca = "{pki.ca_path}"

[discovery]
dns_server = "{dns.host}:{dns.port}"
endpoint_suffixes = ["iotdr.test"]

[discovery.endpoints]
{endpoints}

[outbox]
path = "{state / f"outbox-{beat_s}.db"}"
synchronous = "normal"

[agent]
status_path = "{state / "status.json"}"
{heartbeat if beat_s else ""}
"""
    )
    return path


def _stat(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of ``pid`` from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    rss = int(fields[21]) * _PAGE / 2**20
    return rss, cpu


def _installed_copy(state: Path) -> Path:
    """A folder holding ``device_agent`` as pip installs it: a copy with its bytecode compiled."""
    site = state / "site"
    package = site / "device_agent"
    shutil.copytree(ROOT / "device_agent", package, ignore=shutil.ignore_patterns("__pycache__"))
    if not compileall.compile_dir(package, quiet=1):
        msg = f"could not compile {package}"
        raise SystemExit(msg)
    # The copy must win over an editable install of the checkout (a finder after sys.path).
    code = "import device_agent; print(device_agent.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=site
    ).stdout.strip()
    if Path(found).parent != package:
        msg = f"the daemon would import device_agent from {found}, not from {package}"
        raise SystemExit(msg)
    return site


def _measure(
    config: Path, transport: str, seconds: float, status: Path, site: Path
) -> dict[str, float]:
    status.unlink(missing_ok=True)
    command = [sys.executable, "-m", "device_agent.cli", "--log-level", "error"]
    command += ["agent", "run", "--config", str(config), "--transport", transport]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=site)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if status.exists() and json.loads(status.read_text()).get("region"):
                break
            time.sleep(0.2)
        else:
            msg = f"the {transport} agent did not connect within 30 s"
            raise SystemExit(msg)
        time.sleep(2.0)  # past the first probes and subscriptions
        _, cpu_before = _stat(process.pid)
        started = time.monotonic()
        peak = 0.0
        while time.monotonic() - started < seconds:
            time.sleep(0.5)
            peak = max(peak, _stat(process.pid)[0])
        rss, cpu_after = _stat(process.pid)
        elapsed = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(20)
    return {
        "rss_mib": round(rss, 1),
        "rss_peak_mib": round(peak, 1),
        "cpu_percent": round(100 * (cpu_after - cpu_before) / elapsed, 2),
    }


def _import_s(transport: str, site: Path) -> float:
    code = f"import time; t = time.perf_counter(); {_IMPORTS[transport]}; "
    code += "print(time.perf_counter() - t)"
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=site
            ).stdout
        )
        for _ in range(3)
    ]
    return round(min(runs), 3)


def _import_rss(transport: str, site: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _LAYERS_CODE, json.dumps(_LAYERS[transport])],
        capture_output=True,
        text=True,
        check=True,
        cwd=site,
    )
    found: dict[str, float] = json.loads(done.stdout)
    return found


def _installed_mib(transport: str) -> float:
    total = sum(f.stat().st_size for f in (ROOT / "device_agent").rglob("*.py"))
    for name in _DISTRIBUTIONS[transport]:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        for file in files:
            path = Path(str(file.locate()))
            if path.is_file() and "__pycache__" not in path.parts:
                total += path.stat().st_size
    return round(total / 2**20, 1)


def main() -> None:
    """Run both transports and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each measurement's length")
    parser.add_argument("--transports", nargs="+", default=["paho", "crt"])
    parser.add_argument(
        "--from-source",
        action="store_true",
        help="run device_agent from this checkout as it is (without __pycache__ under "
        "PYTHONDONTWRITEBYTECODE, its modules are compiled at every start)",
    )
    args = parser.parse_args()
    report: dict[str, Any] = {"seconds": args.seconds, "python": sys.version.split()[0]}
    report["device_agent"] = "source tree" if args.from_source else "installed copy, compiled"
    with tempfile.TemporaryDirectory(prefix="iotdr-footprint-") as folder:
        state = Path(folder)
        site = ROOT if args.from_source else _installed_copy(state)
        pki = FleetPKI.create(state / "pki")
        brokers = []
        try:
            ports: dict[str, int] = {}
            for region in DEFAULT_REGIONS:
                server = pki.issue_server(
                    region.name, dns_names=[region.endpoint], ip_addresses=[region.host]
                )
                spec = BrokerSpec(
                    region=region.name,
                    state_dir=state,
                    host=region.host,
                    port=0,
                    tls_port=0,
                    tls=TLSFiles(
                        ca_path=pki.ca_path, cert_path=server.cert_path, key_path=server.key_path
                    ),
                )
                broker = start_broker(spec)
                brokers.append(broker)
                assert broker.tls_port is not None
                ports[region.name] = broker.tls_port
            report["broker"] = brokers[0].kind
            with ThreadedDNSServer(default_zone()) as dns:
                idle = _config(state, pki, ports, dns, 0.0)
                busy = _config(state, pki, ports, dns, 0.1)
                for transport in args.transports:
                    status = state / "status.json"
                    report[transport] = {
                        "idle": _measure(idle, transport, args.seconds, status, site),
                        "busy_10_per_s": _measure(busy, transport, args.seconds, status, site),
                        "import_s": _import_s(transport, site),
                        "installed_mib": _installed_mib(transport),
                        "import_rss_mib": _import_rss(transport, site),
                    }
        finally:
            for broker in brokers:
                broker.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
