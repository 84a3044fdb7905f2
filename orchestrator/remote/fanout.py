"""Run one thing on many nodes at once with a bounded pool (fabric's ThreadingGroup, typed).

    with open_all(inv) as nodes:
        res = run_all(nodes, "nproc", forks=64, timeout=30)
        for name, r in res.succeeded.items(): print(name, r.stdout)
        for name, exc in res.failed.items(): print(name, exc)
        res.raise_on_failure()                # FanoutError listing every failed node

    res = map_nodes(nodes, lambda t: t.get(PurePosixPath("/x"), Path(f"out/{t.node.name}")))

Never stops early: every node runs to completion (or its own error), and each outcome is the
node's result or the exception it raised (any Exception; KeyboardInterrupt and friends
propagate after the pool drained). `run_all(check=True)` (the
default) counts a non-zero exit as failure: a RemoteCommandError holding the CommandResult.
Connect retries happen inside each transport (connect errors only); commands never retry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator.errors import FanoutError
from orchestrator.remote.transport import CommandResult, Transport

T = TypeVar("T")
DEFAULT_FORKS = 64


@dataclass(frozen=True)
class FanoutResult(Generic[T]):
    """Every node's outcome, in the order the nodes were given."""

    outcomes: dict[str, T | BaseException]

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


def _as_dict(transports: Mapping[str, Transport] | Sequence[Transport]) -> dict[str, Transport]:
    if isinstance(transports, Mapping):
        return dict(transports)
    return {t.node.name: t for t in transports}


def map_nodes(transports: Mapping[str, Transport] | Sequence[Transport],
              fn: Callable[[Transport], T], *, forks: int = DEFAULT_FORKS,
              on_done: Callable[[str, T | BaseException], None] | None = None) -> FanoutResult[T]:
    """Call `fn(transport)` for every node, at most `forks` at a time.

    Args:
        transports: {name: transport} or a sequence of transports (keyed by node name).
        fn: the work for one node; its exceptions are stored as that node's outcome.
        forks: pool size (>= 1).
        on_done: called (from the worker thread, serialised by the caller if needed) as each
            node finishes, e.g. to print output as it arrives.
    """
    nodes = _as_dict(transports)
    if forks < 1:
        raise ValueError(f"forks must be >= 1, got {forks}")
    outcomes: dict[str, T | BaseException] = {}

    def one(name: str, t: Transport) -> None:
        try:
            value: T | BaseException = fn(t)
        except Exception as e:  # noqa: BLE001 - stored per node, like fabric's GroupResult
            value = e
        outcomes[name] = value
        if on_done is not None:
            on_done(name, value)

    if not nodes:
        return FanoutResult({})
    with ThreadPoolExecutor(max_workers=min(forks, len(nodes)),
                            thread_name_prefix="fanout") as pool:
        futures = [pool.submit(one, name, t) for name, t in nodes.items()]
    for f in futures:
        f.result()  # re-raises BaseExceptions (KeyboardInterrupt, SystemExit) after the drain
    return FanoutResult({name: outcomes[name] for name in nodes})


def run_all(transports: Mapping[str, Transport] | Sequence[Transport], cmd: Sequence[str] | str,
            *, forks: int = DEFAULT_FORKS, timeout: float | None = None,
            env: Mapping[str, str] | None = None, check: bool = True,
            on_done: Callable[[str, CommandResult | BaseException], None] | None = None,
            ) -> FanoutResult[CommandResult]:
    """Run `cmd` on every node concurrently; see `map_nodes` and `Transport.run`.

    With `check=True` a non-zero exit is a failure (RemoteCommandError with `.result`);
    with `check=False` it is a CommandResult in `succeeded`. Never raises for node failures:
    call `raise_on_failure()` on the result for one error listing every failed node.
    """
    return map_nodes(transports, lambda t: t.run(cmd, check=check, timeout=timeout, env=env),
                     forks=forks, on_done=on_done)
