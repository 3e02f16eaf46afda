"""The replicator of a fleet run, as a process of its own (what a DR deployment runs).

:class:`FleetReplicator` starts ``iotdr replicator run --failback auto``
between a scenario's first two regions, wherever they are described: the
endpoints of :meth:`simulators._regions.LocalRegions.endpoints`, or the
``regions.json`` of a running ``iotdr sim regions up`` (the same shape). It
stops it by PID, and reads its lag from its metrics endpoint. Its background
reconcile pass is off (``--anti-entropy-interval 0``): the fleet provisioned
both regions itself; the full failback pass after the primary returns runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from simulators.fleet._scenario import Scenario

__all__ = ["FleetReplicator", "spawn_service", "stop_process"]

logger = logging.getLogger(__name__)

_LAG_METRIC = "iotdr_replicator_queue_oldest_pending_seconds "


def spawn_service(command: list[str], state: Path, log_name: str) -> subprocess.Popen[bytes]:
    """Start one of our services in a session of its own, its output to ``state/log_name``.

    AWS credentials are fake and the configuration files empty: the services
    talk to the local regions only.
    """
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with (state / log_name).open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own command
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a service finishes what is in flight), SIGKILL after 15 s; our own only."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class FleetReplicator:
    """``iotdr replicator run`` between the scenario's first two regions, unless replication is off.

    Args:
        scenario: its regions (primary first) and replication mode.
        state: where the journal and the log go.
        endpoints: where the regions are (called at each start).
    """

    def __init__(
        self, scenario: Scenario, state: Path, endpoints: Callable[[], dict[str, Any]]
    ) -> None:
        self.scenario = scenario
        self.state = state
        self.endpoints = endpoints
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __repr__(self) -> str:
        running = self.process is not None and self.process.poll() is None
        return f"FleetReplicator({'running' if running else 'stopped'}, port={self.port})"

    def start(self) -> None:
        """Start it (nothing when replication is off or it runs already)."""
        from simulators._broker import free_port  # noqa: PLC0415

        if self.scenario.replication == "off" or (
            self.process is not None and self.process.poll() is None
        ):
            return
        endpoints = self.endpoints()
        regions = endpoints["regions"]
        primary, secondary = self.scenario.regions[0], self.scenario.regions[1]
        control = endpoints["control_plane_url"]
        self.port = free_port("127.0.0.1")
        mode = "jitr" if self.scenario.replication == "jitr" else "complete"
        command = [
            sys.executable, "-m", "device_agent.cli", "replicator", "run",
            "--primary-region", primary, "--secondary-region", secondary,
            "--primary-endpoint-url", control, "--secondary-endpoint-url", control,
            "--primary-data-endpoint-url", regions[primary]["data_url"],
            "--secondary-data-endpoint-url", regions[secondary]["data_url"],
            "--mode", mode, "--feed", regions[primary]["mqtt"],
            # What a DR deployment runs: what devices change in the secondary during an
            # outage (shadows, JITR registrations) is copied back, so both regions converge.
            "--failback", "auto", "--failback-feed", regions[secondary]["mqtt"],
            "--feed-client-id", "iotdr-fleet-replicator",
            # The fleet provisions both regions itself before t = 0: the background
            # pass a fresh journal starts with would read every device in both regions
            # to find nothing to do, and on one machine take the CPU the devices need
            # (a fifth of the control plane's quota, about 0.5 core at 20,000 devices).
            "--anti-entropy-interval", "0",
            "--journal", str(self.state / "replicator.sqlite"),
            "--listen", f"127.0.0.1:{self.port}", "--json",
        ]  # fmt: skip
        self.process = spawn_service(command, self.state, "replicator.log")

    def stop(self) -> None:
        """Stop it (see :func:`stop_process`)."""
        process, self.process = self.process, None
        stop_process(process)

    def lag(self) -> float | None:
        """The oldest pending change's age in seconds (None: not running or not answering)."""
        if self.process is None or self.process.poll() is not None:
            return None
        url = f"http://127.0.0.1:{self.port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(_LAG_METRIC):
                with contextlib.suppress(ValueError, IndexError):
                    return float(line.split()[1])
        return None
