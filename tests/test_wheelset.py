"""The wire format naming a trial's exact wheels, and the wheel server's address rules (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from envbisect.errors import InputError
from envbisect.wheelserver import ListenAddress, WheelServer, parse_listen_address
from envbisect.wheelset import WheelRef, WheelSet

SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4
BASE = "http://10.0.0.5:41234/tok3n/"


def test_a_wheel_set_survives_json() -> None:
    wheels = WheelSet(
        BASE,
        (
            WheelRef("pika-1.3.2-py3-none-any.whl", SHA_A),
            # A locally modified pika has the release's file name but other content.
            WheelRef("pika-1.3.2-py3-none-any.whl", SHA_B),
            WheelRef("zope.interface-8.7-cp311-cp311-manylinux_2_17_x86_64.whl", SHA_B),
        ),
    )
    sent = json.dumps(wheels.to_json())
    assert WheelSet.from_json(json.loads(sent)) == wheels
    assert json.loads(sent) == {
        "base_url": BASE,
        "wheels": [
            {"filename": "pika-1.3.2-py3-none-any.whl", "sha256": SHA_A},
            {"filename": "pika-1.3.2-py3-none-any.whl", "sha256": SHA_B},
            {
                "filename": "zope.interface-8.7-cp311-cp311-manylinux_2_17_x86_64.whl",
                "sha256": SHA_B,
            },
        ],
    }


def test_each_wheel_lives_under_its_digest() -> None:
    local = WheelRef("my_pkg-1.0+local-py3-none-any.whl", SHA_A)
    assert (
        WheelSet(BASE, (local,)).url(local) == f"{BASE}{SHA_A}/my_pkg-1.0%2Blocal-py3-none-any.whl"
    )


@pytest.mark.parametrize(
    ("filename", "sha256"),
    [
        ("pika-1.3.2.tar.gz", SHA_A),
        ("../pika-1.3.2-py3-none-any.whl", SHA_A),
        ("pika-1.3.2-py3-none-any.whl/x-1-py3-none-any.whl", SHA_A),
        ("pika-1.3.2-py3-none-any.whl", "A" * 64),
        ("pika-1.3.2-py3-none-any.whl", "a" * 63),
        ("pika-1.3.2-py3-none-any.whl", "sha256=" + SHA_A),
    ],
)
def test_a_wheel_ref_is_a_plain_wheel_name_and_a_sha256(filename: str, sha256: str) -> None:
    with pytest.raises(ValueError, match="wheel"):
        WheelRef(filename, sha256)


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"wheels": []},
        {"base_url": BASE},
        {"base_url": "file:///srv/wheels/", "wheels": []},
        {"base_url": "http://10.0.0.5:41234/tok3n", "wheels": []},
        {"base_url": BASE, "wheels": [{"filename": "x.tar.gz", "sha256": SHA_A}]},
        {"base_url": BASE, "wheels": [{"filename": "pika-1-py3-none-any.whl"}]},
        {"base_url": BASE, "wheels": "pika-1-py3-none-any.whl"},
    ],
    ids=["list", "no-base", "no-wheels", "file-url", "no-slash", "sdist", "no-sha", "str"],
)
def test_a_malformed_wheel_set_is_one_clear_error(data: Any) -> None:
    with pytest.raises(ValueError, match="wheel set"):
        WheelSet.from_json(data)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:0", ListenAddress("0.0.0.0", 0)),
        ("10.0.0.5:8731", ListenAddress("10.0.0.5", 8731)),
        ("[::]:8731", ListenAddress("::", 8731)),
        ("[fd00::2]:0", ListenAddress("fd00::2", 0)),
        ("coordinator.internal:8731", ListenAddress("coordinator.internal", 8731)),
    ],
)
def test_listen_addresses(text: str, address: ListenAddress) -> None:
    assert parse_listen_address(text) == address


@pytest.mark.parametrize("text", ["", "8731", ":8731", "host:", "host:http", "host:70000", "::1"])
def test_a_bad_listen_address_is_input_error(text: str) -> None:
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_listen_address(text)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_address_needs_the_address_agents_use(host: str) -> None:
    with pytest.raises(InputError, match="every address"):
        WheelServer(ListenAddress(host, 0))
    WheelServer(ListenAddress(host, 0), advertise_host="coordinator.internal")
