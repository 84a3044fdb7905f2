"""Pure parts of the SSH transport: quoting, timeout wrapper, known_hosts lookups, policies."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from orchestrator.config.inventory import HostKeyPolicy, parse_inventory
from orchestrator.errors import HostKeyError
from orchestrator.remote import hostkeys, shell, ssh


def test_env_prefix_quotes_values_and_checks_names() -> None:
    line = shell.env_prefix({"A": "x y", "B": "$(rm -rf /)'"}) + 'printf "%s|%s" "$A" "$B"'
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True).stdout
    assert out == "x y|$(rm -rf /)'"
    assert shell.env_prefix(None) == "" and shell.env_prefix({}) == ""
    with pytest.raises(ValueError, match="bad environment variable name"):
        shell.env_prefix({"A;B": "x"})


def test_timeout_wrap_runs_the_line_in_the_shell() -> None:
    line = shell.timeout_wrap("echo 'a b' | tr a-z A-Z", 5)
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True)
    assert out.stdout == "A B\n"
    slow = subprocess.run(["bash", "-c", shell.timeout_wrap("sleep 5", 0.2)])
    assert slow.returncode == 124
    with pytest.raises(ValueError):
        shell.timeout_wrap("true", 0)


def test_known_hosts_name() -> None:
    assert hostkeys.known_hosts_name("10.0.0.1", 22) == "10.0.0.1"
    assert hostkeys.known_hosts_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"


def test_find_known_key_plain_and_hashed(tmp_path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    hashed = paramiko.HostKeys.hash_host("10.0.0.9")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# comment\n\nbroken line\n10.0.0.1 {key.get_name()} {key.get_base64()}\n"
                  f"{hashed} {key.get_name()} {key.get_base64()}\n")
    found = hostkeys.find_known_key([tmp_path / "missing", kh], "10.0.0.1")
    assert found is not None and found[0] == kh and found[1] == 4 and found[2] == key
    hashed_found = hostkeys.find_known_key([kh], "10.0.0.9")
    assert hashed_found is not None and hashed_found[1] == 5
    assert hostkeys.find_known_key([kh], "10.0.0.2") is None


def test_add_known_keys_as_a_full_load_would_and_rereads_a_changed_file(
        tmp_path: Path) -> None:
    # every node's connect takes its own entries from a known_hosts parsed once per process
    key, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[10.0.0.1]:2222 {key.get_name()} {key.get_base64()}\n"
                  f"{paramiko.HostKeys.hash_host('10.0.0.9')} {key.get_name()} "
                  f"{key.get_base64()}\n10.0.0.2 {other.get_name()} {other.get_base64()}\n")
    for name in ("[10.0.0.1]:2222", "10.0.0.9", "10.0.0.2", "10.0.0.3"):
        mine, full = paramiko.HostKeys(), paramiko.HostKeys()
        hostkeys.add_known_keys(mine, [tmp_path / "missing", kh], name)
        full.load(str(kh))
        got, want = mine.lookup(name), full.lookup(name)
        assert (got and dict(got)) == (want and dict(want)), name
        assert len(mine.keys()) <= 1  # nothing of the other hosts
    assert hostkeys.parsed_known_hosts(kh) is hostkeys.parsed_known_hosts(kh)  # parsed once
    with kh.open("a") as fh:  # accept-new appended a key: the next connect sees it
        fh.write(f"10.0.0.3 {other.get_name()} {other.get_base64()}\n")
    mine = paramiko.HostKeys()
    hostkeys.add_known_keys(mine, [kh], "10.0.0.3")
    assert mine.lookup("10.0.0.3") is not None


def test_reject_policy_names_host_and_files(tmp_path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    policy = hostkeys.RejectUnknown("n0", [tmp_path / "kh", Path("/root/.ssh/known_hosts")])
    with pytest.raises(HostKeyError) as info:
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.1", key)
    msg = str(info.value)
    assert msg.startswith("[n0] unknown host key for 10.0.0.1") and str(tmp_path / "kh") in msg
    assert hostkeys.fingerprint(key) in msg


def test_accept_new_policy_appends(tmp_path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    target = tmp_path / "sub" / "kh"
    client = paramiko.SSHClient()
    hostkeys.AcceptNew("n0", target).missing_host_key(client, "[10.0.0.1]:2222", key)
    assert target.read_text() == f"[10.0.0.1]:2222 {key.get_name()} {key.get_base64()}\n"
    assert client.get_host_keys().lookup("[10.0.0.1]:2222") is not None


def test_options_from_inventory(tmp_path: Path) -> None:
    inv = parse_inventory("known_hosts: [a, /b]\nhost_key_policy: accept-new\n"
                          "ssh_config: cfg\nhosts: [10.0.0.1]\n", tmp_path / "inv.yaml")
    opts = ssh.SSHOptions.from_inventory(inv, connect_timeout=3)
    assert opts.known_hosts == (tmp_path / "a", Path("/b"))
    assert opts.host_key_policy is HostKeyPolicy.ACCEPT_NEW and opts.connect_timeout == 3
    assert opts.accept_new_target() == tmp_path / "a"
    assert opts.known_hosts_files()[-1] == ssh.user_known_hosts()
    assert opts.ssh_config == tmp_path / "cfg"


@pytest.mark.parametrize("after_banner", [b"", b"\x00\x00\x00\x0c\x0a\x14"])
def test_peer_closing_mid_handshake_is_a_named_connect_error(tmp_path: Path,
                                                             after_banner: bytes) -> None:
    """A server that sends its banner (and maybe a cut-off packet) then hangs up: sshd dying
    under us. paramiko lets its reader's EOFError out of `start_client`; the node is named."""
    import socket
    import threading

    from orchestrator.errors import ConnectError

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        for _ in range(2):  # one per connect attempt
            conn, _addr = server.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + after_banner)
                conn.recv(4096)  # the client's banner
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    inv = parse_inventory(f"hosts: [127.0.0.1]\ndefaults: {{port: {port}}}\n",
                          tmp_path / "inv.yaml")
    opts = ssh.SSHOptions.from_inventory(inv, connect_timeout=3, connect_attempts=2,
                                         backoff=0.01)
    try:
        with pytest.raises(ConnectError, match=r"^\[127\.0\.0\.1\] .*127\.0\.0\.1:"):
            with ssh.SSHTransport(inv.nodes[0], opts) as t:
                t.run(["true"])
    finally:
        server.close()
        thread.join(timeout=5)
