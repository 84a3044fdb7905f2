"""The node tools' output protocol, both sides, in one place.

A tool (`python -m orchestrate_bloom.ckpt.layout|ckpt.tools ...`) prints one JSON object on
stdout and exits 0, or prints one line `error: ...` on stderr and exits 1; the other entry
points (train, infer, data, convert) end their failures with the same `error:` line.

    return tool_main(lambda: run(args), (OSError, ValueError))          # a tool's main()
    result = read_result(proc.stdout, proc.stderr, proc.returncode)     # whoever ran it
    result = transport.tool_answer(res, what)     # a node's answer (orchestrator/remote/)
    reason = failure_reason(proc.stderr, proc.returncode)               # any entry point

Standard library only: the control plane (orchestrator/) reads with the same module the
tools write with. A node is untrusted: a result that is not one JSON object on the last line
is a ToolFailure, never a crash.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable, Mapping
from typing import Any

ERROR_PREFIX = "error:"


class ToolError(Exception):
    """A tool's expected failure: tool_main prints it as one `error:` line, exit 1."""


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB); every tool result carries it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ToolFailure(Exception):
    """A tool failed (its reason) or did not keep to the protocol."""


def tool_main(run: Callable[[], Mapping[str, Any]],
              errors: tuple[type[BaseException], ...]) -> int:
    """Run a tool's work: print its result as one JSON line (0), or an `errors` exception as
    one `error:` line on stderr (1). Other exceptions propagate (a bug shows its traceback)."""
    try:
        result = run()
    except errors as exc:
        print(f"{ERROR_PREFIX} {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(dict(result)), flush=True)
    return 0


def failure_reason(stderr: str, returncode: int) -> str:
    """Why a child failed: its last `error: ...` line, else its last stderr line, else its
    exit code."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix(ERROR_PREFIX).strip() for line in lines
              if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else f"exit {returncode}"


def read_result(stdout: str, stderr: str, returncode: int,
                loads: Callable[[str], Any] = json.loads) -> dict[str, Any]:
    """A tool's JSON result (the last stdout line, parsed by `loads`: the control plane passes
    its depth-limited reader for a node's answer, orchestrator.remote.transport.tool_answer).

    Raises:
        ToolFailure: non-zero exit (the reason from failure_reason), or no JSON object.
    """
    if returncode != 0:
        raise ToolFailure(failure_reason(stderr, returncode))
    lines = stdout.strip().splitlines()
    try:
        doc = loads(lines[-1])
    except (IndexError, ValueError, RecursionError):  # JSONDecodeError, a deep `[[[[...`
        doc = None
    if not isinstance(doc, dict):
        raise ToolFailure(f"printed no JSON result: {stdout.strip()[-200:]!r}")
    return doc
