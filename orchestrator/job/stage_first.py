"""A node's first staging command: one round trip, and on a warm node one `cp` for the folder.

    cmd = first_command(workdir, job_id, trees, rendered, start=True)   # bash, run on the node
    key = skeleton_key(trees, rendered)        # the node's cached job skeleton, or None

The command prepares the workdir, refuses a busy node, removes interrupted stages' leftovers,
makes the job folder, writes the rendered files (bash `printf`: no upload), links the cached
trees and, with `start`, sources `launch.sh start` once nothing is missing.

The job skeleton: a job folder without its rendered files (every tree, the slot folders and
log links that `launch.sh layout` makes), cached on the node as `trees/job-<key>/`, the key a
sha256 over the trees' keys and destinations and launch.sh's layout lines (render.layout_text;
a custom launch.sh without them gets none). A node holding it makes the whole job folder with
one `cp -alT` (fresh folders, files hard-linked) instead of a process per tree, folder and link;
`launch.sh start` then finds its layout in place. A skeleton is assembled privately and renamed
into place when the job folder is complete, so it is only ever whole; it never holds a
rendered file (written per job as new files: a write never goes through a shared inode).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from orchestrator.job.render import RenderedFile, layout_text, proc_alive_fn, shell_path
from orchestrator.job.start import start_command

if TYPE_CHECKING:
    from orchestrator.job.stage import Tree

LEFTOVER_AGE_MIN = 60  # a stager's temp name untouched this long is an interrupted stage's
# Private temp names of stagers (see place_blobs_command, link_tree_commands, files.temp_name,
# skeleton_lines), as bash globs relative to the workdir's $B (blobs) and $T (trees)
LEFTOVER_GLOBS = ('"$B"/.unpack-*', '"$B"/.incoming-*.tar', '"$B"/.*.orchestrate-tmp-*',
                  '"$T"/.*.partial-*')
STARTING = "starting"  # first_command's line before launch.sh start's own output
# Hard-link cached tree $1 to job folder $2, or report it missing (and note that: need=1).
_TREE_FN = ('need=; t() { if [ -d "$T/$1" ]; then [ ! -e "$J/$2" ] || rm -rf "${J:?}/$2"; '
            'cp -al "$T/$1" "$J/$2"; else echo "tree $1"; need=1; fi; }')


def skeleton_key(trees: Sequence[Tree], rendered: Mapping[str, RenderedFile]) -> str | None:
    """`job-<sha256>` naming the node's cached job skeleton for these trees and this
    launch.sh's layout; None when launch.sh has no layout lines (or there is none)."""
    launch = rendered.get("launch.sh")
    layout = layout_text(launch.text) if launch is not None else None
    if layout is None:
        return None
    h = hashlib.sha256(b"orchestrate job skeleton 1\n")
    for tree in trees:
        h.update(f"{tree.dest}\0{tree.key}\n".encode())
    h.update(layout.encode())
    return "job-" + h.hexdigest()


def skeleton_lines(key: str, trees: Sequence[Tree], job_dir_word: str, token: str) -> list[str]:
    """Shell lines (after set -eu, with $T set) assembling skeleton `key` from the cached trees
    and `launch.sh layout` of the complete job folder `job_dir_word`, unless the node has it.
    Best effort: any failure leaves no skeleton (and no partial folder) and is not an error."""
    p = shlex.quote(f".{key}.partial-{token}")
    links = " && ".join(f'cp -al "$T"/{shlex.quote(t.key)} "$P"/{shlex.quote(t.dest)}'
                        for t in trees)
    return [
        f'if [ ! -d "$T/{key}" ]; then',
        f'  P="$T"/{p}',
        f'  if mkdir "$P" && {links + " && " if links else ""}'
        f'bash {job_dir_word}/launch.sh layout "$P" >/dev/null 2>&1; then',
        f'    mv -T "$P" "$T/{key}" 2>/dev/null || rm -rf "$P"',
        '  else rm -rf "$P"; fi',
        "fi",
    ]


def workdir_vars(wd: str) -> str:
    # physical paths: after `cd -P`, $PWD is one (builtins only, no subshell)
    return f'cd -P {wd}; W=$PWD; B="$W/blobs"; T="$W/trees"'


REMOVE_LEFTOVER = 'rm -rf -- "$x" 2>/dev/null && echo "leftover ${x##*/}" || true'


def cleanup_leftovers_lines(age_min: int = LEFTOVER_AGE_MIN,
                            action: str = REMOVE_LEFTOVER) -> list[str]:
    """THE rule for interrupted stages' temp names under "$B" and "$T": shell lines running
    `action` (default: remove it and print `leftover NAME`) with "$x" set to each one.

    An entry counts only when neither it nor anything under it was modified in the last
    `age_min` minutes (a directory's own mtime changes whenever an entry is added, a file's
    while it is written). `orchestrate prune` (job/prune.py) collects them with another action.
    """
    return [
        f"for x in {' '.join(LEFTOVER_GLOBS)}; do",
        '  [ -e "$x" ] || [ -L "$x" ] || continue',
        f'  if [ -z "$(find "$x" -mmin -{int(age_min)} -print -quit 2>/dev/null)" ]; then',
        f"    {action}",
        "  fi",
        "done",
    ]


def busy_lines(job_id: str | None, then: str) -> list[str]:
    """THE busy-node test (after proc_alive_fn, in the workdir): shell lines running `then`
    with "$o" set to the owner when jobs/ACTIVE names a live job other than `job_id` (None:
    any live job). A staging command stops there; `orchestrate prune` leaves the node alone."""
    other = f'[ "$o" != {shlex.quote(job_id)} ] && ' if job_id is not None else ""
    return [
        "if [ -f jobs/ACTIVE ]; then",
        "  o=; p=; s=; read -r o p s < jobs/ACTIVE || true",
        f'  if {other}alive "$p" "$s"; then {then}; fi',
        "fi",
    ]


def first_command(workdir: str, job_id: str, trees: Sequence[Tree],
                  rendered: Mapping[str, RenderedFile], start: bool = False,
                  token: str = "0") -> str:
    """Prepare the folders, refuse a busy node, make the job folder (from the node's cached
    skeleton when it has one), write the rendered files, link cached trees; with `start`,
    start the ranks too once the node holds every tree (one round trip).

    Prints `workdir P`, then `busy JOB` (and stops) or `leftover NAME` per stale temp name of
    an interrupted stage it removed, `jobdir P`, `tree KEY` per tree the node does not hold
    yet. With `start` and no tree missing it prints `starting` and sources `launch.sh start`
    (its output and exit code follow: start.read_start reads them). `token`: private temp
    names of this stager.
    """
    wd = shell_path(workdir)
    jid = shlex.quote(job_id)
    skel = skeleton_key(trees, rendered)
    lines = [
        "set -eu", "umask 022", proc_alive_fn(),
        f"[ -d {wd}/jobs ] && [ -d {wd}/blobs ] && [ -d {wd}/trees ] || "
        f"mkdir -p {wd}/jobs {wd}/blobs {wd}/trees",
        workdir_vars(wd),
        'echo "workdir $W"',
        *busy_lines(job_id, 'echo "busy $o"; exit 0'),
        *cleanup_leftovers_lines(),
        f"J=\"$W\"/jobs/{jid}; S={skel or ''}",
        # a warm node: the whole folder in one process (-T: never into an existing folder)
        'if [ -n "$S" ] && [ ! -e "$J" ] && [ -d "$T/$S" ]; then cp -alT "$T/$S" "$J"; else S=; fi',
        '[ -d "$J" ] || mkdir -p "$J"',
        'cd -P "$J"; J=$PWD; cd "$W"; echo "jobdir $J"',
        _TREE_FN,
    ]
    for name, f in rendered.items():
        # bash's printf is a builtin: no process, no upload; the text is one quoted word
        lines.append(f'printf %s {shlex.quote(f.text)} >"$J"/{shlex.quote(name)}')
    lines.append('if [ -z "$S" ]; then :')
    lines += [f"  t {tree.key} {shlex.quote(tree.dest)}" for tree in trees]
    if skel is not None:  # every tree in place: the next job here gets it all in one cp
        lines.append('  if [ -z "$need" ]; then')
        lines += ["    " + ln for ln in skeleton_lines(skel, trees, '"$J"', token)]
        lines.append("  fi")
    lines.append("fi")
    if start:  # every file of the node is in place: no half-staged node is ever started
        launch = start_command('"$J"', resume=False, source=True)  # this shell runs `start`
        lines.append(f'if [ -z "$need" ]; then echo {STARTING}; {launch}; fi')
    return "\n".join(lines)
