"""Validate Kubernetes manifests before they are written or applied.

    validate(manifest)     # raises ManifestError: kind and name, the field path, what is wrong

Custom resources (AscendJob, Volcano Job) are checked against the `openAPIV3Schema` of the
CRDs shipped in orchestrator/k8s/crds/ with `jsonschema`, made strict as
`kubectl apply --validate=strict` is: a field the schema does not declare is an error.
Core objects we emit (ConfigMap) and every object's metadata are checked against the API
server's own rules (DNS-1123 names, label syntax, ConfigMap keys and its 1 MiB limit).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from orchestrator.errors import ManifestError

CRD_DIR = Path(__file__).parent / "crds"
CONFIGMAP_MAX_BYTES = 1024 * 1024  # etcd's object limit, which the API server enforces
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")  # DNS-1123 label
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema in which objects with declared properties refuse others
    (unless the schema preserves unknown fields), as strict field validation does."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in ("items", "additionalProperties", "not", "anyOf", "allOf",
                                 "oneOf") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if ("additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    return out


@cache
def _crds(crd_dir: Path) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    out: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for path in sorted(crd_dir.glob("crd-*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        spec = crd["spec"]
        for version in spec["versions"]:
            api = f"{spec['group']}/{version['name']}"
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            out[(api, spec["names"]["kind"])] = (spec["names"]["plural"], schema)
    return out


def crd_schemas(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, for every CRD file in `crd_dir`."""
    return {k: schema for k, (_, schema) in _crds(crd_dir).items()}


def crd_plural(api_version: str, kind: str, crd_dir: Path = CRD_DIR) -> str:
    """The resource name the API serves a custom kind under (`ascendjobs`, `jobs`)."""
    return _crds(crd_dir)[(api_version, kind)][0]


def _where(manifest: Mapping[str, Any]) -> str:
    name = (manifest.get("metadata") or {}).get("name", "?")
    return f"{manifest.get('kind', '?')} {name}"


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path)


def validate(manifest: Mapping[str, Any], crd_dir: Path = CRD_DIR) -> None:
    """Refuse `manifest` (ManifestError) unless the API server would accept it.

    Raises:
        ManifestError: names the object, the first bad field and its value.
    """
    where = _where(manifest)
    for key in ("apiVersion", "kind", "metadata"):
        if key not in manifest:
            raise ManifestError(where, "", f"{key!r} is a required property")
    _check_metadata(where, manifest["kind"], manifest["metadata"])
    for path, labels in _label_maps(manifest):
        _check_labels(where, path, labels)
    kind, api = manifest["kind"], manifest["apiVersion"]
    if (api, kind) == ("v1", "ConfigMap"):
        _check_configmap(where, manifest)
        return
    schema = crd_schemas(crd_dir).get((api, kind))
    if schema is None:
        known = ", ".join(f"{a} {k}" for a, k in sorted(crd_schemas(crd_dir))) + ", v1 ConfigMap"
        raise ManifestError(where, "", f"no schema for apiVersion {api!r} kind {kind!r} "
                                       f"(known: {known})")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft4Validator(schema).iter_errors(dict(manifest)))
    if error is not None:
        raise ManifestError(where, _dotted(error.absolute_path), error.message)


def _check_metadata(where: str, kind: str, meta: Any) -> None:
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise ManifestError(where, "metadata.name", "a string is required")
    # Jobs name their pods and services: a DNS-1123 label; other objects a subdomain.
    name_rule, limit = (_SUBDOMAIN, 253) if kind == "ConfigMap" else (_LABEL, 63)
    name = meta["name"]
    if not name_rule.match(name) or len(name) > limit:
        raise ManifestError(where, "metadata.name",
                            f"{name!r} is not a DNS-1123 {'subdomain' if limit > 63 else 'label'} "
                            f"(lower-case alphanumerics and '-', at most {limit} characters)")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not _LABEL.match(ns) or len(ns) > 63):
        raise ManifestError(where, "metadata.namespace", f"{ns!r} is not a DNS-1123 label")


def _label_maps(manifest: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every label map of the object: its own and its pod templates' (AscendJob, Volcano)."""
    if "labels" in manifest["metadata"]:
        yield "metadata.labels", manifest["metadata"]["labels"]
    spec: Mapping[str, Any] = manifest.get("spec") or {}
    if not isinstance(spec, Mapping):
        return
    templates = [(f"spec.replicaSpecs.{k}.template", v.get("template"))
                 for k, v in (spec.get("replicaSpecs") or {}).items() if isinstance(v, Mapping)]
    templates += [(f"spec.tasks.{i}.template", t.get("template"))
                  for i, t in enumerate(spec.get("tasks") or []) if isinstance(t, Mapping)]
    for path, tpl in templates:
        if isinstance(tpl, Mapping) and "labels" in (tpl.get("metadata") or {}):
            yield f"{path}.metadata.labels", tpl["metadata"]["labels"]


def _check_labels(where: str, path: str, labels: Any) -> None:
    if not isinstance(labels, Mapping):
        raise ManifestError(where, path, "a map of strings is required")
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and (not _SUBDOMAIN.match(prefix) or len(prefix) > 253)) or not (
                _LABEL_VALUE.match(name) and 0 < len(name) <= 63):
            raise ManifestError(where, f"{path}.{key}", "not a valid label key")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ManifestError(where, f"{path}.{key}", f"{value!r} is not a valid label value")


def _check_configmap(where: str, manifest: Mapping[str, Any]) -> None:
    extra = set(manifest) - {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"}
    if extra:
        raise ManifestError(where, sorted(extra)[0], "not a ConfigMap field")
    size = 0
    for field in ("data", "binaryData"):
        for key, value in (manifest.get(field) or {}).items():
            if not _CONFIG_KEY.match(key) or len(key) > 253:
                raise ManifestError(where, f"{field}.{key}",
                                    "keys are alphanumerics, '-', '_' or '.'")
            if not isinstance(value, str):
                raise ManifestError(where, f"{field}.{key}", "a string is required")
            size += len(key) + len(value.encode())
    if size > CONFIGMAP_MAX_BYTES:
        raise ManifestError(where, "data", f"{size} bytes, over the {CONFIGMAP_MAX_BYTES} "
                                           "bytes a ConfigMap may hold")
