"""The OrchestrateError tree: every expected failure, each carrying its data."""

from __future__ import annotations

from typing import Any

from orchestrator.untrusted import shown


class OrchestrateError(Exception):
    """Expected failure; the CLI prints it as one line without a traceback (exit 1)."""


class InventoryError(OrchestrateError):
    """The inventory file is missing, malformed or inconsistent."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        self.detail = message
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(f"{where}{message}")


class PresetError(OrchestrateError):
    """A preset or a `--set` override is unknown, mistyped or inconsistent."""


class RankTableError(OrchestrateError):
    """A rank table cannot be built, merged or validated."""


class RemoteError(OrchestrateError):
    """Something failed on or on the way to a node."""

    def __init__(self, node: str, message: str) -> None:
        self.node = node
        self.detail = message  # the cause alone, without the node
        super().__init__(f"[{node}] {message}")


class ConnectError(RemoteError):
    """The node could not be reached or refused us (refused, no route, DNS, auth, host key)."""


class SSHConfigError(ConnectError):
    """ssh_config cannot be evaluated for a node; names the node, the alias and, when OpenSSH
    reports one, the config file and line."""

    def __init__(self, node: str, alias: str, message: str) -> None:
        self.alias = alias
        super().__init__(node, f"ssh_config for {alias!r}: {message}")


class HostKeyError(ConnectError):
    """The node's host key is unknown or changed; names the known_hosts file to fix."""


class RemoteCommandError(RemoteError):
    """A command exited non-zero on a node (raised only when `check=True`)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr else []
        why = f": {shown(tail[0])}" if tail else ""  # a node's text: bounded, no escapes
        super().__init__(result.node, f"`{result.command}` exited {result.exit_code}{why}")


class CommandTimeout(RemoteError):
    """A command did not finish within its timeout."""


class OutputTooLarge(RemoteError):
    """A command printed more than the output cap (ORCHESTRATE_MAX_OUTPUT)."""


class TransferError(RemoteError):
    """A put/get failed, or its size/sha256 did not verify, or a path would escape."""


class DeviceDiscoveryError(RemoteError, RankTableError):
    """A node's device IPs (or super device ids) could not be discovered."""


class FanoutError(OrchestrateError):
    """One or more nodes failed in a fan-out; `.result` holds every node's outcome."""

    def __init__(self, result: Any) -> None:
        self.result = result
        failed = result.failed
        parts = [f"{name}: {exc}" for name, exc in failed.items()]
        super().__init__(
            f"{len(failed)} of {len(result.outcomes)} nodes failed: " + "; ".join(parts)
        )


class JobError(OrchestrateError):
    """A job cannot be started, found, or stopped as asked."""


class ManifestError(OrchestrateError):
    """A Kubernetes manifest orchestrate generated (or was given) is refused by its schema."""

    def __init__(self, where: str, path: str, message: str) -> None:
        self.where = where  # "AscendJob tiny-k3f9" or a file name
        self.path = path  # the field, e.g. "spec.replicaSpecs.Worker.replicas" ("" for the root)
        self.detail = message
        super().__init__(f"{where}: {path or '(root)'}: {message}")


class CheckpointError(OrchestrateError):
    """Checkpoints cannot be chosen, gathered, verified or transformed."""


class ModelError(OrchestrateError):
    """Model-side work (data, conversion, inference) failed with a clear cause."""

