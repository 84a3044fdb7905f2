"""The one loader of presets, job files and `--set` overrides (stdlib + PyYAML, no MindSpore).

    sections = load_preset_sections("65b", ["train.lr=3e-4", "train.seq_length=512"])
    sections["train"]["lr"], sections["model"]["seq_length"]     # 0.0003, 512

Every reader of these files uses it: `orchestrate plan/up` (orchestrator/config/presets.py),
the trainer's job file (job.py), the model config (config.load_preset). One merge rule (a file
lists only what differs from configs/defaults.yaml; unknown sections and keys are errors naming
the file and key, with close matches), one type rule (`coerce`) and one alias table, so what
the CLI accepts the trainer accepts.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .mindformers_config import MindFormersError, is_mindformers, mindformers_values

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SECTIONS = ("model", "parallel", "train", "data")
KEY_ALIASES = {  # keys users know from the issues and MindFormers -> ours
    "train.seq_length": "model.seq_length",
    "parallel.batch_size": "parallel.micro_batch_size",
}

Sections = dict[str, dict[str, Any]]


class SettingsError(ValueError):
    """A preset, job file or override is malformed; the message names the file/flag and key."""


def preset_names() -> list[str]:
    """Names of the shipped presets (configs/*.yaml except defaults)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "defaults")


def preset_file(preset: str | Path) -> Path:
    """The file of a shipped preset name, or `preset` itself when it is a .yaml/.yml path.

    Raises:
        SettingsError: unknown name (listing the known ones) or a missing file.
    """
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise SettingsError(f"{preset}: preset file does not exist")
        return candidate
    path = CONFIG_DIR / f"{preset}.yaml"
    if str(preset) == "defaults" or not path.is_file():
        raise SettingsError(f"unknown preset {str(preset)!r} (known: {', '.join(preset_names())}"
                            "; or give a path to a .yaml file)")
    return path


MAX_ALIASES = 64  # per YAML file; a MindFormers run config uses a handful


class _FlatAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose aliases cannot multiply: an alias may not point at a node that
    itself holds an alias, and a file has at most MAX_ALIASES of them; `allow_aliases=False`
    refuses every alias (`--set` values). Nested aliases expand exponentially: a 309-byte
    `--set` value once built a 58 MB error message."""

    allow_aliases = True

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            name = str(event.anchor)[:40]
            self.alias_count = getattr(self, "alias_count", 0) + 1
            target = self.anchors.get(event.anchor)
            why = ("are not allowed here" if not self.allow_aliases
                   else f"are limited to {MAX_ALIASES} per file"
                   if self.alias_count > MAX_ALIASES
                   else "may not point at a node holding aliases"
                   if target is not None and self._holds_alias(target) else "")
            if why:
                raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{name}) {why}",
                                                  event.start_mark)
        return super().compose_node(parent, index)

    def _holds_alias(self, node: Any) -> bool:
        anchored = {id(n) for n in self.anchors.values()}
        todo = [node]
        while todo:
            n = todo.pop()
            kids = [v for pair in n.value for v in pair] if isinstance(n, yaml.MappingNode) \
                else list(n.value) if isinstance(n, yaml.SequenceNode) else []
            if any(id(k) in anchored for k in kids):
                return True
            todo.extend(kids)
        return False


class _NoAliasLoader(_FlatAliasLoader):
    allow_aliases = False


def load_yaml(text: str, *, aliases: bool = True) -> Any:
    """yaml.safe_load with aliases that cannot multiply (none at all with aliases=False)."""
    loader = _FlatAliasLoader if aliases else _NoAliasLoader
    return yaml.load(text, Loader=loader)  # noqa: S506 - SafeLoader subclasses


def _short(value: Any, limit: int = 80) -> str:
    """A bounded repr for error messages (never walks more than a few items of a value)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 10_000, 200, 3


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that holds a mapping at top level.

    Raises:
        SettingsError: unreadable file, syntax error, or not a mapping.
    """
    try:
        doc = load_yaml(path.read_text())
    except OSError as e:
        raise SettingsError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SettingsError(f"{path}: YAML syntax error: {e}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: expected a mapping of sections at top level")
    return doc


def defaults() -> Sections:
    """configs/defaults.yaml: every section with every key (a fresh copy)."""
    doc = read_yaml(CONFIG_DIR / "defaults.yaml")
    return {s: dict(doc[s]) for s in SECTIONS}


def merge_file(merged: Sections, doc: Mapping[str, Any], src: str,
               skip: Sequence[str] = ()) -> None:
    """Set every `section: {key: value}` of `doc` (a file read by read_yaml) into `merged`.

    Args:
        skip: top-level sections the caller reads itself (e.g. a job file's `job:`).
    """
    for section, values in doc.items():
        if section in skip:
            continue
        if section not in merged:
            raise SettingsError(f"{src}: unknown section {section!r} "
                                f"(sections: {', '.join((*skip, *merged))})")
        if not isinstance(values, dict):
            raise SettingsError(f"{src}: {section}: expected a mapping")
        for key, value in values.items():
            set_value(merged, f"{section}.{key}", value, src)


def merge_mindformers(merged: Sections, doc: Mapping[str, Any], src: str,
                      notes: list[str] | None = None) -> None:
    """Set the values of a MindFormers run config into `merged` (errors name its key)."""
    try:
        values, found = mindformers_values(doc, src)
    except MindFormersError as e:
        raise SettingsError(str(e)) from None
    for dotted, (mf_key, value) in values.items():
        set_value(merged, dotted, value, f"{src}: {mf_key}")
    if notes is not None:
        notes.extend(found)


def apply_override(merged: Sections, item: str) -> None:
    """Apply one `--set section.key=value` (aliases allowed; the value is read as YAML)."""
    if "=" not in item:
        raise SettingsError(f"--set {_short(item)}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    src = f"--set {_short(item)}"
    try:
        value = load_yaml(raw, aliases=False) if raw.strip() else ""
    except yaml.composer.ComposerError as e:  # an alias: refused, not read as a string
        raise SettingsError(f"{src}: {e.problem}") from None
    except yaml.YAMLError:
        value = raw
    set_value(merged, dotted.strip(), value, src)


def set_value(merged: Sections, dotted: str, value: Any, src: str) -> None:
    """`merged[section][key] = value` after the alias table and the type rule (`coerce`)."""
    dotted = KEY_ALIASES.get(dotted, dotted)
    section, _, key = dotted.partition(".")
    if section not in merged or key not in merged[section]:
        raise SettingsError(f"{src}: unknown key {_short(dotted)}{_suggest(dotted, merged)}")
    merged[section][key] = coerce(dotted, merged[section][key], value, src)


def coerce(dotted: str, default: Any, value: Any, src: str) -> Any:
    """`value` checked against the type of the default: the one type rule.

    bool only for bool; int for int (not bool); float accepts ints and numeric strings (YAML
    1.1 reads "3e-4", no dot, as a string); str accepts numbers (as their text); list only
    lists.
    """
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is list:
        ok = isinstance(value, list)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
        if not ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, ok = str(value), True
    if not ok:
        raise SettingsError(f"{src}: {dotted}: expected {kind.__name__}, got {_short(value)}")
    return value


def _suggest(dotted: str, merged: Mapping[str, Mapping[str, Any]]) -> str:
    keys = [f"{s}.{k}" for s, values in merged.items() for k in values]
    close = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def load_preset_sections(preset: str | Path, overrides: Sequence[str] = (),
                         notes: list[str] | None = None) -> Sections:
    """defaults.yaml, then the preset's file, then each `--set` override, in that order.

    The file may be a MindFormers run config (run_bloom_*.yaml, detected by content): its keys
    are mapped by mindformers_config, and what cannot be honoured is appended to `notes`.
    """
    merged = defaults()
    path = preset_file(preset)
    doc = read_yaml(path)
    if is_mindformers(doc):
        merge_mindformers(merged, doc, str(path), notes)
    else:
        merge_file(merged, doc, str(path))
    for item in overrides:
        apply_override(merged, item)
    return merged
