"""What MindSpore's dynamic cluster needs of the nodes together (part of `orchestrate check`).

    orchestrate check -i inventories/12node.yaml -c 7.1b --sched-port 8118

- The scheduler port is reachable FROM every node, not only free on the first: in the same
  probe round, the first node (rank order) binds the port and accepts connections for up to
  a bounded time (or until every node has connected), while every node, the first
  included, connects to it at the address the launch scripts give MS_SCHED_HOST (the listener
  waits LISTEN_BASE_S + LISTEN_PER_NODE_S per node at most). Nothing is left listening: the
  listener is part of the first node's probe command and ends with it.
- Nodes on different machines have different hostnames: MindSpore's dynamic cluster collects
  every node's hostname (the scheduler's host-name query) and counts the ranks that share one
  as one machine's local ranks, which pick its devices. Two inventory nodes on the same machine
  (same /etc/machine-id and boot id: loopback test hosts, one host listed twice) share it
  truthfully and pass.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.job.check import Item, NodeCheck

CONNECT_S = 5.0  # each node keeps trying to connect this long (from its own start)
# The first node accepts connections until every node connected, or this long at most: long
# enough for the last batch of a fan-out (--forks) to start and connect.
LISTEN_BASE_S, LISTEN_PER_NODE_S = 8.0, 0.05
HOSTNAME_FIX = ("give every node its own hostname (hostnamectl set-hostname NAME): MindSpore's "
                "dynamic cluster tells nodes apart by hostname")


def _listener(nodes: int, port: int, key: str) -> str:
    return "\n".join([
        "import os, socket, time",
        "s = socket.socket()",
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        f"try: s.bind(('', {port}))",
        f"except OSError: os.write(1, b'{key}=busy\\n'); raise SystemExit",
        f"os.write(1, b'{key}=free\\n')",  # one write each: probes run side by side
        "s.listen(64); s.settimeout(0.2)",
        f"end, n = time.time() + {LISTEN_BASE_S + LISTEN_PER_NODE_S * nodes}, 0",
        f"while n < {nodes} and time.time() < end:",
        "    try: c, _ = s.accept()",
        "    except OSError: continue",
        "    n += 1; c.settimeout(1)",
        "    try: c.recv(1)",  # the node closes first: TIME_WAIT stays on its side, so the
        "    except OSError: pass",  # scheduler can bind the port right after the check
        "    c.close()",
    ])


def _connector(host: str, port: int, key: str) -> str:
    return "\n".join([
        "import os, socket, time",
        f"end, err = time.time() + {CONNECT_S}, 'no answer'",
        "while time.time() < end:",
        "    try:",
        f"        socket.create_connection(({host!r}, {port}), timeout=2).close()",
        f"        os.write(1, b'{key}=ok\\n'); break",
        "    except OSError as e:",
        "        err = e.strerror or type(e).__name__; time.sleep(0.2)",
        f"else: os.write(1, ('{key}=' + err + '\\n').encode())",
    ])


def port_probe(python: str, first: bool, nodes: int, host: str, port: int,
               free_key: str = "port", reach_key: str = "reach") -> str:
    """Shell lines printing `<reach_key>=ok|<error>` (every node) and `<free_key>=free|busy`
    (the first node, which listens meanwhile)."""
    py = shlex.quote(python)
    connect = (f"{py} -c {shlex.quote(_connector(host, port, reach_key))} 2>/dev/null "
               f"|| echo {reach_key}=failed")
    if not first:
        return connect
    listen = f"{py} -c {shlex.quote(_listener(nodes, port, free_key))} 2>/dev/null"
    return f"{{ {listen}; }} & {{ sleep 0.1; {connect}; }}; wait"


def cluster_probe(python: str, first: bool, nodes: int, host: str, sched_port: int,
                  tft_port: int | None) -> str:
    """The scheduler port probe, and MindIO TFT's controller port when the inventory asks."""
    sched = port_probe(python, first, nodes, host, sched_port)
    if tft_port is None:
        return sched
    tft = port_probe(python, first, nodes, host, tft_port, "tft_port", "tft_reach")
    return f"{{ {sched}; }} & {{ {tft}; }} & wait"  # at once: neither waits for the other


def tft_item(out: dict[str, str], node: str, first: bool, first_name: str, host: str,
             port: int) -> Item:
    """The `tft` check: the TFT controller's port free on the first node, reachable from all."""
    from orchestrator.job.check import Item

    seen, free = out.get("tft_reach", ""), out.get("tft_port", "free" if not first else "")
    ok = seen == "ok" and free == "free"
    value = (f"{host}:{port} free and reachable" if ok else
             f"{host}:{port} busy on {first_name}" if free != "free" else
             f"cannot reach {host}:{port} ({first_name}): {seen or 'no answer'}")
    return Item("tft", ok, value, f"free TCP port {port} on {first_name} and let {node} reach it, "
                "or change `fault_tolerance.tft_port`")


def reach_item(out: dict[str, str], node: str, first: str, host: str, port: int) -> Item:
    """The `sched` check of one node: could it connect to the scheduler port?"""
    from orchestrator.job.check import Item

    seen = out.get("reach", "")
    return Item("sched", seen == "ok",
                f"reaches {host}:{port}" if seen == "ok"
                else f"cannot reach {host}:{port} ({first}): {seen or 'no answer'}",
                f"let {node} reach TCP port {port} on {first} (firewall, routes) or pass "
                "--sched-port")


def _machine(check: NodeCheck) -> str:
    """The node's machine identity (machine-id/boot id) from its probe; "" when unknown."""
    ident = next((i.value for i in check.items if i.name == "machine"), "")
    return "" if ident.strip("/") == "" else ident


def flag_same_hostnames(checks: Sequence[NodeCheck]) -> list[NodeCheck]:
    """Mark the `hostname` item of nodes that share a hostname with a node on another machine
    (an unknown machine identity counts as another machine)."""
    from orchestrator.job.check import Item, NodeCheck

    owners: dict[str, list[tuple[str, str]]] = {}
    for c in checks:
        for i in c.items:
            if i.name == "hostname" and i.ok:
                owners.setdefault(i.value, []).append((c.node, _machine(c)))
    out = []
    for c in checks:
        items = []
        mine = _machine(c)
        for i in c.items:
            others = [n for n, m in owners.get(i.value, [])
                      if n != c.node and (not mine or m != mine)]
            if i.name == "hostname" and i.ok and others:
                i = Item("hostname", False, f"{i.value} (same as {', '.join(others)})",
                         HOSTNAME_FIX)
            items.append(i)
        out.append(NodeCheck(c.node, tuple(items)))
    return out
