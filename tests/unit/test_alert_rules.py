"""The alert rules as the monitoring_server role writes them (its defaults), unit-tested by promtool: one test file
per alert in alert_rules/, named after it. promtool comes with Debian's prometheus package (scripts/setup.sh);
without it these tests fail, they never skip."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from provision import paths, render

HERE = Path(__file__).parent / "alert_rules"
TESTS = sorted(HERE.glob("*.yml"))


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rules rendered with every role's defaults, beside a copy of the test files that load them."""
    variables = {**render.role_defaults(), **render.role_vars(), "playbook_dir": str(paths.PLAYBOOKS)}
    source = render.Variables(variables)["__monitoring_server_rules_src"]
    work = tmp_path_factory.mktemp("alert-rules")
    rules = work / Path(variables["__monitoring_server_rules_file"]).name
    rules.write_text(render.render_template(Path(source), variables), encoding="utf-8")
    for test in TESTS:
        shutil.copy(test, work / test.name)
    return work


def alerts(rules_dir: Path) -> list[str]:
    rules = yaml.safe_load((rules_dir / "provision-alerts.yml").read_text(encoding="utf-8"))
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check(require_promtool: str, rules_dir: Path) -> None:
    checked = subprocess.run(
        [require_promtool, "check", "rules", "provision-alerts.yml"], cwd=rules_dir, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_its_own_test_file(rules_dir: Path) -> None:
    assert sorted(alerts(rules_dir)) == sorted(test.stem for test in TESTS)
    for test in TESTS:
        cases = yaml.safe_load(test.read_text(encoding="utf-8"))["tests"]
        named = {check["alertname"] for case in cases for check in case["alert_rule_test"]}
        assert named == {test.stem}, f"{test.name} tests {sorted(named)}"
        fired = [check for case in cases for check in case["alert_rule_test"] if check.get("exp_alerts")]
        assert fired, f"{test.name} never expects {test.stem} to fire"


@pytest.mark.parametrize("test", TESTS, ids=[test.stem for test in TESTS])
def test_alert_rule_unit_test(require_promtool: str, rules_dir: Path, test: Path) -> None:
    result = subprocess.run(
        [require_promtool, "test", "rules", test.name], cwd=rules_dir, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
