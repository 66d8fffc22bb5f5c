"""The lab images' recipes: what names a cached image, and what rebuilds it."""

import os
from pathlib import Path

import pytest

from provision.errors import UsageError
from provision.lab import hosts, image


def test_a_flavor_starts_from_the_plain_image_and_a_plain_change_rebuilds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {flavor: image.recipe_hash(flavor) for flavor in image.FLAVORS}
    assert image.recipe("oci")["from"] == f"plain-{before['plain']}"
    assert image.recipe("oci")["packages"] == list(image.FLAVORS["oci"].packages), "the plain packages are not listed"
    assert "from" not in image.recipe("plain")
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "strace"))
    after = {flavor: image.recipe_hash(flavor) for flavor in image.FLAVORS}
    assert all(after[flavor] != before[flavor] for flavor in image.FLAVORS)


def test_a_flavor_change_leaves_the_plain_image_and_the_other_flavors(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {flavor: image.recipe_hash(flavor) for flavor in image.FLAVORS}
    flavors = dict(image.FLAVORS)
    flavors["oci"] = image.Flavor(packages=("iptables",), setup=image.FLAVORS["oci"].setup)
    monkeypatch.setattr(image, "FLAVORS", flavors)
    after = {flavor: image.recipe_hash(flavor) for flavor in image.FLAVORS}
    assert [flavor for flavor in after if after[flavor] != before[flavor]] == ["oci"]


def test_only_abandoned_builds_are_swept(tmp_path: Path) -> None:
    abandoned, running = tmp_path / "build-old", tmp_path / "build-now"
    for work, pid in ((abandoned, 2**22 + 1), (running, os.getpid())):  # above pid_max's default: no such process
        (work / "rootfs").mkdir(parents=True)
        (work / "builder.pid").write_text(f"{pid}\n")
    (tmp_path / "debian12-0123").mkdir()
    image._sweep_abandoned_builds(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build-now", "debian12-0123"]


def test_the_docker_flavor_has_the_monitoring_roles_packages_and_nginx_installed_and_disabled() -> None:
    """Every daemon the monitoring roles install through packaged_daemon, and nginx, is baked into the docker flavor
    (which the serving and monitoring tests' host runs), its unit disabled so that only the roles start it."""
    import yaml

    from provision import paths

    daemons = {
        (include["vars"]["packaged_daemon_package"], include["vars"]["packaged_daemon_unit"])
        for role in ("monitoring_agent", "monitoring_server")
        for tasks in sorted((paths.ROLES / role / "tasks").glob("*.yml"))
        for task in yaml.safe_load(tasks.read_text())
        for include in [task, *task.get("block", [])]
        if include.get("ansible.builtin.include_role", {}).get("name") == "packaged_daemon"
    }
    assert len(daemons) == 4, daemons
    docker = image.FLAVORS["docker"]
    assert {package for package, _ in daemons} | {"nginx"} <= set(docker.packages)
    units = {unit for _, unit in daemons} | {"nginx"}
    assert set(docker.setup.splitlines()) == {f"systemctl disable {unit}.service" for unit in units}


@pytest.mark.parametrize(
    ("value", "flavor", "cpus"),
    [("", "plain", 1), ("", "docker", 2), ("2", "plain", 2), ("16", "plain", 16), ("1", "docker", 1)],
)
def test_a_vm_has_its_flavors_vcpus_unless_provision_lab_cpus_says(
    monkeypatch: pytest.MonkeyPatch, value: str, flavor: str, cpus: int
) -> None:
    monkeypatch.setenv("PROVISION_LAB_CPUS", value)
    assert hosts._cpus(flavor) == cpus


@pytest.mark.parametrize("value", ["0", "two", "-1", "65"])
def test_a_bad_vcpu_count_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PROVISION_LAB_CPUS", value)
    with pytest.raises(UsageError, match=f"^PROVISION_LAB_CPUS: '{value}' is not a number of vCPUs from 1 to 64$"):
        hosts._cpus()
