"""Pure transfer helpers: safe paths, listings, stat parsing, the verify-and-rename command."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.errors import TransferError
from orchestrator.remote import files


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "..", "", "a\nb", "a\0b",
                                 "./..", "a/./../.."])
def test_safe_join_refuses_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(TransferError):
        files.safe_join(tmp_path, rel)


@pytest.mark.parametrize("rel,expect", [("a", "a"), ("a/b c", "a/b c"), ("./a//b", "a/b"),
                                        ("..a", "..a"), ("a..", "a.."), ("$(x)", "$(x)")])
def test_safe_join_keeps_safe_names(tmp_path: Path, rel: str, expect: str) -> None:
    assert files.safe_join(tmp_path, rel) == tmp_path / expect


def test_safe_join_refuses_local_symlink(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(TransferError, match="symlink"):
        files.safe_join(tmp_path, "link/x")


def test_parse_stat_line() -> None:
    h = "ab" * 32
    got = files.parse_stat_line("n0", "/p", f"12 640 {h}\n")
    assert (got.size, got.mode, got.sha256, got.path) == (12, 0o640, h, PurePosixPath("/p"))
    with pytest.raises(TransferError, match=r"\[n0\] cannot stat /p"):
        files.parse_stat_line("n0", "/p", "nope")


def test_remote_arg_quotes_but_keeps_home() -> None:
    assert files.remote_arg("/a b") == "'/a b'"
    assert files.remote_arg("~/x y") == "\"$HOME\"/'x y'"
    assert files.remote_arg("~") == '"$HOME"'
    assert files.sftp_path("~/x") == "x" and files.sftp_path("/x") == "/x"


def test_put_verify_reports_and_commit_renames(tmp_path: Path) -> None:
    data = b"hello\n"
    sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    tmp, final = tmp_path / ".t", tmp_path / "final 'x'"
    tmp.write_bytes(data)
    verify = files.put_verify_command(PurePosixPath(str(tmp)), 0o640)
    assert sha not in verify  # no content-derived value on the node's command line
    reply = subprocess.run(["bash", "-c", verify], capture_output=True, text=True,
                           check=True).stdout
    files.check_put_reply("n0", "put x", reply, len(data), sha)
    with pytest.raises(TransferError, match=r"^\[n0\] put x: uploaded copy has size 6"):
        files.check_put_reply("n0", "put x", reply, len(data), "0" * 64)
    with pytest.raises(TransferError, match="reply 'junk'"):
        files.check_put_reply("n0", "put x", "junk", len(data), sha)
    subprocess.run(["bash", "-c", files.put_commit_command(PurePosixPath(str(tmp)),
                                                           PurePosixPath(str(final)))],
                   check=True)
    assert final.read_bytes() == data and (final.stat().st_mode & 0o777) == 0o640
    assert not tmp.exists()


def test_finish_get_verifies(tmp_path: Path) -> None:
    tmp = tmp_path / ".x.tmp"
    tmp.write_bytes(b"abc")
    want = files.RemoteFile(PurePosixPath("/r"), 3, 0o6777, "0" * 64)
    with pytest.raises(TransferError, match="sha256 mismatch"):
        files.finish_get("n0", tmp, tmp_path / "x", want, files.LOG_MODE)
    assert list(tmp_path.iterdir()) == []
    tmp.write_bytes(b"abc")
    ok = files.RemoteFile(PurePosixPath("/r"), 3, 0o6777, files.sha256_file(tmp))
    files.finish_get("n0", tmp, tmp_path / "x", ok, files.local_mode(0o6777))
    assert (tmp_path / "x").read_bytes() == b"abc"
    assert ((tmp_path / "x").stat().st_mode & 0o7777) == 0o666  # no x, s or t bits


def test_copy_bounded_stops_one_byte_past_the_announced_size() -> None:
    import io
    reads: list[int] = []
    endless = io.BytesIO(b"z" * (5 << 20))

    def read(n: int) -> bytes:
        reads.append(n)
        return endless.read(n)

    out = io.BytesIO()
    with pytest.raises(TransferError, match="more than the 1024 bytes it announced"):
        files.copy_bounded(read, out, 1024, "n0", "get /x")
    assert len(out.getvalue()) <= 1024 and sum(reads) == 1025
    out = io.BytesIO()
    assert files.copy_bounded(io.BytesIO(b"abc").read, out, 3, "n0", "get /x") == 3


def test_parse_stat_line_wants_ascii_digits() -> None:
    with pytest.raises(TransferError):
        files.parse_stat_line("n0", "/p", f"\u0661\u0662 640 {'ab' * 32}")  # Arabic-Indic digits
