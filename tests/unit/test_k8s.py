"""Kubernetes manifests (orchestrator/k8s): generated for real presets and inventories, written
as YAML, read back and validated against the shipped CRD schemas; refused when broken; the
pods' launch scripts run with bash under the platform's environment (no cluster here).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config.inventory import load_inventory, parse_inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import JobError, ManifestError
from orchestrator.job.render import LaunchSpec, render_pod_launch
from orchestrator.k8s.emit import emit, too_big_for_client_apply
from orchestrator.k8s.manifests import CONFIG_DIR, JOB_DIR, K8sOptions, job_manifests, resumed
from orchestrator.k8s.schema import validate

ROOT = Path(__file__).resolve().parents[2]
ONE_NODE_8 = "defaults: {devices: 8, workdir: /w}\nhosts: [10.0.0.1]\n"
OPTS = K8sOptions(image="registry.local/bloom:1", volume="bloom-ckpt")


def _manifests(inv_text: str | None, preset: str, mode: str, job_id: str = "j-abcd",
               **launch: Any) -> list[dict[str, Any]]:
    inv = (load_inventory(ROOT / "inventories" / "12node.yaml") if inv_text is None
           else parse_inventory(inv_text, "inv.yaml"))
    plan = build_plan(inv, load_job_spec(preset, ("data.path=/data/mr",)))
    spec = LaunchSpec(job_id=job_id, mode=mode, world_size=plan.world_size, sched_host="",
                      **launch)
    return job_manifests(plan, spec, OPTS)


def _emitted(tmp_path: Path, manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Write, read every file back as kubectl would, validate what was read: kind -> object."""
    paths = emit(manifests, tmp_path)
    out = {}
    for p in paths:
        (doc,) = list(yaml.safe_load_all(p.read_text()))
        validate(doc)
        out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    return out


@pytest.mark.parametrize("inv,preset,workers,npus", [(ONE_NODE_8, "7.1b", 1, 8),
                                                    (None, "65b", 12, 8)])
def test_ascendjob_valid_and_shaped(tmp_path: Path, inv: str | None, preset: str, workers: int,
                                    npus: int) -> None:
    docs = _emitted(tmp_path, _manifests(inv, preset, "msrun", job_id=f"{preset}-abcd"))
    name = f"{preset.replace('.', '-')}-abcd"
    job = docs[f"AscendJob/{name}"]
    assert job["apiVersion"] == "mindxdl.gitee.com/v1"
    assert job["metadata"]["labels"]["framework"] == "mindspore"
    assert job["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910b"
    spec = job["spec"]
    assert spec["schedulerName"] == "volcano" and spec["successPolicy"] == "AllWorkers"
    assert spec["runPolicy"]["schedulingPolicy"]["minAvailable"] == workers + 1
    assert spec["replicaSpecs"]["Scheduler"]["replicas"] == 1
    worker = spec["replicaSpecs"]["Worker"]
    assert worker["replicas"] == workers
    (c,) = worker["template"]["spec"]["containers"]
    assert c["name"] == "ascend" and c["image"] == OPTS.image
    assert c["ports"] == [{"containerPort": 2222, "name": "ascendjob-port"}]
    assert c["resources"]["limits"] == {"huawei.com/Ascend910": npus}
    (visible,) = c["env"]
    assert visible["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['huawei.com/Ascend910']"
    assert worker["template"]["spec"]["terminationGracePeriodSeconds"] == 10 + 20
    out = {m["mountPath"]: m["subPath"] for m in c["volumeMounts"] if m["name"] == "output"}
    vols = {v["name"]: v for v in worker["template"]["spec"]["volumes"]}
    assert vols["output"]["persistentVolumeClaim"]["claimName"] == "bloom-ckpt"
    assert out == {"/orchestrate/job/output/checkpoint": f"{name}/checkpoint",
                   "/orchestrate/job/output/strategy": f"{name}/strategy"}
    files = docs[f"ConfigMap/{name}-files"]
    # Client-side `kubectl apply` copies the object into an annotation of at most 256 KiB.
    assert too_big_for_client_apply(list(docs.values())) == []
    big = copy.deepcopy(files)
    big["data"]["pad"] = "x" * 256 * 1024
    assert too_big_for_client_apply([big]) == [f"ConfigMap {name}-files"]
    assert "MS_NODE_RANK * MS_LOCAL_WORKER + 7" in files["data"]["launch-worker.sh"]
    job_yaml = yaml.safe_load(files["data"]["job.yaml"])
    assert job_yaml["job"]["id"] == f"{preset}-abcd"
    p = job_yaml["parallel"]
    assert p["data_parallel"] * p["model_parallel"] * p["pipeline_stage"] == workers * npus


@pytest.mark.parametrize("inv,preset,pods", [(ONE_NODE_8, "7.1b", 1), (None, "65b", 12)])
def test_volcano_job_valid_with_rings_config(tmp_path: Path, inv: str | None, preset: str,
                                             pods: int) -> None:
    docs = _emitted(tmp_path, _manifests(inv, preset, "ranktable", job_id="job-abcd"))
    job = docs["Job/job-abcd"]
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1"
    assert job["spec"]["schedulerName"] == "volcano" and job["spec"]["minAvailable"] == pods
    rings = docs["ConfigMap/rings-config-job-abcd"]
    assert json.loads(rings["data"]["hccl.json"]) == {"status": "initializing"}
    (task,) = job["spec"]["tasks"]
    assert task["replicas"] == pods
    pod = task["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    table_vol = next(n for n, v in vols.items()
                     if v.get("configMap", {}).get("name") == "rings-config-job-abcd")
    assert mounts[table_vol] == "/user/serverid/devindex/config"
    launch = docs["ConfigMap/job-abcd-files"]["data"]["launch-worker.sh"]
    assert '"status": *"completed"' in launch and "VC_TASK_INDEX * 8 + 7" in launch


def _ascendjob() -> dict[str, Any]:
    return next(m for m in _manifests(ONE_NODE_8, "7.1b", "msrun") if m["kind"] == "AscendJob")


_WORKER = ("spec", "replicaSpecs", "Worker", "template", "spec", "containers", 0)
_TASK = ("spec", "tasks", 0, "template", "spec", "containers", 0)


@pytest.mark.parametrize("inv,preset,mode,path,expect", [
    (ONE_NODE_8, "7.1b", "msrun", ("spec", "replicaSpecs"),
     "AscendJob 7-1b-abcd: spec: 'replicaSpecs' is a required property"),
    (None, "65b", "msrun", (*_WORKER, "name"),
     "AscendJob 65b-abcd: spec.replicaSpecs.Worker.template.spec.containers.0: 'name' is a "
     "required property"),
    (None, "65b", "msrun", ("metadata", "name"), "AscendJob ?: metadata.name: a string is "
                                                 "required"),
    (ONE_NODE_8, "7.1b", "ranktable", ("spec", "tasks", 0, "template", "spec", "containers"),
     "Job 7-1b-abcd: spec.tasks.0.template.spec: 'containers' is a required property"),
    (None, "65b", "ranktable", (*_TASK, "name"),
     "Job 65b-abcd: spec.tasks.0.template.spec.containers.0: 'name' is a required property"),
])
def test_missing_required_field_refused_nothing_written(
        tmp_path: Path, inv: str | None, preset: str, mode: str, path: tuple[Any, ...],
        expect: str) -> None:
    """7.1b on 8 devices and 65b on 96 devices, each job kind: a required field removed from
    the generated job object is refused by the shipped schema, naming it; nothing written."""
    manifests = _manifests(inv, preset, mode, job_id=f"{preset}-abcd")
    validate(manifests[-1])  # as generated: valid
    parent: Any = manifests[-1]
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ManifestError) as e:
        emit(manifests, tmp_path / "out")
    assert str(e.value).startswith(expect), str(e.value)
    assert not (tmp_path / "out").exists()


def test_unknown_field_and_bad_values_refused() -> None:
    job = _ascendjob()
    bad = copy.deepcopy(job)
    bad["spec"]["replicaSpecs"]["Worker"]["replica"] = 2  # typo of `replicas`
    with pytest.raises(ManifestError, match=r"Worker: Additional properties .*'replica'"):
        validate(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] = "13"
    with pytest.raises(ManifestError, match="minAvailable: '13' is not of type 'integer'"):
        validate(bad)
    bad = copy.deepcopy(job)
    bad["metadata"]["name"] = "7.1b-abcd"
    with pytest.raises(ManifestError, match="metadata.name: '7.1b-abcd' is not a DNS-1123"):
        validate(bad)
    files = _manifests(ONE_NODE_8, "7.1b", "msrun")[0]
    files["data"]["code/x.py"] = ""
    with pytest.raises(ManifestError, match=r"data.code/x.py: keys are"):
        validate(files)


def test_uneven_nodes_refused() -> None:
    inv = ("defaults: {workdir: /w}\n"
           "nodes: [{host: 10.0.0.1, devices: 8}, {host: 10.0.0.2, devices: 4}]\n")
    with pytest.raises(JobError, match="same device count on every node"):
        _manifests(inv, "tiny", "msrun")


def _pod(tmp_path: Path, manifests: list[dict[str, Any]], role: str) -> tuple[Path, str]:
    """A pod of `role` without Kubernetes: the ConfigMap's items written at their paths in a
    config folder (as the kubelet mounts them); the job folder; the container's own command
    with the pod's two mount points moved under tmp_path."""
    files, job = manifests[0], manifests[-1]
    spec = (job["spec"]["replicaSpecs"][role.capitalize()]["template"]["spec"]
            if job["kind"] == "AscendJob" else job["spec"]["tasks"][0]["template"]["spec"])
    vol = next(v for v in spec["volumes"] if v["name"] == "files")
    config, job_dir = tmp_path / role / "config", tmp_path / role / "job"
    job_dir.mkdir(parents=True)
    for item in vol["configMap"]["items"]:
        dest = config / item["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if item["key"] in files["data"]:
            dest.write_text(files["data"][item["key"]])
        else:
            dest.write_bytes(base64.b64decode(files["binaryData"][item["key"]]))
    (command,) = [c["command"][-1] for c in spec["containers"]]
    return job_dir, command.replace(CONFIG_DIR, str(config)).replace(JOB_DIR, str(job_dir))


def _run(pod: tuple[Path, str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "HOME": str(pod[0]), **env}
    return subprocess.run(["bash", "-c", pod[1]], env=full, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _rank_lines(job_dir: Path) -> list[str]:
    return sorted(line for p in job_dir.glob("ranks/*/stdout.log")
                  for line in p.read_text().splitlines() if line.startswith("rank "))


def test_msrun_pods_take_ranks_from_operator_env(tmp_path: Path) -> None:
    # The model package is imported from the pod's code/ (the ConfigMap), not this checkout.
    probe = ("python3 -c 'import os, orchestrate_bloom.presets as p; e = os.environ; "
             "print(\"rank\", e.get(\"MS_NODE_ID\"), e[\"MS_ROLE\"], e.get(\"DEVICE_ID\"), "
             "e[\"MS_WORKER_NUM\"], "
             "p.__file__.startswith(e[\"ORCHESTRATE_JOB_DIR\"] + \"/code/\"))'")
    inv = "defaults: {devices: 2, workdir: /w}\nhosts: [10.0.0.1, 10.0.0.2]\n"
    manifests = _manifests(inv, "tiny", "msrun", entrypoint=probe)
    operator = {"MS_SCHED_HOST": "job-abcd-scheduler-0", "MS_SCHED_PORT": "2222",
                "MS_WORKER_NUM": "4", "MS_LOCAL_WORKER": "2"}
    worker = _pod(tmp_path, manifests, "worker")
    done = _run(worker, {**operator, "MS_NODE_RANK": "1", "MS_ROLE": "MS_WORKER"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert _rank_lines(worker[0]) == ["rank 2 MS_WORKER 0 4 True",
                                   "rank 3 MS_WORKER 1 4 True"]
    # The container's stdout (kubectl logs) carries every rank's lines, prefixed by slot.
    assert {"[0] rank 2 MS_WORKER 0 4 True", "[1] rank 3 MS_WORKER 1 4 True"} <= set(
        done.stdout.splitlines())
    sched = _pod(tmp_path, manifests, "scheduler")
    assert _run(sched, {**operator, "MS_ROLE": "MS_SCHED"}).returncode == 0
    assert _rank_lines(sched[0]) == ["rank None MS_SCHED None 4 True"]
    # A job rendered for another world size refuses to start its ranks: exit non-zero.
    again = _pod(tmp_path / "again", manifests, "worker")
    assert _run(again, {**operator, "MS_WORKER_NUM": "8", "MS_NODE_RANK": "0"}).returncode == 1
    assert "MS_WORKER_NUM=8 from the operator, the job was rendered for 4" in \
        (again[0] / "ranks" / "0" / "stdout.log").read_text()


def test_resumed_attempt_pods_run_resume(tmp_path: Path) -> None:
    """A resumed attempt's job object (backends/k8s.py start(resume=True)): its pods run
    `launch.sh run resume`, so every rank gets ORCHESTRATE_RESUME=1 (the trainer's --resume)
    and the logs' attempt marker is the job's attempt; the first attempt's do not resume."""
    inv = "defaults: {devices: 2, workdir: /w}\nhosts: [10.0.0.1]\n"
    manifests = _manifests(inv, "tiny", "msrun", entrypoint='echo rank "$MS_NODE_ID" '
                           '"${ORCHESTRATE_RESUME:-0}"')
    operator = {"MS_SCHED_HOST": "s", "MS_SCHED_PORT": "2222", "MS_WORKER_NUM": "2",
                "MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "0", "MS_ROLE": "MS_WORKER"}
    for attempt, job in ((1, manifests[-1]), (3, resumed(manifests[-1], 3))):
        pod = _pod(tmp_path / str(attempt), [manifests[0], job], "worker")
        done = _run(pod, operator)
        assert done.returncode == 0, done.stdout + done.stderr
        flag = "1" if attempt > 1 else "0"
        assert _rank_lines(pod[0]) == [f"rank 0 {flag}", f"rank 1 {flag}"]
        assert [f"[1] == orchestrate attempt {attempt} ==", f"[1] rank 1 {flag}"] == [
            line for line in done.stdout.splitlines() if line.startswith("[1] ")]


def test_ranktable_pod_waits_for_completed_table(tmp_path: Path) -> None:
    table = tmp_path / "table"
    table.mkdir()
    launch = LaunchSpec(job_id="j", mode="ranktable", world_size=4, sched_host="",
                        cluster_timeout=1, entrypoint='echo rank "$RANK_ID" "$RANK_TABLE_FILE"')
    text = render_pod_launch(launch, "worker", 2, "python3", table_dir=str(table))
    early, job_dir = tmp_path / "pod-early" / "job", tmp_path / "pod" / "job"  # fresh pods
    for d in (early, job_dir):
        d.mkdir(parents=True)
        (d / "launch.sh").write_text(text)
    (table / "hccl.json").write_text('{"status":"initializing"}')
    foreground = "exec bash launch.sh run"
    assert _run((early, f"cd {early}; {foreground}"), {"VC_TASK_INDEX": "1"}).returncode == 1
    assert "hccl.json not completed after 1 s" in (early / "ranks/0/stdout.log").read_text()
    (table / "hccl.json").write_text('{"status": "completed", "server_list": []}')
    assert _run((job_dir, f"cd {job_dir}; {foreground}"), {"VC_TASK_INDEX": "1"}).returncode == 0
    assert _rank_lines(job_dir) == [f"rank 2 {table}/hccl.json", f"rank 3 {table}/hccl.json"]


def test_cli_emit_and_its_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["up", "--backend", "k8s", "-i", str(ROOT / "inventories" / "12node.yaml"), "-c",
            "65b", "--mode", "msrun", "--set", "data.path=/data/mr", "--state-dir",
            str(tmp_path / "state")]
    out = tmp_path / "out"
    res = runner.invoke(cli, [*base, "--emit", str(out), "--image", "r/b:1", "--volume", "c"])
    assert res.exit_code == 0, res.output
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in out.iterdir())
    assert kinds == ["AscendJob", "ConfigMap"] and "kubectl apply -f" in res.output
    res = runner.invoke(cli, [*base, "--emit", str(out)])
    assert res.exit_code == 1 and "needs --image and --volume" in res.output
    local = "data.path=model/assets/alpaca_seed_tasks.json"  # exists here: not in a pod
    res = runner.invoke(cli, [*base[:-4], "--set", local, "--emit", str(out), "--image", "r/b:1",
                              "--volume", "c"])
    assert res.exit_code == 1 and "with --backend k8s nothing is staged" in res.output
    ft = tmp_path / "ft.yaml"
    ft.write_text("defaults: {devices: 2, workdir: /w}\nhosts: [10.0.0.1]\n"
                  "fault_tolerance: {recovery: true}\n")
    res = runner.invoke(cli, ["up", "--backend", "k8s", "-i", str(ft), "-c", "tiny", "--set",
                              "data.path=/data/mr", "--emit", str(out), "--image", "r/b:1",
                              "--volume", "c"])
    assert res.exit_code == 1 and "fault_tolerance: not supported with --backend k8s" in \
        res.output
    res = runner.invoke(cli, [*base, "--emit", str(out), "--image", "r/b:1", "--volume", "c",
                              "--rank-table", str(ft)])
    assert res.exit_code == 2 and "--backend k8s: no --rank-table" in res.output
    res = runner.invoke(cli, ["up", "-i", "inventories/local.yaml", "-c", "tiny", "--emit", "x"])
    assert res.exit_code == 2 and "--emit: only with --backend k8s" in res.output
    assert len(list(out.iterdir())) == 2  # the refused runs wrote nothing


def test_pod_sigterm_stops_every_rank(tmp_path: Path) -> None:
    """Kubernetes deletes a pod with SIGTERM to its main process: the ranks are stopped, the
    container exits non-zero, no rank process is left."""
    launch = LaunchSpec(job_id="j", mode="msrun", world_size=4, sched_host="", stop_grace=1,
                        entrypoint="exec sleep 300")
    job_dir = tmp_path / "pod" / "job"
    job_dir.mkdir(parents=True)
    (job_dir / "launch.sh").write_text(render_pod_launch(launch, "worker", 2, "python3"))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MS_SCHED_HOST": "s",
           "MS_SCHED_PORT": "1", "MS_WORKER_NUM": "4", "MS_LOCAL_WORKER": "2",
           "MS_NODE_RANK": "1"}
    proc = subprocess.Popen(["bash", str(job_dir / "launch.sh"), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        pid_files = [job_dir / "ranks" / s / "pid" for s in ("0", "1")]
        for _ in range(600):  # poll until both ranks are recorded
            if all(p.is_file() for p in pid_files) or proc.poll() is not None:
                break
            time.sleep(0.1)
        pids = [int(p.read_text().split()[0]) for p in pid_files]
        proc.terminate()
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        assert state == "Z", f"rank process {pid} still runs"
