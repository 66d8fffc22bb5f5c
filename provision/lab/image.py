"""The lab's Debian 12 base image, built from Debian packages with mmdebstrap and cached by its recipe.

The recipe (packages, suite, the setup script below) is hashed; an image is rebuilt only when that hash
changes.  The result is a qcow2 root filesystem without partition table or bootloader, plus the kernel and
initrd taken out of it, which qemu boots directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from provision import paths
from provision.errors import EnvironmentProblem
from provision.lab.qemu import QEMU_IMG, require_tool

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What a fresh cloud VM has: a kernel, systemd, sshd, python3 and sudo.  qemu-guest-agent is the lab's
# back door for personalising clones; e2fsprogs and udev are on every cloud image.
PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus", "kmod", "e2fsprogs",
    "passwd", "openssh-server", "python3", "python3-apt", "sudo", "ca-certificates", "iproute2", "qemu-guest-agent",
    "procps", "less", "netbase",
)  # fmt: skip
ROOT_SIZE = "12G"
# The lab's login user, as on Debian's cloud images: passwordless sudo, key installed per clone.
LAB_USER = "debian"

SETUP_SCRIPT = r"""#!/bin/sh
set -eu
echo lab > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tlab\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
printf '/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n' > /etc/fstab
# Match only the VM's own NIC: a Type=ether match would take over Docker's veth interfaces.
mkdir -p /etc/systemd/network
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > /etc/systemd/network/10-lab.network
printf 'nameserver 10.0.2.3\n' > /etc/resolv.conf
systemctl enable systemd-networkd ssh
systemctl mask systemd-networkd-wait-online.service
useradd --create-home --shell /bin/bash --groups sudo __USER__
passwd --lock __USER__
printf '__USER__ ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/90-lab-user
chmod 0440 /etc/sudoers.d/90-lab-user
passwd --lock root
cat > /usr/local/sbin/lab-personalize <<'EOS'
#!/bin/sh
# Run by `provision lab up` through the guest agent on every new clone: a clone must not share the
# template's identity (host keys, machine-id, hostname) nor its clock.
set -eu
name=$1 epoch=$2 pubkey=$3 machine_id=$4
date -s "@$epoch" >/dev/null
# Host keys arrive on stdin as a tar made on the host: generating RSA keys under TCG takes seconds.
rm -f /etc/ssh/ssh_host_*
tar -x -C /etc/ssh
echo "$name" > /etc/hostname
hostname "$name"
sed -i "s/^127.0.1.1.*/127.0.1.1\t$name/" /etc/hosts
# The machine-id comes from the host too: clones resumed from one RAM snapshot share the guest's random state,
# so two made at once could draw the same one.
rm -f /var/lib/dbus/machine-id
printf '%s\n' "$machine_id" > /etc/machine-id
systemctl restart ssh systemd-journald
# The data disk is new: refresh udev's by-id links, which still name the template's disk.
udevadm trigger --action=change --subsystem-match=block
udevadm settle --timeout=10
home=$(getent passwd __USER__ | cut -d: -f6)
install -d -m 0700 -o __USER__ -g __USER__ "$home/.ssh"
printf '%s\n' "$pubkey" > "$home/.ssh/authorized_keys"
chown __USER__:__USER__ "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
EOS
chmod 0755 /usr/local/sbin/lab-personalize
""".replace("__USER__", LAB_USER)


OCI_SETUP = r"""
mkdir -p /etc/iptables
note="See the Oracle-Provided Images section in the Oracle Cloud Infrastructure documentation"
note="$note for security impact of modifying or removing this rule"
c="-m comment --comment \"$note\""
cat > /etc/iptables/rules.v4 <<EOR
# CLOUD_IMG: This file was created/modified by the Cloud Image build process
# iptables configuration for Oracle Cloud Infrastructure (the lab's copy of the Ubuntu image's rules)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:InstanceServices - [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p udp -m udp --sport 123 -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
-A OUTPUT -d 169.254.0.0/16 -j InstanceServices
-A InstanceServices -d 169.254.0.2/32 -p tcp -m owner --uid-owner 0 -m tcp --dport 3260 $c -j ACCEPT
-A InstanceServices -d 169.254.2.0/24 -p tcp -m owner --uid-owner 0 -m tcp --dport 3260 $c -j ACCEPT
-A InstanceServices -d 169.254.0.2/32 -p tcp -m tcp --dport 3260 $c -j REJECT --reject-with tcp-reset
-A InstanceServices -d 169.254.2.0/24 -p tcp -m tcp --dport 3260 $c -j REJECT --reject-with tcp-reset
COMMIT
EOR
systemctl enable netfilter-persistent
"""


SELINUX_SETUP = r"""
sed -i 's/^SELINUX=.*/SELINUX=permissive/' /etc/selinux/config
# Label the whole tree now: mkfs.ext4 -d copies the security.selinux attributes into the image.
setfiles -F -e /proc -e /sys -e /dev -e /run /etc/selinux/default/contexts/files/file_contexts /
# What lab-personalize writes on each clone must carry the policy's labels too: host keys and the lab key
# (or sshd could not read them once a test switches to enforcing), and the new machine-id, hostname and hosts
# (systemd-networkd, denied the machine-id, would get no address after an enforcing reboot).
printf '%s\n' 'restorecon -R /etc/ssh "$home/.ssh" /etc/machine-id /etc/hostname /etc/hosts' \
    >> /usr/local/sbin/lab-personalize
"""


@dataclass(frozen=True)
class Flavor:
    """A variant of the lab image: what it adds to the plain one.

    Packages are installed and the setup script run at image build time on the controller (native speed,
    minutes faster than inside a TCG guest); `append` adds kernel arguments.  Every flavor keeps the plain
    image's device layout, so clones of all flavors can run side by side in one lab.
    """

    packages: tuple[str, ...] = ()
    setup: str = ""
    append: str = ""
    # A playbook of ours (under playbooks/) run natively against the image's root with Ansible's chroot
    # connection, with these extra variables (JSON values): what takes minutes on the host, and far longer in a
    # TCG guest, happens once, at build time.  The playbook and the roles it names are part of the recipe.
    playbook: str = ""
    playbook_roles: tuple[str, ...] = ()
    playbook_vars: tuple[tuple[str, object], ...] = ()
    # vCPUs of its VMs where PROVISION_LAB_CPUS does not say (0: the lab's default, one).  Not part of the image.
    cpus: int = 0


# The driver the nvidia flavor has, as the nvidia role installs it (tests/integration/test_6_nvidia.py runs the
# role again with the same settings on a VM of that flavor): Debian 12's own, from non-free, at the version
# bookworm-security has (535.309.01 in November 2026; a rebuild after it moves on fails loudly, as it should).
NVIDIA_VARS: tuple[tuple[str, object], ...] = (
    ("nvidia_install_without_gpu", True),
    ("nvidia_driver_source", "distribution"),
    ("nvidia_driver_branch", "535"),
    ("nvidia_driver_version", "535.309.01"),
    ("nvidia_kernel_modules", "proprietary"),
    ("nvidia_hold_packages", True),
    ("nvidia_container_toolkit", "never"),
)

# What monitoring_agent and monitoring_server install from Debian (packaged_daemon_package of each).
MONITORING_PACKAGES = (
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "prometheus-nginx-exporter",
)
# The docker flavor's daemons that only the roles start: each package's unit has the package's name.
DOCKER_DISABLED_DAEMONS = ("nginx", *MONITORING_PACKAGES)

# Each flavor is built and cached on first use only.
FLAVORS: dict[str, Flavor] = {
    "plain": Flavor(),
    # OCI's Ubuntu images: host iptables restored at boot by netfilter-persistent, INPUT ending in REJECT,
    # and the InstanceServices chain that keeps the iSCSI boot volume endpoints root-only.
    "oci": Flavor(packages=("iptables", "netfilter-persistent", "iptables-persistent"), setup=OCI_SETUP),
    # SELinux with Debian's reference policy, labelled at build time (no relabel boot), booted permissive
    # (Debian's default; the guest agent that personalises clones must keep working); tests switch to
    # enforcing through the selinux role.  nginx is there to show the upstream denial and its fix.
    "selinux": Flavor(
        packages=(
            "selinux-basics",
            "selinux-policy-default",
            "auditd",
            "policycoreutils",
            "policycoreutils-python-utils",
            "python3-selinux",
            "python3-semanage",
            "nginx-light",
        ),
        setup=SELINUX_SETUP,
        append="security=selinux selinux=1",
    ),
    # Docker present as on a cloud image with Docker preinstalled (installing docker.io under TCG takes ~5 min);
    # the container_runtime role still configures it.  docker.service is enabled by the package.  apparmor:
    # Debian's kernel enables AppArmor, and dockerd cannot start containers without apparmor_parser.
    # The monitoring roles' packages too (unpacking Prometheus alone takes minutes under TCG), and nginx (a minute
    # of the serving host's first run; the nginx role installs it on a plain VM in test_8b_relay), installed and
    # disabled, so nothing of theirs runs until the roles configure and start it.
    # Two vCPUs: the serving host runs Prometheus, its exporters, two replicas, nginx and the tests' load client at
    # once, and each scrape must finish within its timeout; with one, test_5a's targets went down under the suite.
    "docker": Flavor(
        packages=("docker.io", "apparmor", *DOCKER_DISABLED_DAEMONS),
        setup="".join(f"systemctl disable {daemon}.service\n" for daemon in DOCKER_DISABLED_DAEMONS),
        cpus=2,
    ),
    # The NVIDIA driver built by DKMS for the image's kernel, nouveau blacklisted and the initramfs rebuilt, by
    # the nvidia role itself (nvidia_install_without_gpu) run in a chroot at native speed: compiling the module
    # in a TCG guest would take most of the suite's budget.  The kernel is the image's, not the builder's.
    "nvidia": Flavor(
        playbook="nvidia.yml",
        playbook_roles=("nvidia",),
        playbook_vars=(
            *NVIDIA_VARS,
            ("nvidia_debian_mirror", MIRROR),
            ("nvidia_debian_security_mirror", SECURITY_MIRROR),
        ),
    ),
}


@dataclass(frozen=True)
class BaseImage:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "root.qcow2"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def root_tar(self) -> Path:
        """The plain image's root as a tar, unpacked by each flavor's build (only the plain image keeps one)."""
        return self.directory / "root.tar"

    def exists(self) -> bool:
        return all(p.exists() for p in (self.disk, self.kernel, self.initrd, self.directory / "recipe.json"))


def recipe(flavor: str = "plain") -> dict:
    """What an image is made of; its hash names the cached image. A flavor names the plain image it starts from
    (its root, unpacked) and what it adds, so a change to the plain recipe rebuilds every flavor too."""
    extra = FLAVORS[flavor]
    if flavor == "plain":
        return {
            "version": 2,  # 2: the root is kept as a tar, for the flavors
            "suite": SUITE,
            "mirrors": [MIRROR, SECURITY_MIRROR],
            "packages": list(PACKAGES),
            "root_size": ROOT_SIZE,
            "setup": SETUP_SCRIPT,
        }
    base = {
        "version": 2,
        "from": f"plain-{recipe_hash('plain')}",
        "flavor": flavor,
        "packages": list(extra.packages),
        "setup": extra.setup,
    }
    if extra.playbook:
        base |= {
            "playbook": extra.playbook,
            "playbook_vars": dict(extra.playbook_vars),
            "playbook_sources": _tree_hash(
                [paths.PLAYBOOKS / extra.playbook, *(paths.ROLES / r for r in extra.playbook_roles)]
            ),
        }
    return base


def _tree_hash(roots: list[Path]) -> str:
    """A hash of the files under these paths (names and contents): a changed role rebuilds the flavor."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".md":
                digest.update(str(path.relative_to(paths.PLAYBOOKS)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def recipe_hash(flavor: str = "plain") -> str:
    return hashlib.sha256(json.dumps(recipe(flavor), sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def building(target: Path) -> Iterator[None]:
    """Hold the build lock of a cached artefact: one build at a time, a second builder waits and then finds it
    built (the test suite builds flavors in the background while the first tests run)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_base_image(cache_dir: Path, log: Callable[[str], None], flavor: str = "plain") -> BaseImage:
    """Return the cached image for the flavor's current recipe, building it first if needed (~2-3 min)."""
    name = "debian12" if flavor == "plain" else f"debian12-{flavor}"
    image = BaseImage(cache_dir / "images" / f"{name}-{recipe_hash(flavor)}")
    if image.exists():
        return image
    with building(image.directory):
        if image.exists():  # built meanwhile by another process
            return image
        _build_base_image(image, log, flavor)
    return image


# The plain root's tar, written and unpacked with the same options: numeric owners and extended attributes as they
# are, so a flavor's root starts as exactly the plain one.
_TAR = ("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*")


def _build_base_image(image: BaseImage, log: Callable[[str], None], flavor: str) -> None:
    require_tool("mkfs.ext4", "e2fsprogs")
    require_tool(QEMU_IMG, "qemu-utils")
    # A flavor starts from the plain image's root, built first (it is the session lab's image anyway): unpacking
    # it and installing a few packages natively takes seconds where a bootstrap of its own took minutes.
    plain = None if flavor == "plain" else ensure_base_image(image.directory.parent.parent, log, "plain")
    log(f"building the lab's Debian 12 {flavor} image (recipe {recipe_hash(flavor)}); this takes a few minutes once")
    image.directory.parent.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned_builds(image.directory.parent)
    with tempfile.TemporaryDirectory(prefix="build-", dir=image.directory.parent) as tmp:
        work = Path(tmp)
        (work / "builder.pid").write_text(f"{os.getpid()}\n")
        rootfs = work / "rootfs"
        staged = ["root.qcow2", "vmlinuz", "initrd.img", "recipe.json"]
        if plain is None:
            _bootstrap(rootfs, work / "setup.sh")
            _run([*_TAR, "-C", str(rootfs), "-cf", str(work / "root.tar"), "."], "tar")
            staged.append("root.tar")
        else:
            rootfs.mkdir()
            _run([*_TAR, "-C", str(rootfs), "-xf", str(plain.root_tar)], "unpacking the plain image's root")
            _add_flavor(rootfs, FLAVORS[flavor])
        if FLAVORS[flavor].playbook:
            log(f"running playbooks/{FLAVORS[flavor].playbook} in the image's root (Ansible's chroot connection)")
            _run_playbook_in_chroot(rootfs, FLAVORS[flavor], work / "playbook.log")
        boot = rootfs / "boot"
        shutil.copyfile(_only(boot.glob("vmlinuz-*")), work / "vmlinuz")
        shutil.copyfile(_only(boot.glob("initrd.img-*")), work / "initrd.img")
        raw = work / "root.raw"
        _run(["mkfs.ext4", "-q", "-L", "root", "-d", str(rootfs), str(raw), ROOT_SIZE], "mkfs.ext4")
        _run([QEMU_IMG, "convert", "-q", "-O", "qcow2", str(raw), str(work / "root.qcow2")], "qemu-img convert")
        (work / "recipe.json").write_text(json.dumps(recipe(flavor), indent=2, sort_keys=True))
        staging = work / "image"
        staging.mkdir()
        for name in staged:
            (work / name).rename(staging / name)
        (staging / "root.qcow2").chmod(0o444)  # the base of every overlay: never written again
        staging.rename(image.directory)
    log(f"lab image ready: {image.directory}")


def _bootstrap(rootfs: Path, script: Path) -> None:
    """The plain image's root: Debian from its packages with mmdebstrap, and the lab's setup script run in it."""
    require_tool("mmdebstrap", "mmdebstrap")
    script.write_text(SETUP_SCRIPT)
    sources = [
        f"deb {MIRROR} {SUITE} main",
        f"deb {MIRROR} {SUITE}-updates main",
        f"deb {SECURITY_MIRROR} {SUITE}-security main",
    ]
    _run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=apt",
            "--include=" + ",".join(PACKAGES),
            # Keep the package lists: a fresh cloud VM has them and `apt-get update` costs ~30 s under TCG.
            "--skip=cleanup/apt/lists",
            f"--customize-hook=upload {script} /root/lab-setup.sh",
            '--customize-hook=chroot "$1" sh /root/lab-setup.sh',
            '--customize-hook=rm -f "$1/root/lab-setup.sh"',
            SUITE,
            str(rootfs),
            *sources,
        ],
        "mmdebstrap",
    )


def _add_flavor(rootfs: Path, flavor: Flavor) -> None:
    """Install the flavor's packages in the unpacked plain root and run its setup script, natively in a chroot.
    No service starts there (policy-rc.d says no, as mmdebstrap's own installs do); the package lists are
    refreshed first (the plain image's may be older than the archive) and left, as on a fresh cloud VM."""
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    script = rootfs / "root/lab-flavor.sh"
    script.write_text("#!/bin/sh\nset -eu\n" + flavor.setup)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    try:
        with _chroot_mounts(rootfs):
            if flavor.packages:
                _run(["chroot", str(rootfs), "apt-get", "-q", "update"], "apt-get update in the image's root", env)
                install = ["apt-get", "-q", "-y", "--no-install-recommends", "install", *flavor.packages]
                _run(["chroot", str(rootfs), *install], "apt-get install in the image's root", env)
                _run(["chroot", str(rootfs), "apt-get", "clean"], "apt-get clean in the image's root", env)
            _run(["chroot", str(rootfs), "sh", "/root/lab-flavor.sh"], "the flavor's setup script", env)
    finally:
        policy.unlink(missing_ok=True)
        script.unlink(missing_ok=True)


# The device nodes a chroot gets (as mmdebstrap gives its own): never the builder's /dev bound in, which a build
# killed before its unmount would leave mounted inside the cache, for the next `rm -r` to empty the host's /dev.
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))


@contextlib.contextmanager
def _chroot_mounts(rootfs: Path) -> Iterator[None]:
    """/proc, /sys (read-only) and a /dev of its own inside the root (DKMS and update-initramfs want them) and the
    builder's resolver (the image's own points at qemu's), all undone afterwards."""
    resolv = rootfs / "etc/resolv.conf"
    original = resolv.read_bytes()
    resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
    mounted: list[Path] = []
    dev = rootfs / "dev"
    try:
        for args, target in (
            (["-t", "proc", "proc"], "proc"),
            (["-t", "sysfs", "-o", "ro", "sysfs"], "sys"),
            (["-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs"], "dev"),
        ):
            _run(["mount", *args, str(rootfs / target)], f"mount /{target} in the image's root")
            mounted.append(rootfs / target)
        for name, major, minor in _DEVICES:
            os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(dev / name, 0o666)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):  # fmt: skip
            os.symlink(target, dev / name)
        (dev / "pts").mkdir()
        _run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", str(dev / "pts")], "mount /dev/pts")
        mounted.append(dev / "pts")
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(point)], check=False)
        resolv.write_bytes(original)


def _sweep_abandoned_builds(images: Path) -> None:
    """Remove the work directories of builds whose process is gone (killed before it cleaned up): unmount what a
    chroot left mounted under one first, and never cross into another file system while removing."""
    for work in images.glob("build-*"):
        try:
            pid = int((work / "builder.pid").read_text())
            os.kill(pid, 0)
            continue  # still building
        except (OSError, ValueError):
            pass
        inside = str(work.resolve()) + "/"
        points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for point in sorted((p for p in points if p.startswith(inside)), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def _run_playbook_in_chroot(rootfs: Path, flavor: Flavor, log_path: Path) -> None:
    """Run the flavor's playbook against the root with community.general.chroot (as root, on this machine)."""
    kernel = _only((rootfs / "lib/modules").iterdir()).name
    extra = {
        **dict(flavor.playbook_vars),
        "nvidia_kernel": kernel,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(paths.ANSIBLE_CFG),
        "ANSIBLE_CACHE_PLUGIN": "memory",
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_NOCOLOR": "1",
    }
    ansible_playbook = str(Path(sys.executable).parent / "ansible-playbook")
    argv = [ansible_playbook, "-i", f"{rootfs},", "-c", "community.general.chroot", "-e", json.dumps(extra)]
    with _chroot_mounts(rootfs), open(log_path, "w") as log:
        proc = subprocess.run(
            [*argv, str(paths.PLAYBOOKS / flavor.playbook)], stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-25:])
        raise EnvironmentProblem(
            f"lab image: {flavor.playbook} in the image's root failed (exit {proc.returncode}):\n{tail}"
        )


def _only(paths: object) -> Path:
    found = sorted(paths)  # type: ignore[call-overload]
    if len(found) != 1:
        raise EnvironmentProblem(f"lab image: expected one kernel/initrd, found {[str(p) for p in found]}")
    return found[0]


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise EnvironmentProblem(f"lab image: {what} failed (exit {proc.returncode}):\n{tail}")
