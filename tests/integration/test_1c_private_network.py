"""The lab's private segment: every lab VM has a second NIC with its own MAC and address (the inventory's
private_address), and VMs reach each other by those addresses, each seen from its own, as in a cloud VPC.

Runs on the session lab (lab1, lab2) and changes nothing on them.
"""

from __future__ import annotations

import yaml
from labtools import SESSION_HOSTS, Lab

# Answers each connection with the address it came from, once (a background job on the listening VM).
ECHO_PEER = (
    "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind((sys.argv[1], 7707)); s.listen(); s.settimeout(120); c, a = s.accept(); c.sendall(a[0].encode()); c.close()"
)
ASK_PEER = (
    "import socket, sys, time\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        c = socket.create_connection((sys.argv[1], 7707), timeout=10); break\n"
    "    except ConnectionRefusedError: time.sleep(0.2)\n"
    "print(c.recv(100).decode())\n"
)


def private_addresses(lab: Lab) -> dict[str, str]:
    hosts = yaml.safe_load((lab.inventory / "hosts.yml").read_text())["all"]["children"]["lab"]["hosts"]
    return {name: hosts[name]["private_address"] for name in SESSION_HOSTS}


def test_the_inventory_records_each_host_s_own_private_address(lab: Lab) -> None:
    addresses = private_addresses(lab)
    assert addresses == {"lab1": "10.77.0.1", "lab2": "10.77.0.2"}
    for host, address in addresses.items():
        shown = lab.sh(host, f"ip -o -4 address show to {address}/32")
        assert f"inet {address}/24" in shown, f"{host}: {shown}"


def test_each_clone_has_its_own_mac_on_the_segment(lab: Lab) -> None:
    macs = {}
    for host, address in private_addresses(lab).items():
        device = lab.sh(host, f"ip -o -4 address show to {address}/32").split()[1]
        macs[host] = lab.sh(host, f"cat /sys/class/net/{device}/address").strip()
    assert macs == {"lab1": "52:54:00:77:00:01", "lab2": "52:54:00:77:00:02"}


def test_hosts_reach_each_other_by_private_address_seen_from_their_own(lab: Lab) -> None:
    """Through a forwarded port every connection arrives from qemu's 10.0.2.2; on the segment from the peer."""
    addresses = private_addresses(lab)
    lab.sh("lab2", f"nohup python3 -c '{ECHO_PEER}' {addresses['lab2']} >/dev/null 2>&1 &")
    seen = lab.sh("lab1", f"python3 - {addresses['lab2']}", stdin=ASK_PEER).strip()
    assert seen == addresses["lab1"]
    # The other way, to lab1's sshd (the image has no ping): its banner over bash's /dev/tcp.
    banner = lab.sh("lab2", f"timeout 30 bash -c 'exec 3<>/dev/tcp/{addresses['lab1']}/22; head -c 8 <&3'")
    assert banner.startswith("SSH-2.0-"), banner


def test_the_segment_stays_on_the_loopback_interface(lab: Lab) -> None:
    """qemu's multicast socket joins its group on lo only (localaddr=127.0.0.1): no frame leaves this machine."""
    group = "01004DEF"  # 239.77.0.1, as /proc/net/igmp writes it
    devices, device = [], ""
    with open("/proc/net/igmp") as igmp:
        for line in igmp:
            if not line[0].isspace() and not line.startswith("Idx"):
                device = line.split()[1]
            elif line.split()[:1] == [group]:
                devices.append(device)
    assert devices and set(devices) == {"lo"}, devices
