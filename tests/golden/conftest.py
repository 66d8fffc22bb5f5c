"""What provision renders for each golden render case, computed once per session: test_render.py compares it with
the expected files, test_template_module.py with Ansible's template module (each load runs ansible-inventory)."""

from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from provision.inventory import Inventory, load_inventory
from provision.render import RenderedFile, render_host

RENDER_CASES = sorted(path for path in (Path(__file__).parent / "render").iterdir() if path.is_dir())


@cache
def _rendered(case: Path) -> tuple[Inventory, tuple[RenderedFile, ...]]:
    inventory = load_inventory(case / "inventory.yml")
    return inventory, tuple(render_host(inventory, inventory.hosts[0]))


@pytest.fixture(scope="session")
def rendered_case() -> Callable[[Path], tuple[Inventory, tuple[RenderedFile, ...]]]:
    """case directory -> (its inventory, the files `provision render` makes for its first host)."""
    return _rendered
