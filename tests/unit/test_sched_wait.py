"""A cluster worker waits for MindSpore's scheduler port before init() (issue #17 item 1):
orchestrate_bloom.train.sched_wait, against real sockets.

    python -m pytest tests/unit/test_sched_wait.py -q
"""

from __future__ import annotations

import socket

from orchestrate_bloom.train.sched_wait import wait_for_scheduler


def _env(port: int, **extra: str) -> dict[str, str]:
    return {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(port),
            **extra}


def test_worker_returns_once_the_port_listens_and_the_scheduler_never_waits() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert wait_for_scheduler(_env(port)) is True
        conn, _ = server.accept()  # the probe connected to the real listener
        conn.close()
        closed = _env(port, MS_ROLE="MS_SCHED")
        assert wait_for_scheduler(closed) is None
    assert wait_for_scheduler({}) is None  # single process: nothing to wait for
    assert wait_for_scheduler(_env(0)) is None  # no usable port
    assert wait_for_scheduler({**_env(1), "MS_SCHED_PORT": "x"}) is None


def test_closed_port_polls_until_the_bound_then_gives_up() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    now = [0.0]
    tries: list[tuple[str, int]] = []

    def accepts(host: str, p: int) -> bool:
        tries.append((host, p))
        return False

    def sleep(s: float) -> None:
        now[0] += s

    env = _env(port, MS_TOPO_TIMEOUT="1")
    assert wait_for_scheduler(env, accepts=accepts, clock=lambda: now[0], sleep=sleep) is False
    assert len(tries) > 10 and set(tries) == {("127.0.0.1", port)}
    # the real probe on the closed port: refused, so the bound of 0 s ends it after one try
    assert wait_for_scheduler(_env(port, MS_TOPO_TIMEOUT="0")) is False
