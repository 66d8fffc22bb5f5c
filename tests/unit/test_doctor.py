"""provision doctor's verdicts, from fixture readings (what playbooks/library/host_doctor.py returns)."""

import copy
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_result import CliResult

from provision import doctor
from provision.doctor import HostReport, Intent

GPU_HOST = Intent(serves=True, gpus="auto", image="vllm/vllm-openai:v0.6.3", model_dir="/srv/models")

# A CPU-only VM, as the lab's: no NVIDIA device, docker with runc only, a blank data disk nobody mounted.
PLAIN: dict[str, Any] = {
    "os": {"name": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-27-amd64", "machine": "x86_64"},
    "cloud": {"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)", "chassis_asset_tag": ""},
    "cpu": {"vmx": False, "svm": False},
    "pci": {"visible": True, "nvidia": []},
    "driver": {"module_loaded": False, "proc_version": "", "proc_gpus": 0, "nvml": {"loaded": False}},
    "reboot": {"markers": {}},
    "secure_boot": "no UEFI",
    "nouveau": False,
    "docker": {"present": True, "answers": True, "runtimes": ["io.containerd.runc.v2", "runc"]},
    "image": {"name": "", "present": False},
    "selinux": "absent",
    "disks": [{"device": "/dev/vdb", "size": 20 << 30, "contents": "blank"}],
    "model_dir": {"path": "/srv/models", "exists": True, "measured_at": "/srv/models", "free": 5 << 30,
                  "size": 20 << 30},
}  # fmt: skip

H100 = {"address": "0000:00:05.0", "device": "0x2330", "class": "0x030200", "kind": "gpu"}


def readings(**changes: Any) -> dict[str, Any]:
    """PLAIN with some readings replaced."""
    return {**copy.deepcopy(PLAIN), **changes}


def gpu_host(version: str = "550.54.14", cuda: str = "12.4", gpus: int = 1, **changes: Any) -> dict[str, Any]:
    """One H100 on the bus, its driver loaded and answering NVML, docker with the nvidia runtime."""
    base: dict[str, Any] = dict(
        pci={"visible": True, "nvidia": [H100] * gpus},
        driver={
            "module_loaded": True,
            "proc_version": version,
            "proc_gpus": gpus,
            "nvml": {"loaded": True, "init": 0, "driver": version, "cuda": cuda, "count": gpus,
                     "gpus": ["NVIDIA H100 80GB HBM3"] * gpus},
        },
        docker={"present": True, "answers": True, "runtimes": ["nvidia", "runc"]},
    )  # fmt: skip
    return readings(**{**base, **changes})


def needs(cuda: str) -> dict[str, Any]:
    return {"name": GPU_HOST.image, "present": True, "cuda": cuda, "source": "NVIDIA_REQUIRE_CUDA"}


# ---- decide -------------------------------------------------------------------------------------------

CASES: list[tuple[str, Intent, dict[str, Any], list[str]]] = [
    ("no GPU, not serving", Intent(serves=False), readings(), []),
    ("no GPU, serving on CPU by auto", Intent(serves=True, gpus="auto"), readings(), []),
    ("no GPU, gpus false", Intent(serves=True, gpus="false"), readings(), []),
    ("no GPU, gpus true", Intent(serves=True, gpus="true"), readings(),
     ["inference_gpus is true but no NVIDIA driver is loaded (none on the PCI bus)",
      "docker has no nvidia runtime"]),
    ("GPU on the bus, auto, no driver", GPU_HOST, readings(pci={"visible": True, "nvidia": [H100]}),
     ["inference_gpus is auto but no NVIDIA driver is loaded (1 on the PCI bus)", "docker has no nvidia runtime"]),
    ("a healthy GPU host", GPU_HOST, gpu_host(image=needs("12.4")), []),
    ("driver 535 and an image that needs 12.4", GPU_HOST, gpu_host("535.183.01", "12.2", image=needs("12.4")),
     ["vllm/vllm-openai:v0.6.3 needs CUDA 12.4 (NVIDIA_REQUIRE_CUDA); driver 535.183.01 supports CUDA 12.2 at "
      "most: upgrade the driver"]),
    ("CUDA 12.10 is newer than 12.9", GPU_HOST, gpu_host("575.51.03", "12.9", image=needs("12.10")),
     ["needs CUDA 12.10"]),
    ("NVML mismatch", GPU_HOST,
     gpu_host(driver={"module_loaded": True, "proc_version": "550.54.14", "proc_gpus": 1,
                      "nvml": {"loaded": True, "init": 18, "error": "mismatch"}}),
     ["NVML and the loaded driver 550.54.14 differ: reboot to load the new driver"]),
    ("nouveau loaded", GPU_HOST, gpu_host(nouveau=True), ["nouveau is loaded"]),
    ("reboot pending", GPU_HOST, gpu_host(reboot={"markers": {"/run/provision/reboot-required": "nvidia 570"}}),
     ["a reboot is pending: /run/provision/reboot-required (nvidia 570)"]),
    ("Secure Boot refused the module", Intent(serves=True, gpus="true"),
     readings(pci={"visible": True, "nvidia": [H100]}, secure_boot="enabled",
              docker={"present": True, "answers": True, "runtimes": ["nvidia"]}),
     ["no NVIDIA driver is loaded", "Secure Boot is on and no NVIDIA module is loaded"]),
    ("Secure Boot with a signed module loaded", GPU_HOST, gpu_host(secure_boot="enabled"), []),
    ("no docker on a serving host", Intent(serves=True, gpus="false"), readings(docker={"present": False}),
     ["docker is not installed"]),
    ("docker not answering", Intent(serves=True, gpus="false"),
     readings(docker={"present": True, "answers": False, "error": "Cannot connect to the Docker daemon"}),
     ["docker does not answer: Cannot connect to the Docker daemon"]),
    ("no docker on a host that does not serve", Intent(serves=False), readings(docker={"present": False}), []),
    ("gpus false on a GPU host serves without them", Intent(serves=True, gpus="false"),
     gpu_host(nouveau=True), []),
    ("driver loaded, sees no GPU", GPU_HOST, gpu_host(gpus=0, pci={"visible": True, "nvidia": [H100]}),
     ["inference_gpus is auto but the NVIDIA driver 550.54.14 sees no GPU"]),
    ("no PCI bus, driver sees the GPU (a micro-VM)", GPU_HOST, gpu_host(pci={"visible": False, "nvidia": []}), []),
]  # fmt: skip


@pytest.mark.parametrize(("intent", "reading", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_what_blocks_serving(intent: Intent, reading: dict[str, Any], expected: list[str]) -> None:
    blocks = doctor.decide(intent, reading).blocks
    assert len(blocks) == len(expected), blocks
    for block, wanted in zip(blocks, expected, strict=True):
        assert wanted in block


def test_a_blank_unmounted_disk_is_a_warning_not_a_block() -> None:
    verdict = doctor.decide(GPU_HOST, gpu_host())
    assert verdict.blocks == ()
    assert verdict.warnings == ("/dev/vdb (20.0 GiB) is attached, blank and not mounted",)


def test_a_reboot_pending_on_a_host_without_gpus_is_only_a_warning() -> None:
    verdict = doctor.decide(Intent(serves=True), readings(reboot={"markers": {"/run/reboot-required": ""}}))
    assert verdict.blocks == () and verdict.warnings[0] == "a reboot is pending: /run/reboot-required"


def test_gpus_missing_from_the_driver_are_a_warning() -> None:
    verdict = doctor.decide(GPU_HOST, gpu_host(gpus=7, pci={"visible": True, "nvidia": [H100] * 8}))
    assert "8 NVIDIA GPU(s) on the PCI bus but the driver sees 7" in verdict.warnings


def test_no_pci_bus_is_not_a_mismatch() -> None:
    verdict = doctor.decide(GPU_HOST, gpu_host(pci={"visible": False, "nvidia": []}))
    assert not any("PCI bus" in warning for warning in verdict.warnings)
    assert doctor.row(HostReport("h", GPU_HOST, gpu_host(pci={"visible": False, "nvidia": []})))[3] == "?/1"


# ---- the driver, CUDA and the cloud -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "cuda"),
    [("535.183.01", "12.2"), ("550.54.14", "12.4"), ("565.57.01", "12.7"), ("570.86.15", "12.8"),
     ("580.65.06", "13.0"), ("470.256.02", ""), ("", "")],
)  # fmt: skip
def test_cuda_by_driver_branch(version: str, cuda: str) -> None:
    assert doctor.cuda_for_branch(version) == cuda


def test_the_driver_from_nvidia_smi_when_nvml_cannot_load() -> None:
    reading = {
        "proc_version": "570.86.15",
        "nvml": {"loaded": False},
        "smi": {"rc": 0, "gpus": [{"name": "NVIDIA H200", "driver": "570.86.15", "memory": "143771 MiB"}] * 2},
    }
    driver = doctor.driver_of({"driver": reading})
    assert (driver.version, driver.cuda, driver.cuda_from, driver.gpus) == ("570.86.15", "12.8", "table", 2)
    assert driver.names == ("NVIDIA H200", "NVIDIA H200")


def test_the_driver_from_proc_when_nothing_can_ask_it() -> None:
    driver = doctor.driver_of({"driver": {"proc_version": "550.54.14", "proc_gpus": 4, "nvml": {"loaded": False}}})
    assert (driver.version, driver.cuda, driver.gpus) == ("550.54.14", "12.4", 4)


@pytest.mark.parametrize(
    ("dmi", "cloud"),
    [
        ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "gcp"),
        ({"sys_vendor": "QEMU", "chassis_asset_tag": "OracleCloud.com"}, "oci"),
        ({"sys_vendor": "Oracle Corporation"}, "oci"),
        ({"sys_vendor": "Alibaba Cloud", "product_name": "Alibaba Cloud ECS"}, "aliyun"),
        ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, "other"),
        ({}, "other"),
    ],
)
def test_cloud_from_dmi(dmi: dict[str, str], cloud: str) -> None:
    assert doctor.cloud_of(dmi) == cloud


@pytest.mark.parametrize(("value", "setting"), [(True, "true"), (False, "false"), ("auto", "auto"), ("True", "true")])
def test_gpu_setting(value: object, setting: str) -> None:
    assert doctor.gpu_setting("h1", value) == setting


def test_gpu_setting_names_host_and_key() -> None:
    with pytest.raises(doctor.UsageError, match=r"^h1: inference_gpus: 'maybe' is not one of 'auto', true, false$"):
        doctor.gpu_setting("h1", "maybe")


# ---- the table ----------------------------------------------------------------------------------------


def test_table_fits_100_columns_and_names_each_reason() -> None:
    reports = [
        HostReport("gpu-node-17", GPU_HOST, gpu_host("535.183.01", "12.2", image=needs("12.4"))),
        HostReport("lab1", Intent(serves=False), readings()),
        HostReport("ghost", Intent(serves=False), None, "unreachable: ssh: connect refused"),
    ]
    reports = [HostReport(r.host, r.intent, r.readings, r.problem, doctor.decide(r.intent, r.readings))
               if r.readings else r for r in reports]  # fmt: skip
    lines = doctor.table(reports)
    header, gpu, plain, ghost = lines[:4]
    assert all(len(line) <= 100 for line in lines[:4]), "\n".join(lines)
    assert header.split()[:3] == ["HOST", "CLOUD", "VIRT"]
    assert gpu.split() == ["gpu-node-17", "other", "absent", "1/1", "535.183.01", "12.2", "no", "no", "UEFI",
                           "nvidia", "absent", "blocked"]  # fmt: skip
    assert plain.split()[-3:] == ["runc", "absent", "ok"]
    assert ghost.split()[-1] == "unreachable"
    assert "gpu-node-17: blocks serving: vllm/vllm-openai:v0.6.3 needs CUDA 12.4" in "\n".join(lines)
    assert "ghost: unreachable: ssh: connect refused" in lines


# ---- the command, on this machine through a local connection ------------------------------------------


@pytest.fixture
def doctor_inventory(local_inventory: Path, write: Callable[[str, str], Path]) -> Path:
    """The local host (no sudo needed: become is off) in the inference group."""
    write("inventory/serving.yml", "all:\n  children:\n    inference:\n      hosts:\n        local1:\n")
    write("inventory/group_vars/all.yml", "ansible_become: false\n")
    return local_inventory.parent


def test_doctor_json_holds_readings_and_verdicts(run_cli: Callable[..., CliResult], doctor_inventory: Path) -> None:
    result = run_cli("doctor", "-i", str(doctor_inventory), "--json", "-e", "inference_gpus=false")
    (report,) = json.loads(result.out)
    assert report["host"] == "local1" and report["intent"]["serves"] is True
    assert set(report["readings"]) >= {"cloud", "cpu", "pci", "driver", "docker", "disks", "model_dir", "selinux"}
    assert result.code == (1 if report["blocks"] else 0)


def test_doctor_exits_1_naming_host_and_reason(run_cli: Callable[..., CliResult], doctor_inventory: Path) -> None:
    if Path("/dev/nvidia0").exists():
        pytest.fail("this test needs a machine without NVIDIA GPUs")
    result = run_cli("doctor", "-i", str(doctor_inventory), "-e", "inference_gpus=true")
    assert result.code == 1, result.out + result.err
    assert "provision: local1: cannot serve: inference_gpus is true but no NVIDIA driver is loaded" in result.err
    assert result.out.splitlines()[0].split()[0] == "HOST"


def test_doctor_rejects_a_bad_gpu_setting_before_contacting(
    run_cli: Callable[..., CliResult], doctor_inventory: Path
) -> None:
    result = run_cli("doctor", "-i", str(doctor_inventory), "-e", "inference_gpus=maybe")
    assert result.code == 2
    assert result.err.strip() == "provision: error: local1: inference_gpus: 'maybe' is not one of 'auto', true, false"


def test_an_image_only_a_run_can_resolve_is_left_unchecked(
    run_cli: Callable[..., CliResult], doctor_inventory: Path
) -> None:
    result = run_cli(
        "doctor", "-i", str(doctor_inventory), "--json", "-e", "inference_image={{ a_fact_only_a_run_has }}"
    )
    (report,) = json.loads(result.out)
    assert report["intent"]["image"] == "" and report["readings"]["image"] == {"name": "", "present": False}


# ---- upstreams: which answer directly, which need a way out ---------------------------------------------

VPN_HOST = Intent(
    serves=False,
    tunnel_device="tun-egress",
    upstreams=(doctor.Upstream("relay /openai/", "api.example.com", 443),),
)


def probe(host: str, answers: bool, device: str = "eth0", error: str = "", label: str = "relay /openai/") -> dict:
    route = f"203.0.113.7 via 10.0.2.2 dev {device} src 10.0.2.15 uid 0"
    return {"label": label, "host": host, "port": 443, "answers": answers, "address": "203.0.113.7",
            "route": route, "error": error}  # fmt: skip


def probed(*probes: dict) -> dict[str, Any]:
    """PLAIN (without its idle disk) with these upstream readings."""
    return readings(disks=[], upstreams=list(probes))


def test_upstreams_that_answer_are_notes_saying_how() -> None:
    verdict = doctor.decide(
        VPN_HOST, probed(probe("api.example.com", True), probe("hub.example.com", True, "tun-egress"))
    )
    assert not verdict.blocks and not verdict.warnings
    assert "upstream api.example.com:443 (relay /openai/) answers directly" in verdict.notes
    assert "upstream hub.example.com:443 (relay /openai/) answers through the tunnel tun-egress" in verdict.notes


def test_an_upstream_that_does_not_answer_directly_needs_a_way_out() -> None:
    verdict = doctor.decide(VPN_HOST, probed(probe("api.example.com", False, error="no answer in 3 s")))
    assert not verdict.blocks
    assert verdict.warnings == (
        "upstream api.example.com:443 (relay /openai/) does not answer directly (no answer in 3 s): it needs a way "
        "out (openvpn_client_destinations, an SSH tunnel, or a relay on a host that reaches it)",
    )


def test_an_upstream_silent_through_the_tunnel_says_so() -> None:
    silent = probe("10.79.0.1", False, "tun-egress", "Connection refused", label="openvpn_client_destinations")
    verdict = doctor.decide(VPN_HOST, probed(silent))
    assert verdict.warnings == (
        "upstream 10.79.0.1:443 (openvpn_client_destinations) does not answer through the tunnel tun-egress: "
        "Connection refused",
    )


def test_upstreams_come_from_the_relay_routes_and_the_single_host_destinations() -> None:
    variables = {
        "nginx_preset": "relay",
        "nginx_relay_routes": [
            {"path": "/openai/", "upstream": "https://api.openai.com/v1/"},
            {"path": "/hub/", "upstream": "https://hub.example.com:8443"},
            {"path": "/again/", "upstream": "https://api.openai.com/v2/"},
        ],
        "openvpn_client_destinations": ["203.0.113.0/24", "198.51.100.9", "2001:db8::1/128", "api.openai.com"],
    }
    assert doctor.upstreams_of(variables, relay=True, vpn=True) == (
        doctor.Upstream("relay /openai/", "api.openai.com", 443),
        doctor.Upstream("relay /hub/", "hub.example.com", 8443),
        doctor.Upstream("openvpn_client_destinations", "198.51.100.9", 443),
        doctor.Upstream("openvpn_client_destinations", "2001:db8::1", 443),
    )
    assert doctor.upstreams_of(variables, relay=False, vpn=False) == ()
    assert doctor.upstreams_of({**variables, "nginx_preset": "llm"}, relay=True, vpn=False) == ()


def test_doctor_tries_the_upstreams_from_the_host(
    run_cli: Callable[..., CliResult], doctor_inventory: Path, write: Callable[[str, str], Path]
) -> None:
    """On this machine: a relay upstream that listens answers directly, one whose port is closed needs a way out."""
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        up, down = listening.getsockname()[1], closed.getsockname()[1]
        write("inventory/gateway.yml", "all:\n  children:\n    gateway:\n      hosts:\n        local1:\n")
        settings = write(
            "relay.yml",
            "nginx_preset: relay\nnginx_relay_routes:\n"
            f"  - {{path: /up/, upstream: 'https://127.0.0.1:{up}/'}}\n"
            f"  - {{path: /down/, upstream: 'https://127.0.0.1:{down}/'}}\n",
        )
        result = run_cli("doctor", "-i", str(doctor_inventory), "-e", "inference_gpus=false", "-e", f"@{settings}")
    shown = result.out + result.err
    assert f"local1: upstream 127.0.0.1:{up} (relay /up/) answers directly" in shown, shown
    assert f"local1: warning: upstream 127.0.0.1:{down} (relay /down/) does not answer directly (" in shown, shown
    assert "it needs a way out" in shown
