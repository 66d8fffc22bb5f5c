"""Smoke checks for the weights role: run by `provision test` against every host in the inventory."""

from typing import Any

from provision.smoke import weight_checks


def test_locked_model_files_are_present_and_verified(
    host: Any, provision_vars: dict[str, Any], inventory_dir: str
) -> None:
    """Every file of every lockfile in weights_models is on the host, of its size, with a matching record."""
    from provision.weights.lockfile import plan

    models = plan(
        provision_vars.get("weights_models") or [],
        inventory_dir,
        provision_vars["weights_root"],
        provision_vars["weights_mirrors"],
    )
    problems = weight_checks.stray_models(weight_checks.record_dirs(host, provision_vars["weights_root"]), models)
    problems += [p for m in models for p in weight_checks.problems(m, weight_checks.snapshot(host, m))]
    assert problems == []
