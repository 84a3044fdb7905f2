"""MindFormers run configs (run_bloom_*.yaml) as `--config`: the two real files from
../shared/data/mindformers (copied to tests/fixtures/mindformers), edits of them, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import PresetError

REPO = Path(__file__).resolve().parents[2]
MF = REPO / "tests" / "fixtures" / "mindformers"
REAL = ("run_bloom_560m.yaml", "run_bloom_7.1b.yaml")


def inventory(tmp_path: Path, devices: int) -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(f"defaults: {{devices: {devices}}}\nnodes: [{{host: 10.0.0.1}}]\n")
    return path


def plan_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["plan", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def edited(tmp_path: Path, name: str = "run_bloom_560m.yaml", **changes: object) -> Path:
    """A copy of a real file with `a.b.c=value` edits (as users edit them)."""
    doc = yaml.safe_load((MF / name).read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = doc
        for part in parents:
            node = node[part]
        node[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", REAL)
def test_plan_shows_the_files_layout_and_dimensions(name: str, tmp_path: Path) -> None:
    doc = yaml.safe_load((MF / name).read_text())
    mc, pc = doc["model"]["model_config"], doc["parallel_config"]
    devices = pc["data_parallel"] * pc["model_parallel"] * pc["pipeline_stage"]
    plan = plan_json("-i", str(inventory(tmp_path, devices)), "-c", str(MF / name))
    p, m = plan["parallel"], plan["model"]
    assert (p["data_parallel"], p["model_parallel"], p["pipeline_stage"], p["micro_batch_num"],
            p["batch_size"]) == (pc["data_parallel"], pc["model_parallel"], pc["pipeline_stage"],
                                 pc["micro_batch_num"], doc["runner_config"]["batch_size"])
    assert p["global_batch_size"] == (doc["runner_config"]["batch_size"] * pc["data_parallel"]
                                      * pc["micro_batch_num"])
    assert p["optimizer_shard"] is doc["parallel"]["enable_parallel_optimizer"]
    assert (m["hidden_size"], m["num_layers"], m["num_heads"], m["seq_length"],
            m["vocab_size"], m["param_dtype"]) == (mc["hidden_size"], mc["num_layers"],
                                                   mc["num_heads"], mc["seq_length"],
                                                   mc["vocab_size"], mc["param_init_type"])
    assert not any("recomputed" in n for n in plan["notes"])
    notes = "\n".join(plan["notes"])
    assert "runner_config.epochs=10" in notes and "optimizer.beta2=0.95" in notes
    assert "ignored (no meaning in orchestrate)" in notes and "profile_memory" in notes


def test_data_parallel_is_recomputed_for_the_inventory_with_a_note() -> None:
    plan = plan_json("-i", str(REPO / "inventories/12node.yaml"), "-c",
                     str(MF / "run_bloom_7.1b.yaml"))
    assert (plan["parallel"]["data_parallel"], plan["parallel"]["model_parallel"]) == (12, 4)
    assert any("data_parallel recomputed 1 -> 12" in n for n in plan["notes"])


def test_set_applies_on_top_and_training_keys_are_mapped() -> None:
    spec = load_job_spec(str(MF / "run_bloom_7.1b.yaml"),
                         ["parallel.micro_batch_num=4", "train.steps=10"])
    assert spec.parallel.micro_batch_num == 4 and spec.value("train.steps") == 10
    assert spec.value("train.lr") == 1e-6 and spec.value("train.min_lr") == 1e-7
    assert spec.value("train.warmup_steps") == 1000 and spec.value("train.save_steps") == 1000
    assert spec.value("parallel.recompute") is True and spec.value("model.hidden_dropout") == 0.1
    assert spec.value("train.mode") == "finetune" and spec.value("train.load_checkpoint") == ""


def test_embedding_size_dataset_dir_and_load_checkpoint(tmp_path: Path) -> None:
    doc = yaml.safe_load((MF / "run_bloom_560m.yaml").read_text())
    doc["model"]["model_config"]["embedding_size"] = doc["model"]["model_config"].pop(
        "hidden_size") // 2
    doc["train_dataset"]["data_loader"]["dataset_dir"] = "/data/wiki"
    doc["load_checkpoint"] = "/ckpt/bloom.ckpt"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_job_spec(str(path))
    assert spec.model.hidden_size == 512
    assert spec.value("data.path") == "/data/wiki"
    assert spec.value("train.load_checkpoint") == "/ckpt/bloom.ckpt"


def test_enable_parallel_optimizer_wins_over_optimizer_shard(tmp_path: Path) -> None:
    path = edited(tmp_path, parallel__enable_parallel_optimizer=True,
                  parallel_config__optimizer_shard=False)
    assert load_job_spec(str(path)).parallel.optimizer_shard is True


@pytest.mark.parametrize(("change", "message"), [
    ({"model__model_config__expand_ratio": 8},
     "model.model_config.expand_ratio=8 is not supported (only 4)"),
    ({"model__model_config__hidden_act": "relu"}, "model.model_config.hidden_act='relu'"),
    ({"model__model_config__num_heads": "many"},
     "model.model_config.num_heads: model.n_head: expected int, got 'many'"),
    ({"parallel_config__model_parallel": 3}, "n_head=16 is not divisible by model_parallel=3"),
])
def test_what_we_cannot_build_is_refused_naming_the_key(tmp_path: Path, change: dict,
                                                        message: str) -> None:
    path = edited(tmp_path, **change)
    with pytest.raises(PresetError) as err:
        load_job_spec(str(path))
    assert message in str(err.value)
    result = CliRunner().invoke(cli, ["plan", "-i", str(inventory(tmp_path, 1)), "-c", str(path)])
    assert result.exit_code != 0 and message in result.output


def test_model_config_of_a_mindformers_file_for_infer_and_convert() -> None:
    """`infer --config` / `convert-weights --config` / the pipeline read the same mapping."""
    from orchestrate_bloom.config import load_preset

    cfg = load_preset(MF / "run_bloom_7.1b.yaml")
    assert (cfg.hidden_size, cfg.n_layer, cfg.n_head, cfg.seq_length, cfg.vocab_size) == (
        4096, 30, 32, 2048, 250880)
    assert (cfg.hidden_dropout, cfg.attention_dropout, cfg.param_dtype) == (0.1, 0.1, "float16")
