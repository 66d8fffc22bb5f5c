"""provision test's view of an OpenVPN client (provision/smoke/egress_checks.py): what it reads from the config and
from `ip route get`."""

from provision.smoke import egress_checks


def test_the_smoke_check_reads_device_and_routes_from_the_config() -> None:
    conf = "client\ndev tun-egress\nroute 10.79.0.0 255.255.255.0\nroute-ipv6 2001:db8::/64\nroute-nopull\n"
    assert egress_checks.parse_config(conf) == ("tun-egress", ["10.79.0.0", "2001:db8::"])


def test_the_device_a_route_goes_through() -> None:
    assert egress_checks.route_device("10.79.0.1 dev tun-egress src 10.78.0.2 uid 0 \n    cache \n") == "tun-egress"
    assert egress_checks.route_device("169.254.169.254 via 10.0.2.2 dev ens3 src 10.0.2.15") == "ens3"
    assert egress_checks.route_device("RTNETLINK answers: Network is unreachable") == ""
