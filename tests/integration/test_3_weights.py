"""The weights role on a real lab VM: files pulled from a server on this machine through qemu's user network.

Runs after test_2_disks.py on the same lab: the data disk of lab1 is reset and mounted at /srv/models by the
disks role once, then the weights go on it (`--tags weights`).  The file server (testkit/fileserver.py)
serves one directory under two mirror prefixes, logs every request and misbehaves on demand.  Each test
writes the inventory a user would (group_vars with disks and weights settings) and runs `provision up` as a
user does.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labtools import ROOT, Lab, recap
from test_2_disks import MOUNT, reset_disk

from provision.weights import lockfile
from testkit.fileserver import Fault, FileServer, make_file

BIG = 1 << 30  # the acceptance's "at least 1 GiB"
HALF = BIG // 2
SLOW = 64 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    root = tmp_path_factory.mktemp("served")
    make_file(root / "big/model.safetensors", BIG, seed=1)
    make_file(root / "big/config.json", 700, seed=2)
    make_file(root / "tiny/config.json", 500, seed=3)
    make_file(root / "tiny/tokenizer.json", 40_000, seed=4)
    make_file(root / "slow/model.bin", SLOW, seed=5)
    with FileServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def locks(served: FileServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lockfiles made with the CLI's own code from the served directories, as a user would make them."""
    out = tmp_path_factory.mktemp("locks")
    for name in ("big", "tiny", "slow"):
        (out / f"{name}.lock.yml").write_text(lockfile.dump(lockfile.from_directory(served.root / name, name, "r1")))
    return out


@pytest.fixture(scope="module")
def disk_ready(lab: Lab, tmp_path_factory: pytest.TempPathFactory, served: FileServer, locks: Path) -> Lab:
    """lab1 with a blank data disk formatted and mounted at /srv/models by the disks role, as a user would."""
    reset_disk(lab, "lab1")
    inv = inventory(lab, tmp_path_factory.mktemp("disks"), served, locks, [])
    proc = lab.provision("up", "-i", str(inv), "--tags", "disks", "--limit", "lab1")
    assert proc.returncode == 0, proc.stdout
    return lab


def inventory(lab: Lab, tmp_path: Path, served: FileServer, locks: Path, models: list[dict], **extra: object) -> Path:
    inv = tmp_path / "inventory"
    shutil.copytree(lab.inventory, inv, dirs_exist_ok=True)
    shutil.copytree(locks, inv / "locks")
    config = {
        "disks_cloud": "aliyun",
        "disks_devices": [{"cloud_name": "{{ inventory_hostname }}-data", "mount": MOUNT, "owner": "debian"}],
        "weights_models": models,
        # The VM sees this machine's loopback as 10.0.2.2; each model's files sit under its own directory.
        "weights_mirrors": [f"http://10.0.2.2:{served.port}/m1/{{model}}/{{path}}"],
        "weights_retries": 0,
        "weights_progress_interval": 1,
        **extra,
    }
    (inv / "group_vars" / "lab.yml").write_text(yaml.safe_dump(config))
    return inv


def up(lab: Lab, inv: Path, *more: str) -> tuple[int, str]:
    proc = lab.provision("up", "-i", str(inv), "--tags", "weights", "--limit", "lab1", *more)
    return proc.returncode, proc.stdout + proc.stderr


def mirror(served: FileServer, name: str) -> str:
    return f"http://10.0.2.2:{served.port}/{name}/{{model}}/{{path}}"


def test_a_big_model_is_pulled_resumed_after_a_dropped_connection_and_then_left_alone(
    disk_ready: Lab, tmp_path: Path, served: FileServer, locks: Path
) -> None:
    lab = disk_ready
    inv = inventory(lab, tmp_path, served, locks, [{"name": "big", "lockfile": "locks/big.lock.yml"}])
    served.clear()

    rc, out = up(lab, inv, "--check")
    assert rc == 0, out
    assert "to pull: 2 files, 1.0 GiB" in out
    assert served.requests() == [], "check mode downloads nothing"

    served.fault("m1", "big/model.safetensors", Fault(drop_after=HALF, times=1))
    rc, out = up(lab, inv)
    assert rc == 1, out
    assert re.search(
        r"big: model\.safetensors: no mirror served the locked file .*connection closed after 512\.0 MiB", out
    )
    part = lab.sh("lab1", f"stat -c %s {MOUNT}/big/model.safetensors.part").strip()
    assert int(part) == HALF
    assert lab.ssh("lab1", f"test -e {MOUNT}/big/model.safetensors").returncode == 1, "nothing unverified in place"

    rc, out = up(lab, inv)
    assert rc == 0, out
    resumes = [r for r in served.requests("big/model.safetensors") if r.range]
    assert [(r.range, r.status) for r in resumes] == [(f"bytes={HALF}-", 206)]
    assert "big/model.safetensors: from http://10.0.2.2:" in out and "(resumed at 512.0 MiB)" in out
    assert re.search(r"waiting\s+lab1\s+weights : Show the download progress: .* of 1\.0 GiB", out), "no progress"
    owner = lab.sh("lab1", f"stat -c '%U %a' {MOUNT}/big/model.safetensors {MOUNT}/big").split()
    assert owner == ["root", "644", "root", "755"]

    served.clear()
    rc, out = up(lab, inv)
    assert rc == 0 and recap(out)["lab1"]["changed"] == 0, out
    checked = re.search(r"Check the model files against their verification records: big: 2 of 2 files verified "
                        r"\((\d+\.\d+)s\)", out)  # fmt: skip
    assert checked and float(checked.group(1)) < 1.0, out
    assert served.requests() == []

    smoke = lab.provision("test", "-i", str(inv), "--limit", "lab1", "-k", "weights")
    assert smoke.returncode == 0, smoke.stdout


def test_a_corrupt_mirror_is_skipped_and_all_corrupt_mirrors_fail_the_host(
    disk_ready: Lab, tmp_path: Path, served: FileServer, locks: Path
) -> None:
    lab = disk_ready
    models = [
        {"name": "tiny", "lockfile": "locks/tiny.lock.yml", "mirrors": [mirror(served, "m1"), mirror(served, "m2")]}
    ]
    inv = inventory(lab, tmp_path, served, locks, models)
    served.clear()
    served.fault("m1", "tiny/config.json", Fault(corrupt=True))
    rc, out = up(lab, inv)
    assert rc == 0, out
    line = next(line for line in out.splitlines() if "tiny/config.json: from" in line)
    assert f"from http://10.0.2.2:{served.port}/m2/tiny/config.json" in line
    assert f"rejected http://10.0.2.2:{served.port}/m1/tiny/config.json: sha256 " in line

    lab.sh("lab1", f"sudo rm {MOUNT}/tiny/tokenizer.json")
    for name in ("m1", "m2"):
        served.fault(name, "tiny/tokenizer.json", Fault(corrupt=True))
    rc, out = up(lab, inv)
    assert rc == 1, out
    expected = next(f.sha256 for f in lockfile.load(locks / "tiny.lock.yml").files if f.path == "tokenizer.json")
    failure = next(line for line in out.splitlines() if "no mirror served the locked file" in line)
    assert f"tiny: tokenizer.json: no mirror served the locked file (expected sha256 {expected}" in failure
    assert len(re.findall(r"/m[12]/tiny/tokenizer\.json: sha256 [0-9a-f]{64}", failure)) == 2
    left = lab.ssh("lab1", f"ls {MOUNT}/tiny/tokenizer.json {MOUNT}/tiny/tokenizer.json.part")
    assert left.returncode != 0 and "No such file" in left.stderr

    served.clear()
    rc, out = up(lab, inv)
    assert rc == 0, out


def test_a_file_changed_on_disk_is_found_by_deep_verify_and_replaced_by_up(
    disk_ready: Lab, tmp_path: Path, served: FileServer, locks: Path
) -> None:
    lab = disk_ready
    inv = inventory(lab, tmp_path, served, locks, [{"name": "tiny", "lockfile": "locks/tiny.lock.yml"}])
    rc, out = up(lab, inv)
    assert rc == 0, out
    # Same size, same mtime: only the bytes (and the ctime, which nobody can set) differ.
    lab.sh("lab1", f"f={MOUNT}/tiny/config.json; t=$(stat -c %y $f); printf X | sudo dd of=$f bs=1 seek=10 "
                    "conv=notrunc status=none; sudo touch -d \"$t\" $f")  # fmt: skip
    verify = lab.provision("weights", "verify", "-i", str(inv), "--limit", "lab1", "--deep")
    assert verify.returncode == 1, verify.stdout
    assert re.search(r"^lab1  tiny: corrupt config\.json \(sha256 [0-9a-f]{64}\)$", verify.stdout, re.M), verify.stdout

    rc, out = up(lab, inv)
    assert rc == 0 and "tiny/config.json: from" in out, out
    verify = lab.provision("weights", "verify", "-i", str(inv), "--limit", "lab1", "--deep")
    assert verify.returncode == 0 and "lab1  tiny: OK (2 files)" in verify.stdout, verify.stdout


def test_a_model_bigger_than_the_disk_fails_before_downloading(
    disk_ready: Lab, tmp_path: Path, served: FileServer, locks: Path
) -> None:
    lab = disk_ready
    huge = lockfile.Lock("huge", "r1", (lockfile.LockedFile("weights.bin", 1 << 40, "0" * 64),))
    (locks / "huge.lock.yml").write_text(lockfile.dump(huge))
    inv = inventory(lab, tmp_path, served, locks, [{"name": "huge", "lockfile": "locks/huge.lock.yml"}])
    served.clear()
    rc, out = up(lab, inv)
    assert rc == 1, out
    assert re.search(rf"not enough space on {MOUNT}: need 1\.0 TiB, have 1\d\.\d GiB", out), out
    assert served.requests() == []


def test_an_interrupted_run_and_two_runs_at_once_leave_exactly_the_locked_bytes(
    disk_ready: Lab, tmp_path: Path, served: FileServer, locks: Path
) -> None:
    """The pull outlives a Ctrl-C of `provision up` (as our message says, run it again): the next run's pull must
    not write beside it. And two whole runs started together on one host must both end clean."""
    lab = disk_ready
    # The first run's request is held at 16 MiB until the second run's pull is seen waiting for it: however slow
    # the machine, the interrupted run's pull is still in flight when the next one starts (and the pull's own
    # timeout outlasts the hold).
    inv = inventory(lab, tmp_path, served, locks, [{"name": "slow", "lockfile": "locks/slow.lock.yml"}],
                    weights_timeout=600, weights_retries=1)  # fmt: skip
    command = [sys.executable, "-m", "provision", "up", "-i", str(inv), "--tags", "weights", "--limit", "lab1"]
    expected = lockfile.load(locks / "slow.lock.yml").files[0].sha256

    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        run = subprocess.Popen(command, cwd=ROOT, env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
        started.append(run)
        return run

    def on_disk() -> str:
        return lab.sh("lab1", f"sudo sha256sum {MOUNT}/slow/model.bin; ls {MOUNT}/slow").split()[0]

    served.clear()
    held = threading.Event()
    served.fault("m1", "slow/model.bin", Fault(stall_after=16 << 20, stall_seconds=540, hold=held, times=1))
    try:
        first = start()
        deadline = time.monotonic() + 300
        while not served.requests("slow/model.bin"):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started its pull"
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 130, out

        # The second run's progress file says so while its pull waits (earlier runs' files stay: only a new one).
        # (/run/provision is root's alone: the file names are expanded as root too.)
        waiting = "sudo sh -c \"grep -ls 'waiting for the pull of' /run/provision/weights-*.json || true\""
        earlier = set(lab.sh("lab1", waiting).split())
        again = start()
        deadline = time.monotonic() + 420
        while not set(lab.sh("lab1", waiting).split()) - earlier:
            assert again.poll() is None, again.communicate()[0]
            assert time.monotonic() < deadline, "the second run's pull never waited for the first"
            time.sleep(1)
    except BaseException:
        # A run left going would hold lab1's run lock (and fill its pipe) for the modules after this one.
        for run in started:
            if run.poll() is None:
                run.terminate()  # provision stops its ansible-playbook on SIGTERM and lets go of the host
                try:
                    run.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    run.kill()
                    run.communicate()
        raise
    finally:
        held.set()
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "Traceback" not in out
    assert "placed by the pull that was already running" in out, out
    assert on_disk() == expected
    # Only the interrupted run's pull downloaded: its one request, held until the second run's pull waited for it.
    assert len(served.requests("slow/model.bin")) == 1, served.requests("slow/model.bin")
    assert lab.ssh("lab1", f"ls {MOUNT}/slow/model.bin.part").returncode != 0

    lab.sh("lab1", f"sudo rm -r {MOUNT}/slow")
    served.clear()
    served.fault("m1", "slow/model.bin", Fault(stall_after=16 << 20, stall_seconds=30, times=1))
    both = [start(), start()]
    outs = [run.communicate(timeout=600)[0] for run in both]
    assert [run.returncode for run in both] == [0, 0], outs
    assert sum("is being provisioned by another run" in out for out in outs) == 1, outs
    assert not any("Traceback" in out for out in outs)
    assert on_disk() == expected
    assert len(served.requests("slow/model.bin")) == 2
