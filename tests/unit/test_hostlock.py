"""Host locks (provision.hostlock): one per address, however many inventory names point at it."""

import threading

from provision import hostlock


def test_names_for_one_address_take_its_one_lock_and_do_not_wait_on_each_other() -> None:
    """Three names for one VM, as the fleet output test's inventory has: the run must not wait for itself."""
    notes: list[str] = []
    hosts = {name: hostlock.address(name, {"ansible_host": "127.0.0.1", "ansible_port": 2311}) for name in "abc"}
    hosts["d"] = hostlock.address("d", {})
    done = threading.Event()

    def run() -> None:
        with hostlock.hold(hosts, notes.append):
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(10), "the run waits for a lock it holds itself"
    thread.join()
    assert notes == []
    assert len(list(hostlock.lock_dir().glob("*.lock"))) == 2
