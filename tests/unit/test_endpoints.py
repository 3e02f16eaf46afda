"""Region names from endpoint host names, and the ``REGION=HOST[:PORT]`` syntax."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent._endpoints import Endpoint, looks_like_region, parse_endpoint, region_of
from device_agent._errors import ConfigError, DeviceAgentError

# -- region_of --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("abc123-ats.iot.us-east-1.amazonaws.com", "us-east-1"),
        ("a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com", "eu-central-1"),
        ("abc123-ats.iot.ap-southeast-2.amazonaws.com", "ap-southeast-2"),
        ("abc123.ats.iot.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("abc123-ats.iot.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("abc123-ats.iot.us-isob-east-1.sc2s.sgov.gov", "us-isob-east-1"),
        ("abc123-ats.iot.eusc-de-east-1.amazonaws.eu", "eusc-de-east-1"),
        ("iot.us-west-2.amazonaws.com", "us-west-2"),  # the control plane: `iot` first
        ("local-ats.iot.us-east-1.iotdr.test", "us-east-1"),
        ("local-ats.iot.us-west-2.iotdr.test", "us-west-2"),
        ("broker.iot.eu-west-3.example.com", "eu-west-3"),
    ],
)
def test_region_from_endpoint_names(host: str, region: str) -> None:
    assert region_of(host) == region


@pytest.mark.parametrize(
    "host",
    [
        "ABC123-ATS.IOT.US-EAST-1.AMAZONAWS.COM",
        "abc123-ats.iot.us-east-1.amazonaws.com.",
        "Local-ATS.iot.US-East-1.iotdr.test.",
        "  local-ats.iot.us-east-1.iotdr.test ",
    ],
)
def test_case_trailing_dot_and_spaces_do_not_matter(host: str) -> None:
    assert region_of(host) == "us-east-1"


@pytest.mark.parametrize(
    "host",
    [
        "",
        ".",
        "iot.example.com",
        "localhost",
        "127.0.0.2",
        "::1",
        "abc123-ats.iot.amazonaws.com",
        "abc-ats.iot.us-east-1",  # the region is the last label: no domain after it
        "abc-ats.iot.us-east-1.",
        "abc-ats.xiot.us-east-1.amazonaws.com",  # `iot` must be a whole label
        "abc-ats.iot.useast1.amazonaws.com",
        "abc-ats.iot.us-east.amazonaws.com",
        "abc-ats.iot.us-east-1a.amazonaws.com",  # an availability zone, not a region
        "abc-ats.iot.1-east-1.amazonaws.com",
        "data.iot-fips.us-east-1.amazonaws.com",  # not the iot.<region>. form
        "abc-ats.iot..us-east-1.amazonaws.com",
    ],
)
def test_names_without_a_region(host: str) -> None:
    assert region_of(host) is None


def test_known_endpoints_come_first() -> None:
    known = {
        "us-east-1": Endpoint("us-east-1", "mqtt-east.example.com"),
        "us-west-2": Endpoint("us-west-2", "10.0.0.7", 8884),
        # a host whose name says another region: the configuration wins
        "eu-west-1": Endpoint("eu-west-1", "abc-ats.iot.eu-central-1.amazonaws.com"),
    }
    assert region_of("mqtt-east.example.com", known) == "us-east-1"
    assert region_of("MQTT-East.Example.com.", known) == "us-east-1"
    assert region_of("10.0.0.7", known) == "us-west-2"
    assert region_of("abc-ats.iot.eu-central-1.amazonaws.com", known) == "eu-west-1"
    # not in the map: the name is read as usual, whether or not the map has the region
    assert region_of("other-ats.iot.ap-south-1.amazonaws.com", known) == "ap-south-1"
    assert region_of("mqtt-west.example.com", known) is None
    assert region_of("mqtt-east.example.com", {}) is None


@pytest.mark.parametrize(
    "text",
    ["us-east-1", "eu-central-1", "us-gov-west-1", "ap-southeast-2", "cn-north-1", "il-central-1"],
)
def test_looks_like_region(text: str) -> None:
    assert looks_like_region(text)


@pytest.mark.parametrize("text", ["", "us-east", "US-EAST-1", "us-east-1 ", "mars-1", "primary"])
def test_does_not_look_like_region(text: str) -> None:
    assert not looks_like_region(text)


@given(st.text())
def test_region_of_never_raises(host: str) -> None:
    region = region_of(host)
    assert region is None or looks_like_region(region)


@given(
    st.text(),
    st.dictionaries(
        st.sampled_from(["us-east-1", "us-west-2", "eu-west-1"]),
        st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True).filter(lambda h: not h.endswith(".")),
    ),
)
def test_region_of_with_a_map_never_raises(host: str, hosts: dict[str, str]) -> None:
    known = {region: Endpoint(region, h) for region, h in hosts.items()}
    region_of(host, known)


@given(
    st.from_regex(r"[a-z0-9]{1,20}-ats", fullmatch=True),
    st.from_regex(
        r"(us|eu|ap|ca|sa|me|af|il|cn)-(east|west|north|south|central)-[1-9]", fullmatch=True
    ),
    st.sampled_from(["amazonaws.com", "amazonaws.com.cn", "iotdr.test", "example.org"]),
)
def test_endpoint_names_round_trip(prefix: str, region: str, domain: str) -> None:
    assert region_of(f"{prefix}.iot.{region}.{domain}") == region


# -- Endpoint ---------------------------------------------------------------------------


def test_endpoint_str() -> None:
    assert str(Endpoint("us-east-1", "abc-ats.iot.us-east-1.amazonaws.com")) == (
        "abc-ats.iot.us-east-1.amazonaws.com:8883"
    )
    assert str(Endpoint("us-east-1", "127.0.0.2", 1883)) == "127.0.0.2:1883"
    assert str(Endpoint("us-east-1", "2001:db8::1", 443)) == "[2001:db8::1]:443"


@pytest.mark.parametrize(
    ("region", "host", "port"),
    [
        ("", "example.com", 8883),
        ("us-east-1", "", 8883),
        ("us-east-1", "example.com.", 8883),
        ("us-east-1", "exa mple.com", 8883),
        ("us-east-1", "example.com", 0),
        ("us-east-1", "example.com", 65536),
        ("us-east-1", "example.com", True),
    ],
)
def test_endpoint_rejects_bad_values(region: str, host: str, port: int) -> None:
    with pytest.raises(ConfigError):
        Endpoint(region, host, port)


# -- parse_endpoint ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "us-east-1=abc-ats.iot.us-east-1.amazonaws.com",
            Endpoint("us-east-1", "abc-ats.iot.us-east-1.amazonaws.com", 8883),
        ),
        (
            "us-west-2=local-ats.iot.us-west-2.iotdr.test:18883",
            Endpoint("us-west-2", "local-ats.iot.us-west-2.iotdr.test", 18883),
        ),
        (" eu-west-1 = Broker.Example.COM. ", Endpoint("eu-west-1", "broker.example.com", 8883)),
        ("us-east-1=127.0.0.2:1883", Endpoint("us-east-1", "127.0.0.2", 1883)),
        ("us-east-1=[::1]:8884", Endpoint("us-east-1", "::1", 8884)),
        ("us-east-1=[2001:db8::1]", Endpoint("us-east-1", "2001:db8::1", 8883)),
        ("us-east-1=localhost:65535", Endpoint("us-east-1", "localhost", 65535)),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


def test_parse_endpoint_default_port() -> None:
    assert parse_endpoint("us-east-1=broker.example.com", default_port=1883).port == 1883
    assert parse_endpoint("us-east-1=broker.example.com:8883", default_port=1883).port == 8883


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc-ats.iot.us-east-1.amazonaws.com", "expected REGION=HOST[:PORT]"),
        ("", "expected REGION=HOST[:PORT]"),
        ("=broker.example.com", "region before '='"),
        ("us east=broker.example.com", "region before '='"),
        ("us-east-1=", "host is empty"),
        ("us-east-1=:8883", "host is empty"),
        ("us-east-1=broker.example.com:", "port ''"),
        ("us-east-1=broker.example.com:http", "port 'http'"),
        ("us-east-1=broker.example.com:0", "port '0'"),
        ("us-east-1=broker.example.com:65536", "port '65536'"),
        ("us-east-1=broker.example.com:-1", "port '-1'"),
        ("us-east-1=broker.example.com:١٢", "port"),  # non-ASCII digits
        ("us-east-1=broker.example.com:88 83", "port"),
        ("us-east-1=2001:db8::1", "brackets"),
        ("us-east-1=[2001:db8::1", "without ']'"),
        ("us-east-1=[2001:db8::1]8883", "':PORT' after ']'"),
        ("us-east-1=[broker.example.com]:8883", "only an IPv6 address"),
        ("us-east-1=bro ker.example.com", "not a valid host name"),
        ("us-east-1=broker..example.com", "not a valid host name"),
        ("us-east-1=-broker.example.com", "not a valid host name"),
        ("us-east-1=" + "a" * 64 + ".example.com", "not a valid host name"),
        ("us-east-1=" + ".".join(["a" * 60] * 5), "not a valid host name"),
        ("us-east-1=broker_1.example.com", "not a valid host name"),
    ],
)
def test_parse_endpoint_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        parse_endpoint(text)
    assert isinstance(caught.value, DeviceAgentError)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


@given(st.text())
def test_parse_endpoint_raises_only_config_error(text: str) -> None:
    try:
        endpoint = parse_endpoint(text)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert parse_endpoint(f"{endpoint.region}={endpoint}") == endpoint
        return
    assert "\n" not in message
