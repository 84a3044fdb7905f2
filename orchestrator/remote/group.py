"""One node group per command: a transport per node, opened once, shared by every fan-out.

    with NodeGroup(inv, inv.in_rank_order(), forks=64) as group:   # handshakes start now
        res = group.run("hostname")                    # GroupResult[CommandResult]
        res = group.map(probe, ["node0", "node1"])     # any callable(Transport) -> T
        for name, value in res.succeeded.items(): ...
        for name, exc in res.failed.items(): print(name, cause(exc))
        res.raise_on_failure()                         # FanoutError naming every failed node

The shape of Fabric's ThreadingGroup / GroupResult, typed. A group covers the whole
inventory: `nodes` are the ones it starts connecting to at once (in the background, so the
handshakes overlap local work such as planning and rendering); any other inventory node is
opened on first use. Every node runs to completion or its own error (stored as its outcome;
KeyboardInterrupt and friends propagate after the pool drained). A node whose command timed
out or whose connection failed is dropped: its next use connects afresh (a network partition
leaves a TCP connection open whose retransmissions back off to a minute). Leaving the `with`
closes every transport. Commands never retry; connects retry inside each transport.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from orchestrator.config.inventory import Connection, Inventory, Node
from orchestrator.errors import CommandTimeout, ConnectError, FanoutError, RemoteError
from orchestrator.remote.transport import CommandResult, Transport

T = TypeVar("T")
DEFAULT_FORKS = 64


def cause(exc: BaseException) -> str:
    """What went wrong on a node, without the `[node] ` its RemoteError message starts with."""
    if isinstance(exc, RemoteError):
        return exc.detail
    return str(exc) or type(exc).__name__


class GroupResult(Mapping[str, "T | BaseException"]):
    """Every node's outcome (its value, or the exception it raised), in the order asked."""

    def __init__(self, outcomes: Mapping[str, T | BaseException]) -> None:
        self.outcomes: dict[str, T | BaseException] = dict(outcomes)

    def __getitem__(self, name: str) -> T | BaseException:
        return self.outcomes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> dict[str, T]:
        return {k: v for k, v in self.outcomes.items() if not isinstance(v, BaseException)}

    @property
    def failed(self) -> dict[str, BaseException]:
        return {k: v for k, v in self.outcomes.items() if isinstance(v, BaseException)}

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_on_failure(self) -> None:
        """Raise FanoutError (naming every failed node) if any node failed."""
        if self.failed:
            raise FanoutError(self)


def transport_for(node: Node, inventory: Inventory, **ssh_options: Any) -> Transport:
    """The transport for `node`; `ssh_options` override SSHOptions fields (e.g. connect_timeout).

    `connection: ssh` nodes get an SSHTransport configured from the inventory (known_hosts,
    host_key_policy, ssh_config), `connection: local` ones a LocalTransport. Imports
    paramiko/fabric only when an SSH node is asked for; nothing connects until first use.
    """
    if node.connection is Connection.LOCAL:
        from orchestrator.remote.local import LocalTransport

        return LocalTransport(node)
    from orchestrator.remote.ssh import SSHOptions, SSHTransport

    return SSHTransport(node, SSHOptions.from_inventory(inventory, **ssh_options))


NodeNames = Iterable["str | Node"]


class NodeGroup:
    """Transports to an inventory's nodes for one command; see the module docstring.

    Args:
        inventory: where nodes are looked up by name.
        nodes: the nodes to connect to now (default: every inventory node); `map` and `run`
            default to these.
        forks: nodes worked on at once (>= 1).
        warm: start connecting to `nodes` in the background now (False: on first use).
        ssh_options: SSHOptions overrides for every SSH node (e.g. connect_timeout=10).
    """

    def __init__(self, inventory: Inventory, nodes: Sequence[Node] | None = None, *,
                 forks: int = DEFAULT_FORKS, warm: bool = True, **ssh_options: Any) -> None:
        if forks < 1:
            raise ValueError(f"forks must be >= 1, got {forks}")
        self.inventory = inventory
        self.forks = forks
        self.nodes: tuple[Node, ...] = tuple(inventory.nodes if nodes is None else nodes)
        self._ssh_options = ssh_options
        self._lock = threading.Lock()
        self._transports: dict[str, Transport] = {}
        self._pending: dict[str, Future[None]] = {}
        self._warm: ThreadPoolExecutor | None = None
        if warm and self.nodes:
            self._warm = ThreadPoolExecutor(max_workers=min(forks, len(self.nodes)),
                                            thread_name_prefix="connect")
            for n in self.nodes:
                t = self._transport(n)
                self._pending[n.name] = self._warm.submit(t.open)

    @classmethod
    def of(cls, transports: Sequence[Transport], inventory: Inventory | None = None, *,
           forks: int = DEFAULT_FORKS) -> NodeGroup:
        """A group over transports made elsewhere (e.g. scripted fakes in unit tests)."""
        group = cls.__new__(cls)
        group.inventory = inventory  # type: ignore[assignment]
        group.forks = forks
        group.nodes = tuple(t.node for t in transports)
        group._ssh_options = {}
        group._lock = threading.Lock()
        group._transports = {t.node.name: t for t in transports}
        group._pending = {}
        group._warm = None
        return group

    def _transport(self, node: Node) -> Transport:
        with self._lock:
            t = self._transports.get(node.name)
            if t is None:
                t = self._transports[node.name] = transport_for(node, self.inventory,
                                                                **self._ssh_options)
            return t

    def transport(self, name: str) -> Transport:
        """The node's transport, once its background connect finished (its error, once)."""
        with self._lock:
            future = self._pending.pop(name, None)
        if future is not None:
            future.result()
        with self._lock:
            t = self._transports.get(name)
        return t if t is not None else self._transport(self.inventory.node(name))

    def wait_connected(self) -> None:
        """Wait until every background connect has finished (a failed one is raised later, by
        the node's next use); a phase boundary for timing, never needed for correctness."""
        with self._lock:
            pending = list(self._pending.values())
        wait(pending)

    def connect_failed(self) -> list[str]:
        """The nodes whose background connect has already failed (auth refused, no route, a
        changed host key); each one's error is raised by its next use."""
        with self._lock:
            pending = list(self._pending.items())
        return [name for name, f in pending if f.done() and f.exception() is not None]

    def drop(self, name: str) -> None:
        """Close the node's connection: its next use connects afresh."""
        with self._lock:
            t = self._transports.get(name)
        if t is not None:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def map(self, fn: Callable[[Transport], T], nodes: NodeNames | None = None, *,
            on_done: Callable[[str, T | BaseException], None] | None = None,
            ) -> GroupResult[T]:
        """Call `fn(transport)` for every node (default: the group's), `forks` at a time.

        `on_done(name, outcome)` is called from the worker thread as each node finishes
        (serialise output yourself), e.g. to print output as it arrives.
        """
        names = [n if isinstance(n, str) else n.name
                 for n in (self.nodes if nodes is None else nodes)]
        outcomes: dict[str, T | BaseException] = {}

        def one(name: str) -> None:
            try:
                value: T | BaseException = fn(self.transport(name))
            except Exception as e:  # noqa: BLE001 - stored per node, like fabric's GroupResult
                if isinstance(e, (CommandTimeout, ConnectError)):
                    self.drop(name)
                value = e
            outcomes[name] = value
            if on_done is not None:
                on_done(name, value)

        if not names:
            return GroupResult({})
        with ThreadPoolExecutor(max_workers=min(self.forks, len(names)),
                                thread_name_prefix="group") as pool:
            futures = [pool.submit(one, name) for name in names]
        for f in futures:
            f.result()  # re-raises BaseExceptions (KeyboardInterrupt, SystemExit) after the drain
        return GroupResult({name: outcomes[name] for name in names})

    def run(self, cmd: Sequence[str] | str, nodes: NodeNames | None = None, *,
            check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None,
            on_done: Callable[[str, CommandResult | BaseException], None] | None = None,
            ) -> GroupResult[CommandResult]:
        """Run `cmd` on every node (see `Transport.run`); with `check=True` a non-zero exit is
        that node's RemoteCommandError (`.result` holds the CommandResult)."""
        return self.map(lambda t: t.run(cmd, check=check, timeout=timeout, env=env), nodes,
                        on_done=on_done)

    def close(self) -> None:
        """Close every transport (best effort: a close that fails is not raised)."""
        if self._warm is not None:
            for future in self._pending.values():
                future.cancel()
            self._warm.shutdown(wait=True)
        with self._lock:
            transports = list(self._transports.values())
        for t in transports:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> NodeGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def node_address(node: Node, inventory: Inventory) -> str:
    """The address `node` is reached at: ssh_config's HostName for an alias (`ssh -G`), else
    `host`. Other nodes use it too (msrun's scheduler address), so an alias never leaks there.
    """
    if node.connection is Connection.LOCAL:
        return node.host
    from orchestrator.remote.sshconfig import resolve

    return resolve(node, inventory.ssh_config).hostname
