"""Integration fixtures: real OpenSSH test hosts from tests/testhosts.sh, always torn down.

`testhosts` (session): 4 hosts th0..th3 in network namespaces (or, with
ORCHESTRATE_TESTHOSTS=loopback, sshd on 127.0.0.1 ports). Skipped with a reason when the
machine cannot run them (not root, no unshare/ip, no sshd). The state dir is unique per session,
so concurrent sessions (other worktrees, CI) get their own bridge and subnet.

Autouse: HOME points at an empty temporary directory, so no test reads the developer's
~/.ssh/config, ~/.ssh/known_hosts or keys (fabric's `no_user_ssh_config`, taken further).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "testhosts.sh"
N_HOSTS = 4


@dataclass(frozen=True)
class TestHosts:
    """A running set of test hosts."""

    __test__ = False  # not a test class

    state: Path
    variant: str  # "netns" or "loopback"
    names: tuple[str, ...]

    @property
    def inventory(self) -> Path:
        return self.state / "inventory.yaml"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def identity(self) -> Path:
        return self.state / "id_ed25519"

    def script(self, *args: str) -> str:
        """Run tests/testhosts.sh with this set's --state; returns stdout."""
        proc = subprocess.run(["bash", str(SCRIPT), *args, "--state", str(self.state)],
                              capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"testhosts.sh {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self, name: str) -> None:
        self.script("stop", name)

    def start(self, name: str) -> None:
        self.script("start", name)

    def ssh(self, name: str, command: str) -> subprocess.CompletedProcess[str]:
        """Plain OpenSSH through the set's ssh_config: the reference client."""
        return subprocess.run(["ssh", "-F", str(self.state / "ssh_config"), name, command],
                              capture_output=True, text=True, check=False, timeout=60,
                              stdin=subprocess.DEVNULL)


def default_sigint() -> None:
    """preexec_fn for a child a test will Ctrl-C: SIGINT raises KeyboardInterrupt in it even
    when the suite was started from a shell that ignores SIGINT (`nohup`, `cmd &`), whose
    ignored disposition the child would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class StderrTail:
    """Collect a child's stderr in a thread, to wait for a line without blocking on it.

        tail = StderrTail(proc); wait_for(lambda: "watching job" in tail.text())
        proc.send_signal(signal.SIGINT); out, err = tail.finish(timeout=60)
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._chunks: list[str] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._chunks.append(line)

    def text(self) -> str:
        return "".join(self._chunks)

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for the child; its whole stdout and stderr."""
        out = self.proc.stdout.read() if self.proc.stdout is not None else ""
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return out, self.text()


def why_no_testhosts() -> str | None:
    """Why test hosts cannot run here, or None."""
    if os.environ.get("ORCHESTRATE_TESTHOSTS") == "loopback":
        return None if Path("/usr/sbin/sshd").exists() else "no /usr/sbin/sshd"
    if os.geteuid() != 0:
        return "network-namespace test hosts need root (ORCHESTRATE_TESTHOSTS=loopback to try " \
               "sshd on 127.0.0.1)"
    for tool in ("unshare", "ip", "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            return f"test hosts need `{tool}`"
    return None


def bring_up(state: Path, n: int, variant: str, devices: int | None = None) -> TestHosts:
    args = ["bash", str(SCRIPT), "up", str(n), "--state", str(state), "--python", sys.executable]
    if variant == "loopback":
        args.append("--loopback")
    if devices is not None:
        args += ["--devices", str(devices)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"tests/testhosts.sh up failed: {proc.stderr.strip()}")
    return TestHosts(state, variant, tuple(f"th{i}" for i in range(n)))


def tear_down(state: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "down", "--state", str(state)], capture_output=True,
                   check=False, timeout=120)


def set_tag(state: Path) -> str:
    """The 6-hex tag testhosts.sh derives its names from (sha256 of the real state path)."""
    return hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:6]


def leftovers(state: Path) -> list[str]:
    """Namespaces, links and processes of the set at `state` that still exist."""
    tag = set_tag(state)
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    found += [f"netns {line.split()[0]}" for line in netns.stdout.splitlines()
              if line.startswith(f"oth-{tag}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=False)
    for line in links.stdout.splitlines():
        name = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if name.startswith((f"oth{tag}", f"othb{tag}")):
            found.append(f"link {name}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            zombie = (proc / "stat").read_text().split(") ", 1)[1].startswith("Z")
        except OSError:
            continue
        if str(state) in cmdline and not zombie:
            found.append(f"process {proc.name}: {cmdline.strip()}")
    return found


def module_host_set(state: Path, n: int, devices: int) -> Iterator[Path]:
    """Body of a module-scoped fixture: `n` netns hosts with `devices` each at `state`.

    Yields the set's inventory; always tears the set down and checks nothing is left.
    Usage: `yield from module_host_set(STATE, 2, devices=2)`.
    """
    reason = why_no_testhosts()
    if reason:
        pytest.skip(reason)
    try:
        bring_up(state, n, "netns", devices)
        yield state / "inventory.yaml"
    finally:
        tear_down(state)
        left = leftovers(state)
        shutil.rmtree(state, ignore_errors=True)
    assert not left, f"test hosts left behind after down: {left}"


_RAN: list[str] = []  # what the session fixture did, for the terminal summary


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _RAN:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def testhosts() -> Iterator[TestHosts]:
    reason = why_no_testhosts()
    if reason:
        _RAN.append(f"integration test hosts: skipped ({reason})")
        pytest.skip(reason)
    variant = "loopback" if os.environ.get("ORCHESTRATE_TESTHOSTS") == "loopback" else "netns"
    state = Path(tempfile.mkdtemp(prefix="oth-"))
    try:
        hosts = bring_up(state, N_HOSTS, variant)
        _RAN.append(f"integration test hosts: {N_HOSTS} hosts, {variant} variant, {state}")
        yield hosts
    finally:
        tear_down(state)
        left = leftovers(state)
        shutil.rmtree(state, ignore_errors=True)
    assert not left, f"test hosts left behind after down: {left}"


@pytest.fixture
def netns_hosts(testhosts: TestHosts) -> TestHosts:
    """The test hosts, when they are real namespaces (own hostname, /etc, PID namespace)."""
    if testhosts.variant != "netns":
        pytest.skip("needs the netns variant of the test hosts (loopback variant running)")
    return testhosts


@pytest.fixture(autouse=True)
def no_user_ssh_config(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME is an empty directory: no ~/.ssh/config, known_hosts or keys of the developer."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


SLURM_SCRIPT = REPO / "tests" / "slurmhosts.sh"


def why_no_slurm() -> str | None:
    """Why the Slurm test cluster cannot run here, or None."""
    reason = why_no_testhosts()
    if reason or os.environ.get("ORCHESTRATE_TESTHOSTS") == "loopback":
        return reason or "the Slurm test cluster needs the netns test hosts"
    for tool in ("slurmctld", "slurmd", "sbatch", "munged"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"the Slurm test cluster needs `{tool}` (tests/run.sh installs it as root)"
    return None


def slurm_leftovers(state: Path) -> list[str]:
    """Processes of the Slurm cluster at `state` (munged, slurmctld, slurmd) still alive."""
    conf = f"SLURM_CONF={state}/slurm/slurm.conf".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            zombie = (proc / "stat").read_text().split(") ", 1)[1].startswith("Z")
        except OSError:
            continue
        if not zombie and (conf in env or f"{state}/slurm/" in cmdline):
            found.append(f"process {proc.name}: {cmdline.strip()}")
    return found


def slurm_cluster(state: Path, n: int, devices: int) -> Iterator[Path]:
    """Body of a module-scoped fixture: tests/slurmhosts.sh with `n` hosts x `devices` CPUs.

    Yields the cluster's inventory (`backend: slurm`); always tears everything down and checks
    that no slurmd, slurmctld, munged, namespace or link of it is left.
    Usage: `yield from slurm_cluster(STATE, 2, devices=2)`.
    """
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)
    try:
        proc = subprocess.run(["bash", str(SLURM_SCRIPT), "up", str(n), "--state", str(state),
                               "--devices", str(devices), "--python", sys.executable],
                              capture_output=True, text=True, check=False, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"tests/slurmhosts.sh up failed: {proc.stderr.strip()}")
        yield state / "inventory.yaml"
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "down", "--state", str(state)],
                       capture_output=True, check=False, timeout=180)
        left = leftovers(state) + slurm_leftovers(state)
        shutil.rmtree(state, ignore_errors=True)
    assert not left, f"Slurm test cluster left behind after down: {left}"
