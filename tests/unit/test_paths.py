"""Where provision finds its playbooks: PROVISION_HOME, an installed wheel's copy, or the checkout."""

from pathlib import Path

import pytest

from provision import paths


def package_in(tmp_path: Path, installed: bool) -> Path:
    package = tmp_path / "site" / "provision"
    package.mkdir(parents=True)
    if installed:
        (package / "_data" / "playbooks").mkdir(parents=True)
    return package


def test_an_installed_wheel_uses_the_copy_inside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISION_HOME", raising=False)
    package = package_in(tmp_path, installed=True)
    assert paths.root(package) == package / "_data"


def test_an_editable_install_uses_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISION_HOME", raising=False)
    package = package_in(tmp_path, installed=False)
    assert paths.root(package) == package.parent


def test_provision_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_HOME", str(tmp_path / "home"))
    assert paths.root(package_in(tmp_path, installed=True)) == (tmp_path / "home").resolve()


def test_an_example_inventory_is_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert paths.example(Path("inventories/gcp")) == paths.ROOT / "inventories/gcp"
    (tmp_path / "inventories/gcp").mkdir(parents=True)  # the user's own copy wins
    assert paths.example(Path("inventories/gcp")) == Path("inventories/gcp")


@pytest.mark.parametrize("name", ["inventories/nope", "hosts.yml", "gcp"])
def test_other_paths_stay_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert paths.example(Path(name)) == Path(name)
    assert paths.example(paths.ROOT / "inventories/gcp") == paths.ROOT / "inventories/gcp"


def test_an_installed_lab_writes_its_inventory_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.cli import lab

    monkeypatch.chdir(tmp_path)
    assert lab._default_inventory() == paths.INVENTORIES / "lab/hosts.yml"  # a checkout: its own inventories/lab
    monkeypatch.setattr(paths, "INSTALLED", True)
    (tmp_path / "inventories/lab/group_vars").mkdir(parents=True)
    (tmp_path / "inventories/lab/group_vars/all.yml").write_text("# the user's edit\n")
    assert lab._default_inventory() == Path("inventories/lab/hosts.yml")
    assert (tmp_path / "inventories/lab/serving.yml").read_text() == (paths.INVENTORIES / "lab/serving.yml").read_text()
    kept = (tmp_path / "inventories/lab/group_vars/all.yml").read_text()
    assert kept == "# the user's edit\n", "a file the user has was replaced"
