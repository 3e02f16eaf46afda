"""The pure parts of bulk registration: the tool's template, input file and report lines;
the local control plane's reading of a template."""

from __future__ import annotations

import json

import pytest

from replicator.tools._bulk_registration import (
    input_file,
    parse_error_line,
    parse_result_line,
    registration_template,
)
from simulators.controlplane._registration import (
    TemplateError,
    fill,
    parse_template,
    policy_name_for,
)

THING = "arn:aws:iot:us-east-1:123456789012:thing/dev-0"
CERT = "arn:aws:iot:us-east-1:123456789012:cert/abc123"


def test_a_results_line_as_aws_writes_it_names_the_thing_and_its_certificate() -> None:
    line = json.dumps({"offset": 3, "response": {"CertificatePem": "PEM",
                       "ResourceArns": {"thing": THING, "certificate": CERT}}})  # fmt: skip
    found = parse_result_line(line)
    assert found is not None
    assert (found.offset, found.thing_name, found.certificate_id) == (3, "dev-0", "abc123")
    assert (found.certificate_arn, found.certificate_pem) == (CERT, "PEM")


def test_a_results_line_in_register_things_casing_is_read_too() -> None:
    line = json.dumps({"response": {"certificatePem": "P",
                       "resourceArns": {"thing": THING, "certificate": CERT}}})  # fmt: skip
    found = parse_result_line(line)
    assert found is not None
    assert (found.offset, found.thing_name) == (None, "dev-0")


@pytest.mark.parametrize(
    "line",
    ["", "not json", "[1]", '{"offset": 1}', '{"response": {"ResourceArns": {"thing": "x"}}}',
     json.dumps({"response": {"ResourceArns": {"thing": CERT, "certificate": THING}}})],
)  # fmt: skip
def test_a_line_that_names_no_thing_and_certificate_is_none(line: str) -> None:
    assert parse_result_line(line) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"offset": 1, "errorCode": "InvalidRequestException", "errorMessage": "bad CSR"}',
         (1, "InvalidRequestException: bad CSR")),
        ('{"offset": 2, "response": {"message": "no policy"}}', (2, "no policy")),
        ('{"offset": 0, "errorCode": "Throttled"}', (0, "Throttled")),
        ('{"offset": true, "what": 1}', (None, '{"offset": true, "what": 1}')),
        ("plain words", (None, "plain words")),
    ],
)  # fmt: skip
def test_an_errors_line_gives_its_offset_and_message(
    line: str, expected: tuple[int | None, str]
) -> None:
    assert parse_error_line(line) == expected


def test_a_blank_errors_line_is_none() -> None:
    assert parse_error_line("  \n") is None


def test_the_input_file_is_one_json_line_per_device() -> None:
    lines = input_file([("a", "CSR-A"), ("b", "CSR\nB")]).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"ThingName": "a", "CSR": "CSR-A"}, {"ThingName": "b", "CSR": "CSR\nB"}]  # fmt: skip


def test_the_tools_template_is_read_by_the_local_control_plane() -> None:
    template = parse_template(registration_template("fleet"))
    assert template.policy == {"PolicyName": "fleet"}
    values = {"ThingName": "t-1", "CSR": "C"}
    assert fill(dict(template.thing), values, template.parameters) == {"ThingName": "t-1"}
    assert fill(dict(template.certificate), values, template.parameters) == {
        "CertificateSigningRequest": "C", "Status": "ACTIVE"}  # fmt: skip


def test_fill_takes_a_parameters_default_and_refuses_a_missing_value() -> None:
    defaults = {"Location": {"Type": "String", "Default": "WA"}, "CSR": {"Type": "String"}}
    assert fill({"a": [{"Ref": "Location"}]}, {}, defaults) == {"a": ["WA"]}
    with pytest.raises(TemplateError, match="CSR"):
        fill({"Ref": "CSR"}, {}, defaults)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "not JSON"),
        ("{}", "no Resources"),
        ('{"Resources": {"t": {"Type": "AWS::IoT::Thing"}}}', "needs an AWS::IoT::Thing"),
        ('{"Resources": {"t": {"Type": "AWS::S3::Bucket"}}}', "not supported"),
        (json.dumps({"Resources": {"t": {"Type": "AWS::IoT::Thing"}, "c": {
            "Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x"}}}}),
         "no CertificateSigningRequest"),
    ],
)  # fmt: skip
def test_a_template_that_cannot_be_used_is_refused_naming_why(body: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template(body)


def test_an_inline_policy_gets_a_stable_name_from_its_document() -> None:
    assert policy_name_for('{"a": 1}') == policy_name_for('{"a": 1}')
    assert policy_name_for('{"a": 1}') != policy_name_for('{"a": 2}')
