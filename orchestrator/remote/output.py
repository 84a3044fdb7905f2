"""Command output from a node, collected with a cap per stream (ORCHESTRATE_MAX_OUTPUT).

    out, err, code = collect(chan, deadline, cap=max_output(), node="th0", line="launch.sh status")

A node decides what it prints, so every command's stdout and stderr are each capped at
`max_output()` bytes (ORCHESTRATE_MAX_OUTPUT, default 16 MiB): past the cap the channel is
closed and OutputTooLarge names the node, the command and the cap.
"""

from __future__ import annotations

import os
import re
import select
import time

import paramiko
from paramiko.ssh_exception import SSHException

from orchestrator.errors import OrchestrateError, OutputTooLarge
from orchestrator.untrusted import scrub

MAX_OUTPUT_ENV = "ORCHESTRATE_MAX_OUTPUT"
DEFAULT_MAX_OUTPUT = 16 << 20
EOF_GRACE = 5.0  # seconds to wait for the end of output after the exit status arrives
_SIZE = re.compile(r"([0-9]{1,15})([KMG]?)(i?B)?", re.IGNORECASE)


def max_output() -> int:
    """Bytes of stdout (and of stderr) one command may print: ORCHESTRATE_MAX_OUTPUT or 16 MiB.

    Raises:
        OrchestrateError: the variable is not a size such as 4194304, 512K, 64M or 1G.
    """
    text = os.environ.get(MAX_OUTPUT_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_OUTPUT
    m = _SIZE.fullmatch(text)
    if m is None or int(m[1]) == 0:
        raise OrchestrateError(f"{MAX_OUTPUT_ENV}={text[:40]!r}: expected a size in bytes "
                               "such as 16M, 512K or 1G")
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


def collect(chan: paramiko.Channel, deadline: float | None, cap: int, node: str,
            line: str) -> tuple[bytes, bytes, int | None]:
    """Read stdout/stderr until the exit status and the end of output; exit None on `deadline`.

    sshd sends the exit status when the command exits, which can be before the last of its
    output (still in sshd's pipe) is sent: the output is complete only at EOF. A background
    process that keeps the output open gets `EOF_GRACE` seconds after the exit status, then
    what arrived is returned (`ssh` itself would wait for it).

    Raises:
        OutputTooLarge: stdout or stderr went past `cap` bytes (the caller closes the channel).
    """
    out, err = bytearray(), bytearray()
    fd = chan.fileno()  # readable when either stream has data or the channel closes
    exited_at: float | None = None
    while True:
        while chan.recv_ready():
            out += chan.recv(1 << 16)
            _check(out, cap, node, line, "stdout")
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
            _check(err, cap, node, line, "stderr")
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            exited_at = time.monotonic() if exited_at is None else exited_at
            if (chan.eof_received or chan.closed
                    or time.monotonic() - exited_at >= EOF_GRACE):
                return bytes(out), bytes(err), chan.recv_exit_status()
        if chan.closed and not chan.exit_status_ready():
            raise SSHException("channel closed without an exit status")
        wait = 0.2
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(err), None
            wait = min(wait, left)
        select.select([fd], [], [], wait)


def _check(buf: bytearray, cap: int, node: str, line: str, stream: str) -> None:
    if len(buf) > cap:
        raise OutputTooLarge(node, f"`{scrub(line[:120])}` printed more than {cap} bytes on "
                                   f"{stream}; stopped (raise the cap with {MAX_OUTPUT_ENV})")
