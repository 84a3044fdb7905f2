"""THE call that starts a node's ranks, `launch.sh start [resume]`, and how its answer is read.

    cmd = start_command(shlex.quote(job_dir), resume=False)   # bash <job dir>/launch.sh start
    pids = read_start(node_name, res.exit_code, res.stdout, res.stderr)   # slot -> pid

Used alone (`resume`, a relaunch: rollout.start_over_ssh) and as
the tail of a node's staging command (stage.first_command with start=True), so both read the
same exit codes: 3 node busy (another live job), anything else non-zero a failed start.
"""

from __future__ import annotations

from orchestrator.errors import JobError
from orchestrator.untrusted import lines, shown, to_int

START_TIMEOUT = 120.0  # seconds `launch.sh start` may take on one node
BUSY_EXIT = 3  # launch.sh start: another live job holds the node


class NodeBusyError(JobError):
    """The node already runs another live job (the remote lock)."""

    def __init__(self, node: str, other: str) -> None:
        self.node = node
        self.other = other
        super().__init__(f"[{node}] node busy: job {other} is running there "
                         f"(stop it with: orchestrate down {other})")


def start_command(job_dir_word: str, resume: bool, source: bool = False) -> str:
    """`bash <job dir>/launch.sh start [resume]`; `job_dir_word` is the job folder as a shell
    word: a quoted path (shlex.quote) or a variable the command sets ("$J").

    `source=True`: `. <job dir>/launch.sh start`, for the end of a bash command (the staging
    command): the command's own shell runs `start` and forks the supervisor, no new bash.
    """
    return (f". {job_dir_word}/launch.sh start" if source else
            f"bash {job_dir_word}/launch.sh start") + (" resume" if resume else "")


def read_start(node: str, exit_code: int, stdout: str, stderr: str) -> dict[str, int]:
    """slot -> pid from `launch.sh start`'s output (a node's text: bounded, digits only).

    Raises:
        NodeBusyError: exit 3, another live job holds the node.
        JobError: any other non-zero exit, naming the node and launch.sh's last stderr line.
    """
    if exit_code != 0:
        msg = shown((lines(stderr)[-1:] or [f"exit {exit_code}"])[0])
        if exit_code == BUSY_EXIT:
            raise NodeBusyError(node, msg.split("job ", 1)[-1].split()[0])
        raise JobError(f"[{node}] start failed: {msg}")
    pids = {}
    for line in lines(stdout):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "pid":
            pid = to_int(parts[2])
            if pid is not None:
                pids[parts[1]] = pid
    return pids
