"""Smoke checks for the disks role: run by `provision test` against every host in the inventory."""

from typing import Any

from provision.smoke import disk_checks


def test_data_disks_mounted_by_uuid_once_with_nofail(host: Any, provision_vars: dict[str, Any]) -> None:
    """Each configured mount is mounted from the UUID its one fstab line names, with nofail, writable by its owner.

    With no disks configured this still checks something: no fstab line written like the role's is left over.
    """
    fstab = disk_checks.parse_fstab(host.file(disk_checks.FSTAB).content_string)
    configured = disk_checks.configured_mounts(provision_vars, fstab)
    problems = disk_checks.stray_fstab_problems(fstab, configured)
    for mount in configured:
        problems += disk_checks.data_disk_problems(host, mount, fstab)
    assert problems == []
