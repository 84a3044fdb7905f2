"""The Transport protocol and CommandResult: what every node connection offers.

Implementations: `orchestrator.remote.ssh.SSHTransport` (OpenSSH servers, via Fabric/paramiko)
and `orchestrator.remote.local.LocalTransport` (`connection: local`). Get one per node with
`orchestrator.remote.group.transport_for(node, inventory)`, or a command's whole set with
`NodeGroup(inventory)` (orchestrator/remote/group.py), which also runs on many at once.

Errors (orchestrator.errors): ConnectError / HostKeyError (cannot reach or trust the node),
RemoteCommandError (non-zero exit with check=True; `.result` is the CommandResult),
CommandTimeout, TransferError (put/get failed, did not verify, or would escape the destination).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from orchestrate_bloom.tool_io import ToolFailure, read_result

from orchestrator.config.inventory import Node
from orchestrator.errors import RemoteError
from orchestrator.remote.files import LOG_MODE
from orchestrator.untrusted import loads_json, shown


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one command on one node (invoke's Result)."""

    node: str  # node name
    command: str  # the command line as run by the node's shell
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def tool_answer(res: CommandResult, what: str) -> dict[str, Any]:
    """The JSON object a node tool answered (`python -m orchestrate_bloom.ckpt.layout ...`, the
    collect-ckpt listing), read by the one node-tool protocol (orchestrate_bloom.tool_io:
    one JSON object on the last stdout line and exit 0, else its `error:` line), the node's
    way: JSON nesting limited (untrusted.loads_json), the reason one bounded, scrubbed line.

    Raises:
        RemoteError: `[node] what: reason`.
    """
    try:
        return read_result(res.stdout, res.stderr, res.exit_code, loads=loads_json)
    except ToolFailure as exc:
        raise RemoteError(res.node, f"{what}: {shown(str(exc))}") from None


class Transport(Protocol):
    """One node's connection; connects lazily, closes on `close()` or leaving `with`."""

    node: Node

    def open(self) -> None:
        """Connect now instead of on first use (ConnectError/HostKeyError); idempotent."""
        ...

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run `cmd` (a list is shlex-joined; a string goes to the shell as is)."""
        ...

    def put(self, local: Path, remote: PurePosixPath, *, mode: int | None = None) -> None:
        """Upload atomically (temp name + rename), preserving mode unless `mode` is given."""
        ...

    def get(self, remote: PurePosixPath, local: Path, *, mode: int = LOG_MODE) -> None:
        """Download a regular file atomically to `local`, bounded by the size the node
        announced, with `mode` (read/write bits only: a node never chooses a local mode)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc: object) -> None: ...
