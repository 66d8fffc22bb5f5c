"""The openvpn_client role's routing decisions (playbooks/filter_plugins/openvpn_client.py), as a table of cases."""

from __future__ import annotations

from typing import Any

import pytest
from library_modules import load

from provision import paths

filters = load(paths.PLAYBOOKS / "filter_plugins" / "openvpn_client.py")

SERVER = "vpn.example.net"
ADDRESSES = {
    "api.example.com": ["203.0.113.7", "2001:db8::7"],
    SERVER: ["198.51.100.1"],
    "metadata.example": ["169.254.169.254"],
}


def plan(destinations: list[str], controller: str = "10.0.2.2", remote: str = SERVER) -> dict[str, Any]:
    result: dict[str, Any] = filters.plan(destinations, ADDRESSES, remote, controller)
    return result


def test_cidrs_and_names_become_routes_for_both_families() -> None:
    result = plan(["10.79.0.0/24", "api.example.com", "192.0.2.9", "2001:db8:1::/48"])
    assert result["problems"] == []
    assert result["routes4"] == [
        {"network": "10.79.0.0", "netmask": "255.255.255.0"},
        {"network": "203.0.113.7", "netmask": "255.255.255.255"},
        {"network": "192.0.2.9", "netmask": "255.255.255.255"},
    ]
    # The name's IPv6 address takes the tunnel too: left out, IPv6 to it would go around the tunnel.
    assert result["routes6"] == ["2001:db8::7/128", "2001:db8:1::/48"]


def test_a_destination_given_twice_is_routed_once() -> None:
    assert plan(["203.0.113.7", "api.example.com"])["routes4"] == [
        {"network": "203.0.113.7", "netmask": "255.255.255.255"}
    ]


@pytest.mark.parametrize(
    ("destination", "says"),
    [
        ("169.254.169.254", "covers 169.254.0.0/16 (link-local, where clouds serve metadata"),
        ("169.254.169.254/32", "covers 169.254.0.0/16"),
        ("0.0.0.0/0", "covers 169.254.0.0/16"),
        ("100.100.100.200", "covers 100.100.100.200/32 (Aliyun's metadata service)"),
        ("100.64.0.0/10", "covers 100.100.100.200/32"),
        ("fe80::1", "covers fe80::/10 (IPv6 link-local)"),
        ("::/0", "covers fd00:ec2::254/128"),
        ("127.0.0.1", "covers 127.0.0.0/8 (loopback)"),
        ("10.0.0.0/8", "covers 10.0.2.2, the address the controller is connected from"),
        ("198.51.100.0/24", "covers 198.51.100.1, the VPN server vpn.example.net itself"),
        ("metadata.example", "169.254.169.254/32 (metadata.example) covers 169.254.0.0/16"),
        ("nowhere.example", "nowhere.example does not resolve"),
    ],
)
def test_refused_destinations_are_named_with_the_reason(destination: str, says: str) -> None:
    result = plan(["10.79.0.0/24", destination])
    assert len(result["problems"]) == 1 and says in result["problems"][0], result["problems"]
    assert result["routes4"] == [{"network": "10.79.0.0", "netmask": "255.255.255.0"}]


def test_a_server_given_as_an_address_is_protected_too() -> None:
    assert "the VPN server 10.77.0.2 itself" in plan(["10.77.0.0/24"], remote="10.77.0.2")["problems"][0]


def test_without_a_controller_address_nothing_is_refused_for_it() -> None:
    assert plan(["10.0.0.0/8"], controller="")["problems"] == []


def test_names_lists_the_names_to_resolve_once_each() -> None:
    assert filters.names(["10.0.0.0/8", "a.example", "2001:db8::1", "a.example"], SERVER) == ["a.example", SERVER]
    assert filters.names(["a.example"], "198.51.100.1") == ["a.example"]


def test_getent_output_gives_each_address_once() -> None:
    output = (
        "203.0.113.7     STREAM api.example.com\n203.0.113.7     DGRAM\n203.0.113.7     RAW\n"
        "2001:db8::7     STREAM\n2001:db8::7     DGRAM\n"
    )
    assert filters.parse_getent(output) == ["203.0.113.7", "2001:db8::7"]
    assert filters.parse_getent("") == []


def test_resolve_on_the_controller_uses_its_resolver() -> None:
    assert "127.0.0.1" in filters.resolve(["localhost"])["localhost"]  # /etc/hosts, no network


def test_the_set_holds_the_credential_files_unless_inline_then_the_config() -> None:
    conf = {"staged": "/tmp/s/client.conf", "dest": "/etc/openvpn/client/e.conf", "mode": "0600"}
    assert filters.config_set(["ca.crt"], "/tmp/s", "/etc/openvpn/client/e", conf["dest"], True) == [conf]
    assert filters.config_set(["ca.crt"], "/tmp/s", "/etc/openvpn/client/e", conf["dest"], False) == [
        {"staged": "/tmp/s/ca.crt", "dest": "/etc/openvpn/client/e/ca.crt", "mode": "0600"},
        conf,
    ]
