"""What the openvpn_client role promises, as functions that list problems: the client runs, every route its config
names goes through the tunnel device, and the metadata services do not.

The routes and the device come from the live config on the host (what the role wrote), not from templating the
inventory again.
"""

from collections.abc import Callable
from typing import Any

# Must keep their normal route whatever the tunnel carries: the clouds' metadata services.
METADATA = ("169.254.169.254", "100.100.100.200")

Note = Callable[[str], None]


def parse_config(text: str) -> tuple[str, list[str]]:
    """(device, the first address of each route) from an OpenVPN client config."""
    device, addresses = "", []
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["dev"] and len(fields) > 1:
            device = fields[1]
        elif fields[:1] == ["route"] and len(fields) > 1:
            addresses.append(fields[1])
        elif fields[:1] == ["route-ipv6"] and len(fields) > 1:
            addresses.append(fields[1].split("/")[0])
    return device, addresses


def route_device(output: str) -> str:
    """The device `ip route get` names ("10.79.0.1 dev tun-egress src ...")."""
    fields = output.split()
    return fields[fields.index("dev") + 1] if "dev" in fields[:-1] else ""


def openvpn_client_problems(host: Any, name: str, note: Note) -> list[str]:
    if not name:
        note("openvpn_client_remote is not set: the openvpn_client role leaves this host alone")
        return []
    unit, conf = f"openvpn-client@{name}.service", f"/etc/openvpn/client/{name}.conf"
    with host.sudo():
        read = host.run(f"cat {conf}")
    if read.rc != 0:
        return [f"{conf} cannot be read: {read.stderr.strip()[:200]}"]
    device, addresses = parse_config(read.stdout)

    def routed_via(address: str) -> str:
        return route_device(host.run(f"ip route get {address}").stdout)

    problems = []
    service = host.service(unit)
    if not service.is_running:
        problems.append(f"{unit} is not running")
    if not service.is_enabled:
        problems.append(f"{unit} is not enabled (it would not start at boot)")
    for address in addresses:
        via = routed_via(address)
        if via != device:
            problems.append(f"{address} routes via {via or 'nothing'}, not through the tunnel {device}")
    for address in METADATA:
        if routed_via(address) == device:
            problems.append(f"{address} (metadata) routes through the tunnel {device}")
    return problems
