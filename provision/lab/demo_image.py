"""The demo server's container image, made without any registry: a Debian rootfs tarball for `docker import`.

mmdebstrap builds a minimal bookworm (the essential packages plus python3) with provision/demo_server.py
as /usr/local/bin/provision-demo-server, trims documentation and locales, and writes a tar.  The tar is
cached by a hash of its recipe (the server's source included), and the image tag is that hash, so a
changed server is a new image and an unchanged one is never imported twice.
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
PACKAGES = ("python3",)
# What the server never uses: documentation, locales, perl (pulled in by package scripts), iconv modules,
# python's bytecode caches and test suite.  Halves the tarball, and `docker import` under TCG with it.
TRIM = " ".join(
    [
        "rm -rf /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /var/cache/apt /var/lib/apt/lists",
        "/usr/share/perl /usr/lib/x86_64-linux-gnu/perl /usr/lib/x86_64-linux-gnu/libperl.so*",
        "/usr/lib/x86_64-linux-gnu/gconv /usr/lib/python3.11/test /usr/lib/python3.11/pydoc_data",
        "&& find /usr -name __pycache__ -prune -exec rm -rf {} +",
    ]
)
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
        "version": 1,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "trim": TRIM,
        "changes": list(CHANGES),
        "server": hashlib.sha256(Path(demo_server.__file__).read_bytes()).hexdigest(),
    }


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def ensure_demo_image(cache_dir: Path, log: Callable[[str], None]) -> DemoImage:
    """The cached rootfs tarball for the current recipe, built first if needed (~30 s)."""
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
                "--variant=essential",
                "--include=" + ",".join(PACKAGES),
                f"--customize-hook=upload {demo_server.__file__} {SERVER_PATH}",
                f'--customize-hook=chmod 0755 "$1{SERVER_PATH}"',
                f'--customize-hook=chroot "$1" sh -c "{TRIM}"',
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
