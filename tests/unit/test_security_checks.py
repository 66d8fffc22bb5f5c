"""The security smoke checks' pure parts: the rule text, its place before the REJECT, the login argv."""

from provision.smoke import security_checks as sec

OCI = [
    "-P INPUT ACCEPT",
    "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
]


def test_iptables_rule_matches_the_oci_form() -> None:
    assert sec.iptables_rule({"port": 22}) == OCI[2]
    assert sec.iptables_rule({"port": 53, "proto": "udp"}).startswith("-A INPUT -p udp -m state --state NEW -m udp")


def test_rule_must_come_before_the_reject() -> None:
    rule = sec.iptables_rule({"port": 8080})
    assert sec._before_reject(rule, [*OCI[:3], rule, OCI[3]])
    assert not sec._before_reject(rule, [*OCI, rule])
    assert not sec._before_reject(rule, OCI)


def test_key_login_argv_uses_no_shared_connection_and_the_inventory_args() -> None:
    argv = sec.key_login_argv(
        {
            "ansible_host": "127.0.0.1",
            "ansible_port": 2203,
            "ansible_user": "ops",
            "ansible_ssh_private_key_file": "/k/id",
            "ansible_ssh_common_args": "-o UserKnownHostsFile='/a b/kh' -o StrictHostKeyChecking=yes",
        },
        "lab3",
    )
    assert argv[:7] == ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes"]
    assert "UserKnownHostsFile=/a b/kh" in argv and argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2203"]
    assert argv[-2:] == ["ops@127.0.0.1", "true"]


def test_gateway_hosts_also_check_nginx_ports() -> None:
    gateway = {"group_names": ["inference", "gateway"], "firewall_ports": [{"port": 9100}], "nginx_port": 8080}
    assert [p["port"] for p in sec.firewall_ports(gateway)] == [9100, 8080]
    tls = {**gateway, "nginx_tls": True, "nginx_tls_port": 8443, "firewall_ports": [{"port": 8080}]}
    assert [p["port"] for p in sec.firewall_ports(tls)] == [8080, 8443]
    assert [p["port"] for p in sec.firewall_ports({**gateway, "firewall_open_gateway": False})] == [9100]
    assert [p["port"] for p in sec.firewall_ports({**gateway, "group_names": ["inference"]})] == [9100]
