"""`check` in msrun mode: a hostname shared by nodes on different machines is refused (MindSpore
counts the ranks of one hostname as one machine's local ranks); nodes on the same machine
(same machine-id and boot id: loopback test hosts, one host listed twice) share it and pass."""

from __future__ import annotations

from orchestrator.job.check import Item, NodeCheck
from orchestrator.job.check_cluster import HOSTNAME_FIX, flag_same_hostnames


def node(name: str, hostname: str, machine: str) -> NodeCheck:
    return NodeCheck(name, (Item("ssh", True, "ok"), Item("hostname", True, hostname,
                                                          HOSTNAME_FIX),
                            Item("machine", True, machine)))


def hostname_of(checks: list[NodeCheck], name: str) -> Item:
    check = next(c for c in checks if c.node == name)
    return next(i for i in check.items if i.name == "hostname")


def test_same_hostname_on_other_machines_is_refused_on_the_same_machine_passes() -> None:
    checks = flag_same_hostnames([
        node("a", "worker", "m1/b1"), node("b", "worker", "m2/b2"),  # cloned hostnames
        node("c", "box", "m3/b3"), node("c-again", "box", "m3/b3"),  # one machine, twice
        node("d", "solo", "m4/b4"), node("e", "shared", "/"), node("f", "shared", "/")])
    assert hostname_of(checks, "a") == Item("hostname", False, "worker (same as b)", HOSTNAME_FIX)
    assert hostname_of(checks, "b").value == "worker (same as a)"
    assert hostname_of(checks, "c").ok and hostname_of(checks, "c-again").ok
    assert hostname_of(checks, "d").ok
    # machine identity unknown (no /etc/machine-id, no boot id): other machines, refused
    assert not hostname_of(checks, "e").ok and not hostname_of(checks, "f").ok
    same_id_other_boot = flag_same_hostnames([node("a", "w", "m1/b1"), node("b", "w", "m1/b2")])
    assert not hostname_of(same_id_other_boot, "a").ok  # a cloned image's machine-id
