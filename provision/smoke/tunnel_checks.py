"""Checks for the tunnel role: each configured tunnel's unit is up and listens on its local forwards.

A unit's state comes from `systemctl show` (parse_unit_state, tunnel_state_problems: pure, unit-tested); the
tunnel role's units are Type=forking around `ssh -f`, so "active" means ssh connected and set up every forward.
"""

from typing import Any

SHOWN = ("ActiveState", "SubState", "Result", "NRestarts")


def unit_name(forward: dict[str, Any]) -> str:
    return f"tunnel-{forward['name']}.service"


def local_listens(forward: dict[str, Any]) -> list[str]:
    """The "address:port" each local forward listens on (ssh's default address, loopback, when none is given)."""
    listens = [str(spec["listen"]) for spec in forward.get("local") or []]
    return [listen if ":" in listen else f"127.0.0.1:{listen}" for listen in listens]


def parse_unit_state(text: str) -> dict[str, str]:
    """`systemctl show -p ActiveState,SubState,Result,NRestarts` output as a mapping."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value.strip() for key, value in pairs}


def tunnel_state_problems(unit: str, state: dict[str, str], journal: str = "", ssh_said: str = "") -> list[str]:
    """Nothing when the unit is active; else one line saying how it stands, whether systemd gave up on it (its start
    limit), and ssh's last word. `journal` is the unit's journal (systemd's lines about it included), `ssh_said`
    what ssh itself wrote there (_SYSTEMD_UNIT)."""
    if state.get("LoadState") == "not-found" or "ActiveState" not in state:
        return [f"{unit} is not installed: provision up writes it"]
    if state["ActiveState"] == "active":
        return []
    # systemd keeps the first failure's Result (exit-code) when the start limit ends the restarts; it logs this.
    limit = state.get("Result") == "start-limit-hit" or "Start request repeated too quickly" in journal
    why = "systemd gave up: start limit hit" if limit else f"result {state.get('Result', '?')}"
    said = [line.strip() for line in ssh_said.splitlines() if line.strip()]
    last = f"; ssh said: {said[-1][:200]}" if said else ""
    restarts = state.get("NRestarts", "?")
    return [f"{unit} is {state['ActiveState']} ({state.get('SubState', '?')}, {why}, {restarts} restarts){last}"]


def tunnel_problems(host: Any, forwards: list[dict[str, Any]]) -> list[str]:
    problems = []
    for forward in forwards:
        unit = unit_name(forward)
        with host.sudo():
            shown = host.run(f"systemctl show --property {','.join(SHOWN)},LoadState {unit}")
            state = parse_unit_state(shown.stdout)
            journal = ssh_said = ""
            if state.get("ActiveState") != "active":
                journal = host.run(f"journalctl --unit {unit} --lines 20 --no-pager --output cat").stdout
                ssh_said = host.run(f"journalctl _SYSTEMD_UNIT={unit} --lines 3 --no-pager --output cat").stdout
        found = tunnel_state_problems(unit, state, journal, ssh_said)
        problems += found
        if not found:
            problems += [
                f"{unit} is up but nothing listens on {listen}"
                for listen in local_listens(forward)
                if not host.socket(f"tcp://{listen}").is_listening
            ]
    return problems
