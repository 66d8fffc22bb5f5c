"""Golden files for rendered configs: each directory under render/ is a case, compared byte for byte.

A case is render/<name>/inventory.yml and render/<name>/expected/<file> for every file `provision render`
produces for the inventory's first host (the others are there for what it generates from the whole inventory,
like Prometheus's targets) (no expected/ for a host that gets none). A new case is a new
directory, no code. To regenerate the expected files after a deliberate change, run with
PROVISION_UPDATE_GOLDEN=1 and review the diff.

Every rendered systemd unit is also checked by the real tool, `systemd-analyze verify`, in a scratch root.
"""

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from provision.inventory import Inventory
from provision.render import RenderedFile

CASES = sorted(path for path in (Path(__file__).parent / "render").iterdir() if path.is_dir())
RenderedCase = Callable[[Path], tuple[Inventory, tuple[RenderedFile, ...]]]
UPDATE = os.environ.get("PROVISION_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_render_matches_golden(rendered_case: RenderedCase, case: Path) -> None:
    inventory, files = rendered_case(case)
    assert inventory.hosts, f"{case}/inventory.yml defines no host"
    rendered = {file.name: file.text.encode("utf-8") for file in files}
    expected_dir = case / "expected"
    if UPDATE:
        shutil.rmtree(expected_dir, ignore_errors=True)
        for name, data in rendered.items():
            expected_dir.mkdir(exist_ok=True)
            (expected_dir / name).write_bytes(data)
    expected = {path.name: path.read_bytes() for path in sorted(expected_dir.glob("*"))}
    assert sorted(rendered) == sorted(expected), "rendered files differ from expected/ (PROVISION_UPDATE_GOLDEN=1)"
    for name, data in rendered.items():
        assert data == expected[name], f"{case.name}/expected/{name} differs (PROVISION_UPDATE_GOLDEN=1)"


# ---- systemd-analyze verify ---------------------------------------------------------------------------

GOOD_UNIT = "[Unit]\nDescription=probe\n\n[Service]\nExecStart=/usr/bin/docker version\n"
BAD_UNIT = "[Service]\nExecStart=/usr/bin/docker 'unbalanced\n"


def _verify(root: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    (root / "etc/systemd/system" / name).write_text(text, encoding="utf-8")
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", name],
        capture_output=True,
        text=True,
        check=False,
    )


def _absolute_links(directory: str, names: list[str]) -> set[str]:
    return {name for name in names if os.path.islink(p := os.path.join(directory, name)) and os.readlink(p)[:1] == "/"}


@pytest.fixture(scope="session")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root with the host's stock units, a docker.service and /usr/bin/docker and /usr/bin/ssh stubs.

    The units need docker, which this machine need not have; verify checks ExecStart= binaries and
    Requires= units inside the root. Skips (saying why) unless verify passes a good unit and fails a
    broken one here, so a verifier that accepts everything cannot hide behind this test.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine (apt-get install systemd)")
    stock = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if stock is None:
        pytest.skip("no systemd unit directory on this machine to verify against")
    root = tmp_path_factory.mktemp("systemd-root")
    # A copy, not a symlink: verify resolves links inside the root. Masked units (absolute links to
    # /dev/null) are left out.
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True, ignore=_absolute_links)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/docker.service").write_text("[Service]\nExecStart=/usr/bin/docker\n")
    (root / "usr/bin").mkdir(parents=True)
    for tool in ("docker", "ssh"):  # what the inference and tunnel units run
        (root / "usr/bin" / tool).write_text("#!/bin/sh\n")
        (root / "usr/bin" / tool).chmod(0o755)
    good, bad = _verify(root, "probe-good.service", GOOD_UNIT), _verify(root, "probe-bad.service", BAD_UNIT)
    if good.returncode != 0 or good.stderr.strip() or bad.returncode == 0:
        pytest.skip(f"systemd-analyze verify does not work here: {(good.stderr or bad.stderr).strip()[:200]}")
    return root


UNITS = [(case, unit) for case in CASES for unit in sorted((case / "expected").glob("*.service"))]


@pytest.mark.parametrize(("case", "unit"), UNITS, ids=[f"{c.name}/{u.name}" for c, u in UNITS])
def test_rendered_units_pass_systemd_analyze_verify(systemd_root: Path, case: Path, unit: Path) -> None:
    result = _verify(systemd_root, unit.name, unit.read_text(encoding="utf-8"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
