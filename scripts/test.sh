#!/usr/bin/env bash
# The whole test suite: linters, unit and golden tests, then integration tests on real lab VMs.
#   bash scripts/test.sh            everything: unit tests, then the integration modules in two lanes (below)
#   bash scripts/test.sh ARGS...    one pytest run with these arguments (e.g. a module, -k)
#   PROVISION_TEST_LANES=1 bash scripts/test.sh    everything in one pytest run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# Each provision call of the integration tests, timed (the slowest are listed at the end).
export PROVISION_TEST_TIMINGS="${PROVISION_TEST_TIMINGS:-$(mktemp -t provision-timings.XXXXXX)}"
if [ $# -gt 0 ] || [ "${PROVISION_TEST_LANES:-2}" != 2 ]; then
    echo "== lint"
    bash scripts/lint.sh
    echo "== tests"
    exec pytest -ra --durations=20 "$@"
fi

# Two lanes on one lab (under their load an emulated guest may answer SSH later than Ansible's default 10 s: the
# lab inventory allows 60). Lane B holds modules that work on VMs of their own flavors (lab3 and up); lane A the
# rest: those on the session lab (lab1, lab2), and test_4b (lab4) and test_6b (lab6), which even out the lanes'
# times (test_5c_rolling's three VMs made lane B the longer one, s40). Each module
# mostly waits on one guest under TCG, so two lanes keep both cores busy. Each VM of another flavor has its own
# name (tests/integration/labtools.py), so the lanes never race for one. The session lab is started here, while
# the unit tests run, and stopped after both lanes.
LANE_B=(tests/integration/test_4_security.py tests/integration/test_5_serving.py tests/integration/test_5a_monitoring.py
        tests/integration/test_5b_nvidia_toolkit.py tests/integration/test_5c_rolling.py)
started=$(date +%s)
shared=$(mktemp -d -t provision-suite.XXXXXX)
export PROVISION_TEST_SHARED_LAB="$shared"
mkdir "$shared/inventory"
cp -r inventories/lab/group_vars "$shared/inventory/"
lab() { PROVISION_LAB_STATE="$shared/state" python -m provision lab "$@"; }
stop_lab() {
    lab down >/dev/null 2>&1 || true
    if pgrep -f "qemu-system.*$shared/state" >/dev/null; then
        echo "lab down left qemu processes running: $(pgrep -f "qemu-system.*$shared/state" | xargs)" >&2
        return 1
    fi
}
prepare_pid=""
lint_pid=""
unit_pid=""
# A flavor being prepared is finished first (its template VM stops with it), then the lab stops.
trap '[ -z "$lint_pid" ] || wait "$lint_pid"; [ -z "$unit_pid" ] || wait "$unit_pid"; [ -z "$prepare_pid" ] || wait "$prepare_pid"; stop_lab; rm -rf "$shared"' EXIT

lab up --hosts 2 --base-port 2311 --inventory-out "$shared/inventory/hosts.yml" >"$shared/lab-up.log" 2>&1 &
lab_pid=$!
# Lane B's flavors (images and saved VMs) and the demo server's image, made meanwhile too (on a cold cache; a warm
# one has them): the unit tests leave about half the CPU idle, which the lanes would not (a template's boot under
# the lanes' load took 4-6 min in s30, 2 min here). What is not made when the lanes start, a module waits for (each
# image and template has a build lock) rather than making it again. The selinux and nvidia flavors, needed later,
# are built behind the lanes (tests/integration/conftest.py): made here too, the SELinux template's boot ran into
# the lanes' start and took more than 5 minutes (s31).
( lab prepare --flavor oci --flavor docker && lab demo-image ) >"$shared/prepare.log" 2>&1 &
prepare_pid=$!
# The linters and the unit, meta and golden tests run beside the lanes (their output after the lanes'): they keep
# about a third of one core busy for 3-4 minutes (most of it is their subprocesses' and sockets' waits), which
# delayed the lanes' start by as long when they ran first (s35: 4 min 31 s of a 38-minute suite).
bash scripts/lint.sh >"$shared/lint.log" 2>&1 &
lint_pid=$!
pytest -ra --durations=10 -p no:cacheprovider tests/unit tests/meta tests/golden >"$shared/unit.log" 2>&1 &
unit_pid=$!
if ! wait "$lab_pid"; then
    cat "$shared/lab-up.log" >&2
    echo "the session lab did not start" >&2
    exit 1
fi
echo "== integration tests in two lanes (session lab up after $(($(date +%s) - started)) s; unit tests and lint go on beside them)"
ignore=()
for module in "${LANE_B[@]}"; do ignore+=("--ignore=$module"); done
pytest -ra --durations=10 -p no:cacheprovider "${LANE_B[@]}" >"$shared/lane-b.log" 2>&1 &
lane_b=$!
rc_a=0
pytest -ra --durations=20 -p no:cacheprovider tests/integration "${ignore[@]}" || rc_a=$?
rc_b=0
wait "$lane_b" || rc_b=$?
echo "== lane B: ${LANE_B[*]}"
cat "$shared/lane-b.log"
rc=0
wait "$unit_pid" || rc=$?
unit_pid=""
echo "== unit, meta and golden tests"
cat "$shared/unit.log"
lint_rc=0
wait "$lint_pid" || lint_rc=$?
lint_pid=""
echo "== lint"
cat "$shared/lint.log"
[ "$lint_rc" -eq 0 ] || { echo "lint failed" >&2; rc=1; }
if ! wait "$prepare_pid"; then  # a module that needed what it did not make made it itself, or failed saying why
    echo "== preparing the lab's flavors failed:"
    cat "$shared/prepare.log"
fi
prepare_pid=""
stop_lab || rc=1
echo "== suite: $(($(date +%s) - started)) s from the unit tests to the lab's end; exit codes: unit and lint $rc, lane A $rc_a, lane B $rc_b"
[ "$rc" -eq 0 ] && [ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ]
