"""Property-based: any YAML or --set string parses or fails in one line, never a crash."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config.inventory import parse_inventory
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import InventoryError, PresetError
from tests.tools.examples import examples

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["10.0.0.1", "192.168.0.300", "a;touch /tmp/pwned", "$(id)", "~/x", "/abs"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
node_keys = st.sampled_from(
    [
        "host",
        "name",
        "user",
        "port",
        "devices",
        "workdir",
        "python",
        "env",
        "device_ips",
        "connection",
        "bogus",
    ]
)
nodes = st.lists(st.dictionaries(node_keys, values, max_size=6), max_size=4)
documents = st.one_of(
    values,
    st.fixed_dictionaries({"nodes": nodes}),
    st.fixed_dictionaries(
        {
            "defaults": st.dictionaries(node_keys, values, max_size=4),
            "hosts": st.lists(scalars, max_size=4),
        }
    ),
)


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents)
def test_any_inventory_document_parses_or_fails_in_one_line(doc: object) -> None:
    text = yaml.safe_dump(doc)
    try:
        inv = parse_inventory(text, "fuzz.yaml")
    except InventoryError as e:
        assert str(e).startswith("fuzz.yaml: ")
        assert "\n" not in str(e)
    else:
        assert inv.nodes and all(n.devices for n in inv.nodes)


@settings(max_examples=examples(200), deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_fails_in_one_line(text: str) -> None:
    try:
        parse_inventory(text, "fuzz.yaml")
    except InventoryError as e:
        assert "\n" not in str(e)


keys = st.sampled_from(
    [
        "parallel.micro_batch_num",
        "train.lr",
        "parallel.optimizer_shard",
        "model.param_dtype",
        "train.seq_length",
        "model.hidden_size",
        "x.y",
        "",
        "train.device_target",
    ]
)


@settings(max_examples=examples(300), deadline=None)
@given(keys, st.text(max_size=12))
def test_any_override_applies_or_fails_in_one_line(key: str, value: str) -> None:
    try:
        load_job_spec("tiny", [f"{key}={value}"])
    except PresetError as e:
        assert "\n" not in str(e)
