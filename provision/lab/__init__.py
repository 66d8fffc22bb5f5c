"""Local throwaway hosts for trying and testing provision: qemu VMs that look like a fresh cloud VM.

Each VM has systemd, sshd, python3, sudo, a blank second disk at /dev/vdb (the Aliyun layout) and an SSH
port forwarded on 127.0.0.1.  Starting VMs is fast because clones resume from a saved, already-booted
template instead of booting; each clone then gets its own host keys, machine-id, hostname and clock through
the qemu guest agent.  A second NIC puts every VM on the lab's private segment (10.77.0.0/24, like a cloud VPC:
hosts reach each other by their own addresses), configured per clone, so images and templates stay as they are.
The image and the template are cached on disk and rebuilt only when their recipe changes; the per-lab state
(keys, known_hosts, overlays, pid files) lives in a state directory that `lab down` removes.

Where things are:
  hosts.py      the public API (up, down, restart, status, ssh_argv) and the hosts' start and personalising
  state.py      the per-lab state directory and the shared cache (LabDirs, dirs), the lab's SSH key, the hosts'
                private addresses
  template.py   the saved, booted template VM clones resume from, and whether KVM or TCG runs it
  inventory.py  the inventory `lab up` writes
  image.py      the cached root filesystem images, one per flavor (demo_image.py: the demo server's image)
  qemu.py       one qemu process, its QMP monitor and guest agent
  aptcache.py   the package cache the lab's hosts use as their mirror
"""

from provision.lab.hosts import DEFAULT_BASE_PORT, down, prepare, restart, ssh_argv, ssh_options, status, up
from provision.lab.inventory import INVENTORY_HEADER
from provision.lab.state import LabDirs, LabHost, LabHostStatus, Log, dirs

__all__ = [
    "DEFAULT_BASE_PORT",
    "INVENTORY_HEADER",
    "LabDirs",
    "LabHost",
    "LabHostStatus",
    "Log",
    "dirs",
    "down",
    "prepare",
    "restart",
    "ssh_argv",
    "ssh_options",
    "status",
    "up",
]
