#!/usr/bin/env bash
# The whole test suite: linters, unit and golden tests, then integration tests on real lab VMs.
#   bash scripts/test.sh            everything: unit tests, then the integration modules in two lanes (below)
#   bash scripts/test.sh ARGS...    one pytest run with these arguments (e.g. a module, -k)
#   PROVISION_TEST_LANES=1 bash scripts/test.sh    everything in one pytest run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== lint"
bash scripts/lint.sh
echo "== tests"
# Each provision call of the integration tests, timed (the slowest are listed at the end).
export PROVISION_TEST_TIMINGS="${PROVISION_TEST_TIMINGS:-$(mktemp -t provision-timings.XXXXXX)}"
if [ $# -gt 0 ] || [ "${PROVISION_TEST_LANES:-2}" != 2 ]; then
    exec pytest -ra --durations=20 "$@"
fi

# Two lanes on one lab (under their load an emulated guest may answer SSH later than Ansible's default 10 s: the
# lab inventory allows 60). Lane B holds modules that work on VMs of their own flavors (lab3 and up); lane A the
# rest: those on the session lab (lab1, lab2), and test_4b (lab4), which evens out the lanes' times. Each module
# mostly waits on one guest under TCG, so two lanes keep both cores busy. Each VM of another flavor has its own
# name (tests/integration/labtools.py), so the lanes never race for one. The session lab is started here, while
# the unit tests run, and stopped after both lanes.
LANE_B=(tests/integration/test_4_security.py tests/integration/test_5_serving.py tests/integration/test_5a_monitoring.py
        tests/integration/test_5b_nvidia_toolkit.py tests/integration/test_6b_nvidia_driver.py)
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
trap 'stop_lab; rm -rf "$shared"' EXIT

lab up --hosts 2 --base-port 2311 --inventory-out "$shared/inventory/hosts.yml" >"$shared/lab-up.log" 2>&1 &
lab_pid=$!
rc=0
pytest -ra --durations=10 -p no:cacheprovider tests/unit tests/meta tests/golden || rc=$?
lab_started=$(date +%s)
if ! wait "$lab_pid"; then
    cat "$shared/lab-up.log" >&2
    echo "the session lab did not start" >&2
    exit 1
fi
echo "== integration tests in two lanes (session lab up after $(($(date +%s) - started)) s, waited $(($(date +%s) - lab_started)) s for it after the unit tests)"
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
stop_lab || rc=1
echo "== suite: $(($(date +%s) - started)) s from the unit tests to the lab's end; exit codes: unit $rc, lane A $rc_a, lane B $rc_b"
[ "$rc" -eq 0 ] && [ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ]
