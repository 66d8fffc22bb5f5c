"""Checks for the serving roles (inference, nginx): functions that take a testinfra host and list problems.

Requests are made on the host itself by llm_client.py (standard library only), sent along in the command,
so the checks need nothing on the host but python3.
"""

import base64
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provision.smoke import llm_client

CLIENT = base64.b64encode((Path(__file__).parent / "llm_client.py").read_bytes()).decode()


def replica_units(variables: dict[str, Any]) -> list[tuple[str, int]]:
    """(unit name, host port) of each replica, named as the inference role names them."""
    name, port, count = (
        str(variables["inference_name"]),
        int(variables["inference_port"]),
        int(variables["inference_replicas"]),
    )
    if count == 1:
        return [(name, port)]
    return [(f"{name}-{n}", port + n - 1) for n in range(1, count + 1)]


def probe_host(variables: dict[str, Any]) -> str:
    address = str(variables["inference_bind_address"])
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]"}.get(address, address)


def run_client(host: Any, *args: str) -> tuple[dict[str, Any] | None, str]:
    """The client's JSON answer, or None and the reason it gave none."""
    result = host.run(f"echo {CLIENT} | base64 -d | python3 - " + " ".join(args))
    if result.rc != 0:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return llm_client.answer(result.stdout), ""


def replica_problems(host: Any, variables: dict[str, Any]) -> list[str]:
    problems = []
    for unit, port in replica_units(variables):
        if not host.service(f"{unit}.service").is_running:
            problems.append(f"{unit}.service is not running")
            continue
        url = f"http://{probe_host(variables)}:{port}"
        reply, error = run_client(host, "complete", url, "--tokens", "1")
        if reply is None or reply["status"] != 200:
            problems.append(f"{unit} on port {port} does not answer a completion: {error or reply}")
    return problems


def gateway_problems(host: Any, variables: dict[str, Any]) -> list[str]:
    problems = []
    with host.sudo():
        checked = host.run("nginx -t -q")
    if checked.rc != 0:
        problems.append(f"nginx -t fails: {checked.stderr.strip()[:300]}")
    if not host.service("nginx").is_running:
        return [*problems, "nginx is not running"]
    if variables.get("nginx_tls"):
        profile = str(variables["nginx_tls_profile"])
        with host.sudo():
            config = host.run("nginx -T")
        problems += tls_profile_drift(config.stdout, tls_profiles()[profile], profile)
    if variables.get("nginx_preset") == "relay":
        return problems + relay_problems(host, variables)
    if variables.get("nginx_basic_auth_users"):
        return problems  # the checks below would need a password; they run on gateways without auth
    scheme, port = (
        ("https", variables["nginx_tls_port"]) if variables.get("nginx_tls") else ("http", variables["nginx_port"])
    )
    url = f"{scheme}://127.0.0.1:{int(port)}"
    streamed, error = run_client(host, "stream", url, "--tokens", "8")
    if streamed is None:
        problems.append(f"a streamed completion through nginx failed: {error}")
    elif streamed["status"] != 200 or streamed["separate_arrivals"] < 2:
        problems.append(f"a streamed completion through nginx arrived in one piece (buffered?): {streamed}")
    if scheme == "http":
        echoed, error = run_client(host, "websocket", url)
        if echoed is None or echoed["status"] != 101:
            problems.append(f"a websocket upgrade through nginx was not answered with 101: {error or echoed}")
    return problems


def relay_expected_status(variables: dict[str, Any]) -> int | None:
    """What a request from the relay host itself without credentials must get: 403 when the allow-list leaves out
    127.0.0.1, else 401 behind basic auth; None when it is let through (the upstream answers)."""
    sources = [str(source) for source in variables.get("nginx_allow_from") or [] if ":" not in str(source)]
    loopback = ipaddress.ip_address("127.0.0.1")
    if variables.get("nginx_allow_from") and not any(
        loopback in ipaddress.ip_network(source, strict=False) for source in sources
    ):
        return 403
    return 401 if variables.get("nginx_basic_auth_users") else None


def relay_problems(host: Any, variables: dict[str, Any]) -> list[str]:
    """Each relay route, asked from the host without credentials: refused as configured, or answered by its
    upstream (not 502/504: nginx could not reach it, or refused its certificate). A request with the password
    would have to carry it in a command line on the host, so the password itself is left to the integration tests."""
    expected = relay_expected_status(variables)
    problems = []
    for route in variables.get("nginx_relay_routes") or []:
        url = f"https://127.0.0.1:{int(variables['nginx_tls_port'])}{route['path']}"
        reply, error = run_client(host, "status", url)
        if reply is None:
            problems.append(f"the relay route {route['path']} does not answer: {error}")
        elif expected is not None and reply["status"] != expected:
            problems.append(f"the relay route {route['path']} answered {reply['status']} without credentials, "
                            f"expected {expected}")  # fmt: skip
        elif expected is None and reply["status"] in (401, 403, 502, 503, 504):
            problems.append(f"the relay route {route['path']} answered {reply['status']}: {route['upstream']} "
                            "unreachable, its certificate refused, or access denied")  # fmt: skip
    return problems


def tls_profiles() -> Mapping[str, Mapping[str, Any]]:
    """The nginx role's Mozilla profiles (__nginx_tls_profiles in its vars/main.yml): the ones it writes from."""
    from provision import argcheck, paths

    return dict(argcheck.role_vars(paths.ROLES / "nginx")["__nginx_tls_profiles"])


def tls_profile_drift(config: str, profile: Mapping[str, Any], name: str) -> list[str]:
    """Where `nginx -T` output sets ssl_protocols, ssl_ciphers or ssl_ecdh_curve otherwise than `profile`.

    Every occurrence counts (a conf.d file can set them too); a directive nowhere set falls back to nginx's
    default (TLS 1.0 and 1.1 included), which is drift as well. The modern profile has no TLS 1.2 list to check.
    """
    expected = {"ssl_protocols": " ".join(profile["protocols"]), "ssl_ecdh_curve": ":".join(profile["curves"])}
    if profile["ciphers"]:
        expected["ssl_ciphers"] = ":".join(profile["ciphers"])
    found: dict[str, list[str]] = {}
    for line in config.splitlines():
        words = line.split("#", 1)[0].strip().rstrip(";").split(None, 1)
        if len(words) == 2 and words[0] in expected:
            found.setdefault(words[0], []).append(" ".join(words[1].split()))
    where = f"nginx_tls_profile {name}; provision up restores it"
    return [
        f"nginx sets {directive} {value}, expected {want} ({where})"
        for directive, want in expected.items()
        for value in found.get(directive, [])
        if value != want
    ] + [
        f"nginx sets no {directive}, expected {want} ({where})"
        for directive, want in expected.items()
        if directive not in found
    ]
