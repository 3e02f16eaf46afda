"""``import device_agent``: no awscrt or paho loaded; both transports exported lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import device_agent
from device_agent._crt import CrtTransport, CrtTransportFactory
from device_agent._paho import PahoTransport


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: this one may have imported awscrt for other tests.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_importing_the_package_does_not_import_awscrt() -> None:
    done = _run(
        """
        import sys
        import device_agent
        assert "awscrt" not in sys.modules, sorted(m for m in sys.modules if "awscrt" in m)
        assert "device_agent._crt" not in sys.modules
        """
    )
    assert done.returncode == 0, done.stderr


def test_the_package_imports_without_awscrt_installed() -> None:
    # ``None`` in sys.modules makes every ``import awscrt...`` fail as if it were absent.
    done = _run(
        """
        import sys
        for name in ("awscrt", "awscrt.mqtt5", "awscrt.io", "awscrt.http", "awsiot"):
            sys.modules[name] = None
        import device_agent
        from device_agent import FailoverClient, PahoTransport
        assert device_agent.CrtTransport.__name__ == "CrtTransport"
        assert "CrtTransport" in device_agent.__all__
        """
    )
    assert done.returncode == 0, done.stderr


def test_importing_the_package_does_not_import_paho() -> None:
    # A daemon on the CRT transport loads the package, the CLI, the daemon, the CRT
    # transport and the prober: paho-mqtt (2.7 MiB) is not among them.
    done = _run(
        """
        import sys
        import device_agent
        assert "device_agent._paho" not in sys.modules
        import device_agent.cli, device_agent._daemon, device_agent._crt, device_agent._probe
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "paho")
        assert not loaded, loaded
        assert "device_agent._paho" not in sys.modules
        assert device_agent.PahoTransport.__name__ == "PahoTransport"
        assert "paho.mqtt.client" in sys.modules  # loaded on first use
        """
    )
    assert done.returncode == 0, done.stderr


def test_the_package_imports_without_paho_installed() -> None:
    done = _run(
        """
        import sys
        for name in ("paho", "paho.mqtt", "paho.mqtt.client"):
            sys.modules[name] = None
        import device_agent
        from device_agent import FailoverClient, Prober
        assert "PahoTransport" in device_agent.__all__
        """
    )
    assert done.returncode == 0, done.stderr


def test_paho_transport_is_exported_on_first_use() -> None:
    assert device_agent.PahoTransport is PahoTransport


def test_crt_transport_is_exported_on_first_use() -> None:
    assert device_agent.CrtTransport is CrtTransport
    assert device_agent.CrtTransportFactory is CrtTransportFactory
    assert set(device_agent.__all__) <= set(dir(device_agent)) | {
        "CrtTransport",
        "CrtTransportFactory",
        "PahoTransport",
    }


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = device_agent.NoSuchThing


def test_the_daemon_path_leaves_statistics_out() -> None:
    # statistics brings fractions and decimal: 0.4 MiB of a device's memory for one number.
    done = _run(
        """
        import sys
        import device_agent.cli, device_agent._daemon, device_agent._paho
        loaded = {"statistics", "fractions", "decimal"} & set(sys.modules)
        assert not loaded, loaded
        """
    )
    assert done.returncode == 0, done.stderr


def test_iotdr_agent_run_loads_the_agent_alone() -> None:
    # `iotdr agent run` as the console script runs it: the root group finds `agent`
    # through its entry points and must leave the other groups (replicator, tools,
    # sim), the extras and the agent's other commands unloaded. A missing config
    # file ends the command (exit 2) after it has imported the daemon.
    done = _run(
        """
        import sys
        from device_agent.cli import main
        code = main(["agent", "run", "--config", "/nonexistent/agent.toml"])
        assert code == 2, code
        assert "device_agent._daemon" in sys.modules
        others = {
            "replicator", "simulators", "boto3", "botocore", "s3transfer", "moto",
            "cryptography", "yaml", "rich", "awscrt", "awsiot", "statistics",
        }
        agent_only = {
            "device_agent._crt", "device_agent._check", "device_agent._pubsub",
            "device_agent.testing", "device_agent._memory",
        }
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in others or m in agent_only)
        assert not loaded, loaded
        """
    )
    assert done.returncode == 0, done.stderr
