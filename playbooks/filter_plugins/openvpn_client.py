"""Filters of the openvpn_client role: which routes go through the tunnel, and which destinations are refused.

Pure functions (the standard library's ipaddress, no netaddr), used by the role and by `provision render`
(the root's ansible.cfg names this directory). Destinations are CIDRs or host names; names are resolved by the
caller (on the host, with getent) or by openvpn_client_resolve here, on the controller.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never through a tunnel: the cloud's metadata services and link-local ranges (a VPN that captures them cuts the
# host off from its credentials and its own network settings), loopback, and multicast.
NEVER: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "link-local, where clouds serve metadata (169.254.169.254)"),
    ("100.100.100.200/32", "Aliyun's metadata service"),
    ("fd00:ec2::254/128", "AWS's IPv6 metadata service"),
    ("fe80::/10", "IPv6 link-local"),
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
)


def network(text: str) -> Network | None:
    """The CIDR (or single address) a destination names, or None for a host name."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def names(destinations: list[str], remote: str = "") -> list[str]:
    """The host names among the destinations (and the server), in order, each once: what needs resolving."""
    found: list[str] = []
    for item in [*destinations, remote]:
        if item and network(item) is None and item not in found:
            found.append(item)
    return found


def parse_getent(output: str) -> list[str]:
    """The addresses in `getent ahosts NAME` output (one line per address and socket type), each once."""
    found: list[str] = []
    for line in output.splitlines():
        fields = line.split()
        if fields and network(fields[0]) is not None and fields[0] not in found:
            found.append(fields[0])
    return found


def resolve(hosts: list[str]) -> dict[str, list[str]]:
    """Resolve names here, on the controller: name -> addresses (empty when the name does not resolve)."""
    result: dict[str, list[str]] = {}
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror:
            infos = []
        result[host] = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return result


def plan(
    destinations: list[str],
    addresses: dict[str, list[str]],
    remote: str = "",
    controller: str = "",
) -> dict[str, Any]:
    """Routes for the tunnel and the problems that refuse the whole set.

    routes4: [{network, netmask}] for openvpn's `route`; routes6: CIDRs for `route-ipv6` (so IPv6 to a routed
    destination takes the tunnel too, or goes nowhere, instead of around it); problems: one sentence per refused
    destination (it covers a NEVER range, the controller's address, or the VPN server) or unresolved name.
    """
    problems: list[str] = []
    routed: list[Network] = []
    for item in destinations:
        given = network(item)
        if given is not None:
            found = [given]
        elif addresses.get(item):
            # Sorted: a resolver that rotates its answers must not change the config from one run to the next.
            found = sorted((ipaddress.ip_network(a) for a in addresses[item]), key=lambda n: (n.version, n))
        else:
            problems.append(f"{item} does not resolve")
            continue
        for net in found:
            via = "" if given is not None else f" ({item})"
            reason = _refusal(net, remote, addresses, controller)
            if reason:
                problems.append(f"{net}{via} {reason}")
            elif net not in routed:
                routed.append(net)
    return {
        "routes4": [
            {"network": str(net.network_address), "netmask": str(net.netmask)} for net in routed if net.version == 4
        ],
        "routes6": [str(net) for net in routed if net.version == 6],
        "problems": problems,
    }


def _refusal(net: Network, remote: str, addresses: dict[str, list[str]], controller: str) -> str:
    for cidr, what in NEVER:
        never = ipaddress.ip_network(cidr)
        if net.version == never.version and net.overlaps(never):
            return f"covers {cidr} ({what})"
    if controller and _contains(net, controller):
        return f"covers {controller}, the address the controller is connected from (its SSH session would go too)"
    server = [remote] if network(remote) is not None else addresses.get(remote, [])
    for address in server:
        if _contains(net, address):
            return f"covers {address}, the VPN server {remote} itself (the tunnel would carry its own packets)"
    return ""


def _contains(net: Network, address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.version == net.version and ip in net


def config_set(files: list[str], stage: str, directory: str, conf: str, inline: bool) -> list[dict[str, str]]:
    """The live_config set: the credential files (unless inline), then the config; each staged under `stage`."""
    credentials = [] if inline else [{"staged": f"{stage}/{name}", "dest": f"{directory}/{name}"} for name in files]
    return [{**item, "mode": "0600"} for item in [*credentials, {"staged": f"{stage}/client.conf", "dest": conf}]]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "openvpn_client_names": names,
            "openvpn_client_parse_getent": parse_getent,
            "openvpn_client_resolve": resolve,
            "openvpn_client_plan": plan,
            "openvpn_client_set": config_set,
        }
