"""Golden files for the ssh role's algorithm lists: ssh/<profile>-<OpenSSH version>.txt, as `sshd -T` prints them.

The table is data (playbooks/roles/ssh/vars/main.yml); the role picks from it with Jinja (__ssh_crypto) and
`provision test` with Python (security_checks.crypto_lists). Both are compared with the same files, so they
cannot drift apart. A new case is a new empty file; PROVISION_UPDATE_GOLDEN=1 fills it in (review the diff).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provision import paths
from provision.smoke import security_checks as sec

CASES = sorted((Path(__file__).parent / "ssh").glob("*.txt"))
UPDATE = os.environ.get("PROVISION_UPDATE_GOLDEN") == "1"


def case_of(path: Path) -> tuple[str, str]:
    profile, version = path.stem.split("-")
    return profile, version


def as_sshd_t(lists: dict[str, str]) -> str:
    return "".join(f"{keyword.lower()} {algorithms}\n" for keyword, algorithms in lists.items())


@pytest.fixture(scope="module")
def role_lists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """__ssh_crypto for every case, as Ansible computes it from the role's vars (one ansible-playbook run)."""
    work = tmp_path_factory.mktemp("ssh-profiles")
    playbook = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "vars_files": [str(paths.ROLES / "ssh/vars/main.yml")],
            "tasks": [
                {
                    "name": "Write each case's lists",
                    "ansible.builtin.copy": {"content": "{{ __ssh_crypto | to_json }}", "dest": f"{work}/{{{{item}}}}"},
                    "loop": [case.stem for case in CASES],
                    "vars": {
                        "ssh_crypto_profile": "{{ item.split('-') | first }}",
                        "__ssh_openssh_version": "{{ item.split('-') | last }}",
                    },
                }
            ],
        }
    ]
    (work / "cases.yml").write_text(yaml.safe_dump(playbook))
    (work / "ansible.cfg").write_text("")
    env = {**os.environ, "ANSIBLE_CONFIG": str(work / "ansible.cfg")}
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "-i", "localhost,", str(work / "cases.yml")],
        capture_output=True, text=True, env=env, cwd=work, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {case.stem: as_sshd_t(json.loads((work / case.stem).read_text())) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_provision_test_lists_match_golden(case: Path) -> None:
    profile, version = case_of(case)
    major, minor = version.split(".")
    text = as_sshd_t(sec.crypto_lists(sec.crypto_table(), profile, (int(major), int(minor))))
    if UPDATE:
        case.write_text(text)
    assert text == case.read_text(), f"ssh/{case.name} differs (PROVISION_UPDATE_GOLDEN=1)"


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_role_lists_match_golden(role_lists: dict[str, str], case: Path) -> None:
    assert role_lists[case.stem] == case.read_text(), f"the role's __ssh_crypto differs from ssh/{case.name}"
