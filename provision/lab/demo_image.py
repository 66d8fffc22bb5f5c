"""The demo server's container image, made without any registry: a Debian rootfs tarball for `docker import`.

mmdebstrap extracts Debian's python3.11 and its standard library with their dependencies (no shell, no apt:
the server needs neither), adds provision/demo_server.py as /usr/local/bin/provision-demo-server, the users
`USER nobody` needs, bytecode for the modules the server imports, trims documentation and locales, and writes
a tar.  The tar is cached by a hash of its recipe (the server's source included), and the image tag is that
hash, so a changed server is a new image and an unchanged one is never imported twice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision import demo_server
from provision.lab.image import MIRROR, SECURITY_MIRROR, SUITE, _run, building
from provision.lab.qemu import require_tool

NAME = "provision-demo"
SERVER_PATH = "/usr/local/bin/provision-demo-server"
CONTAINER_PORT = 8000
# Extracted, not installed (mmdebstrap's "extract" variant): no maintainer script runs, so no shell or dpkg is
# needed in the image. The essential set (74 MiB) took 19 s to copy and 36 s to `docker import` under TCG in the
# suite's serving module (s39); this one is 41 MiB (alone: copy 7.7 -> 4.9 s, import 11.1 -> 5.9 s) and builds in
# seconds instead of ~100.
PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib")
# Run from the build host on the unpacked root ("$1"): documentation, locales, iconv modules and python's test
# suite, which the server never uses; then the python3 name of the ENTRYPOINT, and the users of `USER nobody`.
TRIM = " ".join(
    [
        'cd "$1" && rm -rf usr/share/doc usr/share/man usr/share/info usr/share/locale var/cache/apt var/lib/apt',
        "usr/lib/x86_64-linux-gnu/gconv usr/lib/python3.11/test usr/lib/python3.11/pydoc_data",
        "&& ln -s python3.11 usr/bin/python3",
        "&& printf 'root:x:0:0:root:/root:/usr/sbin/nologin\\n' >etc/passwd",
        "&& printf 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\\n' >>etc/passwd",
        "&& printf 'root:x:0:\\nnogroup:x:65534:\\n' >etc/group",
    ]
)
# The container runs as nobody, who cannot write to /usr: it leaves no bytecode, so without any each replica's start
# compiled the modules the server imports again (2.3 s against 0.6 s of emulated CPU in a lab VM). Importing them
# once here, as --help does, writes theirs (and only theirs).
BYTECODE = f'env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$1" /usr/bin/python3.11 {SERVER_PATH} --help >/dev/null'
# docker import --change lines: what a Dockerfile would have said.
CHANGES = (
    f'ENTRYPOINT ["python3", "-u", "{SERVER_PATH}"]',
    f"EXPOSE {CONTAINER_PORT}",
    "USER nobody",
)


@dataclass(frozen=True)
class DemoImage:
    archive: Path
    name: str  # repository:tag

    def inventory_vars(self) -> dict[str, object]:
        """The variables that make container_runtime import this image and inference run it."""
        return {
            "container_runtime_images": [
                {"name": self.name, "archive": str(self.archive), "format": "rootfs", "changes": list(CHANGES)}
            ],
            "inference_image": self.name,
            "inference_container_port": CONTAINER_PORT,
            "inference_args": ["--port", str(CONTAINER_PORT), "--model", "demo"],
        }


def recipe() -> dict:
    return {
        "version": 2,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "trim": TRIM,
        "bytecode": BYTECODE,
        "changes": list(CHANGES),
        "server": hashlib.sha256(Path(demo_server.__file__).read_bytes()).hexdigest(),
    }


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def ensure_demo_image(cache_dir: Path, log: Callable[[str], None]) -> DemoImage:
    """The cached rootfs tarball for the current recipe, built first if needed (seconds)."""
    tag = recipe_hash()
    image = DemoImage(cache_dir / "demo-images" / f"{NAME}-{tag}.tar", f"{NAME}:{tag}")
    if image.archive.exists():
        return image
    with building(image.archive):
        if not image.archive.exists():  # built meanwhile by another process
            _build(image, log)
    return image


def _build(image: DemoImage, log: Callable[[str], None]) -> None:
    require_tool("mmdebstrap", "mmdebstrap")
    log(f"building the demo server image {image.name}")
    image.archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=image.archive.parent) as tmp:
        partial = Path(tmp) / "rootfs.tar"
        _run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=extract",
                "--include=" + ",".join(PACKAGES),
                f'--extract-hook=mkdir -p "$1{Path(SERVER_PATH).parent}"',
                f"--extract-hook=upload {demo_server.__file__} {SERVER_PATH}",
                f'--extract-hook=chmod 0755 "$1{SERVER_PATH}"',
                f"--extract-hook={TRIM}",
                f"--extract-hook={BYTECODE}",
                SUITE,
                str(partial),
                f"deb {MIRROR} {SUITE} main",
                f"deb {SECURITY_MIRROR} {SUITE}-security main",
            ],
            "mmdebstrap",
        )
        partial.chmod(0o644)
        partial.rename(image.archive)
    log(f"demo image ready: {image.archive} ({image.archive.stat().st_size // 2**20} MiB)")
