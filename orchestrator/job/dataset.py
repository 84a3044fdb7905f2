"""The dataset a job trains on: a local Alpaca file prepared to MindRecord here, a local
MindRecord folder staged as is, or a path on the nodes (issue #7).

    local = local_dataset(spec, plan, cache_root)   # what `up` stages as data/<name>, or None
    paths = data_paths_for(plan, local)             # data.path for each node's job.yaml

Prepared data is content-addressed (issue #17): an Alpaca file is prepared once into
`<state dir>/data/<key>/<stem>/`, key = orchestrate_bloom.data.key.prepared_key (input,
tokenizer, seq_length, preparation code); every later `up` with the same key reuses that
folder without starting a child, and the nodes skip it by sha256 (job/stage.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from orchestrate_bloom.data.key import prepared_key
from orchestrate_bloom.tool_io import ToolFailure, failure_reason, read_result

from orchestrator import bundle
from orchestrator.config.plan import Plan
from orchestrator.config.presets import JobSpec
from orchestrator.errors import JobError


def prepare_alpaca(src: Path, dest: Path, seq_length: int, tokenizer: str = "") -> Path:
    """Alpaca JSON -> MindRecord folder `dest` (`python -m orchestrate_bloom.data`, a child)."""
    args = ["--input", str(src.resolve()), "--output", str(dest.resolve()), "--seq-length",
            str(seq_length)]
    if tokenizer:
        args += ["--tokenizer", str(Path(tokenizer).resolve())]
    proc = bundle.run_model("data", args, env={"GLOG_v": "3"}, timeout=3600)
    if proc.returncode != 0:
        last = failure_reason(proc.stderr, proc.returncode)
        raise JobError(f"data.path {src}: preparing MindRecord failed: {last}")
    return dest


def resolve_local_data(path: str) -> Path | None:
    """A local data.path: as given (relative to the current directory), else relative to the
    checkout (presets name shipped files such as model/assets/alpaca_seed_tasks.json); None
    when neither exists (then the path is taken to exist on the nodes)."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    shipped = bundle.shipped_file(path)
    return shipped if shipped is not None and shipped.exists() else None


def looks_local(path: str) -> bool:
    """A data.path meant on this machine: relative, `~/...`, or an Alpaca `.json` file (always
    prepared here). Only an absolute path may name a folder that exists only on the nodes."""
    return not path.startswith("/") or path.endswith(".json")


def check_data_path(spec: JobSpec, nodes_have_data_dir: bool) -> None:
    """Refuse a local-looking data.path that does not exist here (a typo would otherwise be
    sent to the nodes as a path there and fail an hour later).

    Raises:
        JobError: naming data.path, its value and where it was looked for.
    """
    path = str(spec.value("data.path") or "")
    if not path or nodes_have_data_dir or not looks_local(path):
        return
    if resolve_local_data(path) is None:
        raise JobError(f"data.path {path!r}: no such file or folder here "
                       f"({Path(path).expanduser().absolute()}); a path that exists only on "
                       "the nodes must be absolute")


def cached_prepare(src: Path, cache_root: Path, seq_length: int, tokenizer: str = ""
                   ) -> Path:
    """`src` prepared to MindRecord under `cache_root/<key>/<stem>`: reused when there, else
    prepared once into a private folder and renamed into place (two `up` racing both finish;
    the first rename wins, the other's copy is dropped)."""
    tok = Path(tokenizer).resolve() if tokenizer else None
    if tok is not None and not tok.is_file():
        raise JobError(f"data.tokenizer {tokenizer}: no such file")
    entry = cache_root / prepared_key(src, seq_length, tok)
    final = entry / src.stem
    if final.is_dir():
        return final
    partial = cache_root / f".{entry.name}.partial-{secrets.token_hex(4)}"
    try:
        prepare_alpaca(src, partial / src.stem, seq_length, tokenizer)
        try:
            os.rename(partial, entry)
        except OSError:
            if not final.is_dir():  # not a racing winner: a real failure
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def local_dataset(spec: JobSpec, plan: Plan, cache_root: Path) -> Path | None:
    """The local dataset to stage, or None (data.path empty, only on the nodes, or every
    node has `data_dir`). An Alpaca `.json` file is turned into MindRecord here, once per
    content key (cached under `cache_root`, see cached_prepare)."""
    path = str(spec.value("data.path") or "")
    local = resolve_local_data(path) if path else None
    if local is None:
        return None
    if all(n.ranks.node.data_dir is not None for n in plan.nodes):
        return None
    if local.is_file() and local.suffix == ".json":
        return cached_prepare(local, cache_root, spec.model.seq_length,
                              str(spec.value("data.tokenizer") or ""))
    check_rows(local, spec.model.seq_length)
    return local


def check_rows(local: Path, seq_length: int) -> None:
    """Refuse a local MindRecord dataset (ours or MindFormers') whose rows are not
    seq_length + 1 ids, before anything is staged or started. The row length comes from the
    folder's summary.json when prepare-data wrote one, else from the first row (a child reads
    it: `python -m orchestrate_bloom.data.read sample-length`; this process imports no
    MindSpore).

    Raises:
        JobError: one line naming the file, its row length and the one the model needs.
    """
    summary = local / "summary.json"
    width, file = None, str(summary)
    try:
        width = int(json.loads(summary.read_text())["seq_length"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        proc = bundle.run_model("data.read", ["sample-length", str(local.resolve())],
                                env={"GLOG_v": "3"}, timeout=600)
        try:
            result = read_result(proc.stdout, proc.stderr, proc.returncode)
            width, file = int(result["sample_length"]), str(result["file"])
        except (ToolFailure, KeyError, TypeError, ValueError) as e:
            raise JobError(f"data.path {local}: cannot read its MindRecord rows: {e}") from None
    if width != seq_length + 1:
        raise JobError(f"data.path {local}: {file} holds rows of {width} token ids, "
                       f"model.seq_length={seq_length} needs {seq_length + 1} (make the data "
                       f"for seq_length {seq_length}, or --set model.seq_length={width - 1})")


def template_override(spec: JobSpec) -> str | None:
    """`data.template=NAME` to record with the job when its data says which prompt template it
    was made with (an Alpaca `.json` is prepared with `alpaca`; a local prepared folder names
    its template in summary.json), else None (data.template already set, or not known).
    `infer --job` applies the recorded template to prompts (model/prompts.py)."""
    path = str(spec.value("data.path") or "")
    if spec.value("data.template") or not path:
        return None
    if path.endswith(".json"):
        return "data.template=alpaca"
    local = resolve_local_data(path)
    summary = local / "summary.json" if local is not None and local.is_dir() else None
    if summary is None or not summary.is_file():
        return None
    try:
        template = json.loads(summary.read_text()).get("template")
    except (OSError, ValueError, AttributeError):
        return None
    return f"data.template={template}" if isinstance(template, str) and template else None


def data_notes(local_data: str | None) -> list[str]:
    """What the prepared data's summary.json says the user should know: records whose prompt
    (template + instruction) alone fills seq_length + 1 ids, so their response is never
    trained (e.g. the Alpaca template is 65 tokens of the small tokenizer)."""
    summary = Path(local_data) / "summary.json" if local_data else None
    if summary is None or not summary.is_file():
        return []
    try:
        doc = json.loads(summary.read_text())
        missing, records, seq = int(doc["no_response"]), int(doc["records"]), doc["seq_length"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not missing:
        return []
    return [f"{missing} of {records} records have no response token within seq_length "
            f"{seq} + 1 (the {doc.get('template') or 'prompt'} template and instruction fill "
            "the row): the model cannot learn to answer them; raise model.seq_length"]


def data_paths_for(plan: Plan, local: Path | None) -> dict[str, str | None]:
    """data.path for each node's job.yaml: its `data_dir`, else the staged copy, else as is."""
    out: dict[str, str | None] = {}
    for n in plan.nodes:
        node = n.ranks.node
        if node.data_dir is not None:
            out[node.name] = str(node.data_dir)
        elif local is not None:
            out[node.name] = f"data/{local.name}"
        else:
            out[node.name] = None
    return out
