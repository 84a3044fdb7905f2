"""The Kubernetes backend (orchestrator/backends/k8s.py) without a cluster: the record and the
manifests `up --backend k8s` keeps, what pods and job objects (the official client's models)
mean for the watch loop, and every API step failing in one line against a kubeconfig whose
server does not answer, through the same CLI commands as ssh and slurm.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.backends import get_backend
from orchestrator.backends.k8s import create_job, manifests_of, ref_of
from orchestrator.cli.main import cli
from orchestrator.config.inventory import load_inventory, parse_inventory
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import JobError, ManifestError
from orchestrator.job import failure as failures
from orchestrator.job.lifecycle import UpOptions
from orchestrator.job.nodes import derive_status
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.k8s.manifests import K8sOptions, pod_templates, resumed
from orchestrator.k8s.schema import validate
from orchestrator.k8s.status import poll_of

k = pytest.importorskip("kubernetes.client")

ROOT = Path(__file__).resolve().parents[2]
TWO_BY_TWO = "defaults: {devices: 2, workdir: /w}\nhosts: [10.0.0.1, 10.0.0.2]\n"
OPTS = K8sOptions(image="registry.local/bloom:1", volume="bloom-ckpt")
AT = datetime(2026, 12, 7, 4, 0, tzinfo=timezone.utc)


def _job(tmp_path: Path, inv_text: str | None = TWO_BY_TWO, preset: str = "tiny",
         mode: str = "msrun") -> tuple[JobRecord, JobStore]:
    inv = (load_inventory(ROOT / "inventories" / "12node.yaml") if inv_text is None
           else parse_inventory(inv_text, str(tmp_path / "inv.yaml")))
    store = JobStore(tmp_path / "state")
    spec = load_job_spec(preset, ("data.path=/data/mr",))
    return create_job(inv, spec, store, UpOptions(mode=mode), OPTS, None), store


def test_record_and_manifests_of_a_65b_job(tmp_path: Path) -> None:
    """65b on 12 nodes x 8 devices: one NodeRecord per pod, where the job lives in the record,
    the validated manifests in the job folder; a resumed attempt's pods run `run resume`."""
    record, store = _job(tmp_path, None, "65b")
    assert (record.backend, record.status, record.world_size) == ("k8s", JobStatus.PENDING, 96)
    assert [(n.rank_start, n.rank_end) for n in record.nodes] == [(8 * i, 8 * i + 8)
                                                                  for i in range(12)]
    assert store.load(record.job_id) == record  # the record round-trips through its JSON
    ref = ref_of(record)
    assert (ref.kind, ref.namespace, ref.volume, ref.kubeconfig) == ("AscendJob", "default",
                                                                      "bloom-ckpt", None)
    assert ref.name == record.scheduler_job == record.job_id
    manifests = manifests_of(store, record)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "AscendJob"]
    job = manifests[-1]
    assert job["metadata"]["name"] == ref.name
    assert job["spec"]["replicaSpecs"]["Worker"]["replicas"] == 12
    again = resumed(job, 2)
    validate(again)
    commands = [c["command"][-1] for t in pod_templates(again) for c in t["spec"]["containers"]]
    assert len(commands) == 2 and all(c.endswith("launch.sh run resume") for c in commands)
    assert all(c["command"][-1].endswith("launch.sh run") for t in pod_templates(job)
               for c in t["spec"]["containers"])
    lines: list[str] = []
    assert get_backend("k8s").stage(record, None, store, lines.append) == record  # type: ignore[arg-type]
    assert lines == [f"2 Kubernetes object(s) validated: ConfigMap {ref.name}-files, "
                     f"AscendJob {ref.name}"]
    # A manifest edited in the job folder into something the API would refuse: not started.
    path = next((store.job_dir(record.job_id) / "k8s").glob("*-ascendjob.yaml"))
    broken = yaml.safe_load(path.read_text())
    del broken["spec"]["replicaSpecs"]
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ManifestError, match="spec: 'replicaSpecs' is a required property"):
        manifests_of(store, record)


def _pod(name: str, phase: str, code: int | None = None, node: str | None = "n1",
         why: str | None = None, deleting: bool = False) -> Any:
    """A pod as the API returns it (the client's own models)."""
    statuses = None
    if code is not None:
        done = k.V1ContainerStateTerminated(exit_code=code, finished_at=AT)
        statuses = [k.V1ContainerStatus(name="ascend", image="r/b:1", image_id="", ready=False,
                                        restart_count=0, state=k.V1ContainerState(terminated=done))]
    conditions = ([k.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                    message=why)] if why else None)
    return k.V1Pod(metadata=k.V1ObjectMeta(name=f"tiny-abcd-{name}",
                                           deletion_timestamp=AT if deleting else None),
                   spec=k.V1PodSpec(containers=[], node_name=node),
                   status=k.V1PodStatus(phase=phase, container_statuses=statuses,
                                        conditions=conditions))


def _look(record: JobRecord, status: dict[str, Any] | None, pods: list[Any],
          kind: str = "AscendJob", logs: dict[str, str] | None = None
          ) -> tuple[JobStatus, str, Any]:
    """What refresh() makes of one poll: (status, message, the poll's reports)."""
    poll = poll_of(record, kind, "tiny-abcd", status, pods, logs)
    state = derive_status(record, poll.reports)
    failure = failures.first_failure(poll.reports) if state is JobStatus.FAILED else None
    message = failure.describe() if failure else ""
    if poll.verdict is not None:
        state, message = poll.verdict
    return state, message, poll.reports


def test_pods_and_job_object_become_our_states(tmp_path: Path) -> None:
    record, _ = _job(tmp_path)
    record = dataclasses.replace(record, status=JobStatus.LAUNCHING)
    running = {"conditions": [{"type": "Running", "status": "True"}]}
    assert _look(record, {}, [])[:2] == (JobStatus.PENDING, "AscendJob tiny-abcd: waiting for "
                                                            "its pods")
    pending = [_pod(n, "Pending", node=None, why="0/3 nodes are available: 3 Insufficient "
                    "huawei.com/Ascend910.") for n in ("scheduler-0", "worker-0", "worker-1")]
    assert _look(record, {}, pending)[:2] == (
        JobStatus.PENDING, "AscendJob tiny-abcd: 0 of 3 pod(s) placed (Unschedulable: 0/3 "
        "nodes are available: 3 Insufficient huawei.com/Ascend910.)")
    up = [_pod("scheduler-0", "Running"), _pod("worker-0", "Running"),
          _pod("worker-1", "Running")]
    # The end of worker pod 1's log (`launch.sh run`: each rank's lines prefixed by its
    # pod-local slot): ranks 2 and 3 get their last step line's metrics, noise is skipped.
    log = ("[0] == orchestrate attempt 1 ==\n[0] step=3 loss=2.5 lr=1.0e-04\n"
           "[1] step=4 loss=2.25 tokens_per_s=310.5\n[1] step=x loss=bad\n[0] done\n"
           "[7] step=9 loss=1\n")
    state, _, reports = _look(record, running, up, logs={"tiny-abcd-worker-1": log})
    assert state is JobStatus.RUNNING
    assert [(s.slot, s.state) for s in reports[record.nodes[0].name].slots] == [
        ("0", "running"), ("1", "running"), ("sched", "running")]
    assert [(s.slot, dict(s.metrics)) for s in reports[record.nodes[1].name].slots] == [
        ("2", {"step": 3.0, "loss": 2.5, "lr": 1e-4}),
        ("3", {"step": 4.0, "loss": 2.25, "tokens_per_s": 310.5})]
    assert all(not s.metrics for s in reports[record.nodes[0].name].slots)
    # Worker pod 1 (ranks 2-3 on the second node) failed with 137: the job FAILED, naming it.
    failed = [up[0], up[1], _pod("worker-1", "Failed", code=137)]
    state, message, reports = _look(record, running, failed)
    assert (state, message) == (JobStatus.FAILED, "rank 2 on 10.0.0.2 exited 137")
    assert reports["10.0.0.2"].first_failure == ("2", 137, AT.timestamp())
    done = [_pod(n, "Succeeded", code=0) for n in ("scheduler-0", "worker-0", "worker-1")]
    assert _look(record, {"conditions": [{"type": "Succeeded", "status": "True"}]},
                 done)[0] is JobStatus.SUCCEEDED
    # Deleted pods are exiting; a pod whose node stopped answering makes that node unreachable.
    state, _, reports = _look(record, running, [up[0], _pod("worker-0", "Running", deleting=True),
                                                _pod("worker-1", "Unknown")])
    assert {s.state for s in reports["10.0.0.1"].slots} == {"running", "exiting"}
    assert isinstance(reports["10.0.0.2"], JobError)
    assert str(reports["10.0.0.2"]) == ("pod tiny-abcd-worker-1: phase Unknown (its node "
                                        "does not answer)")


def test_job_object_verdicts(tmp_path: Path) -> None:
    record, _ = _job(tmp_path)
    record = dataclasses.replace(record, status=JobStatus.RUNNING)
    up = [_pod("scheduler-0", "Running"), _pod("worker-0", "Running"),
          _pod("worker-1", "Running")]
    assert _look(record, None, up)[:2] == (JobStatus.FAILED, "AscendJob tiny-abcd is gone "
                                                             "(deleted outside orchestrate?)")
    gone = {"conditions": [{"type": "Running", "status": "True"},
                           {"type": "Failed", "status": "True", "reason": "PodEvicted",
                            "message": "pod tiny-abcd-worker-1 evicted\x1b[31m"}]}
    assert _look(record, gone, [])[:2] == (
        JobStatus.FAILED, "AscendJob tiny-abcd Failed: PodEvicted: pod tiny-abcd-worker-1 "
        "evicted\ufffd[31m")
    assert _look(record, {"conditions": [{"type": "Succeeded", "status": "True"}]},
                 [])[:2] == (JobStatus.SUCCEEDED, "AscendJob tiny-abcd Succeeded (its pods "
                                                  "are gone)")
    table, _ = _job(tmp_path / "rt", mode="ranktable")
    table = dataclasses.replace(table, status=JobStatus.RUNNING)
    assert _look(table, {"state": {"phase": "Aborted", "reason": "PodFailed"}}, [], "Job")[:2] \
        == (JobStatus.FAILED, "Job tiny-abcd Aborted: PodFailed")
    # An ended record stays as it is (CANCELLED by down, FAILED by a rank).
    cancelled = dataclasses.replace(record, status=JobStatus.CANCELLED)
    assert _look(cancelled, None, [])[0] is JobStatus.CANCELLED


def _dead_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig whose server does not answer (nothing listens on port 9)."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def test_cli_lifecycle_against_a_dead_api_server(tmp_path: Path) -> None:
    """up records the job and fails in one line naming the object; status, logs, down and
    down --save of the job go through the backend and say what the API did not answer."""
    kube, state = _dead_kubeconfig(tmp_path), tmp_path / "state"
    inv = tmp_path / "inv.yaml"
    inv.write_text(TWO_BY_TWO)
    runner = CliRunner()
    res = runner.invoke(cli, ["up", "--backend", "k8s", "-i", str(inv), "-c", "tiny", "--set",
                              "data.path=/data/mr", "--image", "r/b:1", "--volume", "c",
                              "--kubeconfig", str(kube), "--state-dir", str(state)])
    assert res.exit_code == 1, res.output
    store = JobStore(state)
    (record,) = store.all()
    name = record.job_id
    assert res.output.splitlines()[-1].startswith(
        f"Error: job {name} not started: creating ConfigMap {name}-files: ")
    assert record.status is JobStatus.FAILED and record.backend == "k8s"
    assert record.message.startswith(f"creating ConfigMap {name}-files: ")
    assert record.scheduler_ref["kubeconfig"] == str(kube.resolve())
    res = runner.invoke(cli, ["status", name, "--json", "--state-dir", str(state)])
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads(res.output)
    assert (doc["backend"], doc["status"], doc["scheduler_job"]) == ("k8s", "FAILED", name)
    assert [n["reachable"] for n in doc["nodes"]] == [False, False]
    assert doc["nodes"][0]["error"].startswith(f"reading AscendJob {name}: ")
    res = runner.invoke(cli, ["logs", name, "--state-dir", str(state)])
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1, res.output
    assert f"logs of AscendJob {name}" in res.output
    res = runner.invoke(cli, ["down", name, "--yes", "--state-dir", str(state)])
    assert res.exit_code == 1
    assert f"[10.0.0.1] not cleaned: deleting AscendJob {name}: " in res.output
    for cmd in (["collect-ckpt", name], ["plot", name, "-o", str(tmp_path / "l.png")]):
        res = runner.invoke(cli, [*cmd, "--state-dir", str(state)])
        assert res.exit_code == 1 and len(res.output.splitlines()) == 1, res.output
        assert f"job {name} ran on k8s; its job folders were in its pods. Checkpoints and " \
               f"strategies are on c under {name}/" in res.output
    res = runner.invoke(cli, ["resume", name, "--exclude-node", "10.0.0.2", "--state-dir",
                              str(state)])
    assert res.exit_code == 1 and res.output.startswith(
        f"Error: leaving a node out: job {name} ran on k8s;"), res.output
    store.save(record.with_status(JobStatus.RUNNING, ""))
    res = runner.invoke(cli, ["down", name, "--save", "--yes", "--state-dir", str(state)])
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1, res.output
    assert "down --save: job" in res.output and "runs on k8s" in res.output


def test_watch_loop_loses_an_unanswering_api_and_does_not_restart_blind(tmp_path: Path) -> None:
    """The one watch loop over the k8s backend: an API server that stops answering makes every
    pod's node unreachable, the attempt fails after --node-lost-timeout, and the restart is
    refused (resume asks the backend first: nothing is created blind)."""
    import io

    from rich.console import Console

    from orchestrator.backends import job_group
    from orchestrator.job.watch import WatchPolicy, watch

    record, store = _job(tmp_path)
    kube = _dead_kubeconfig(tmp_path)
    record = record.replace(status=JobStatus.RUNNING,
                            scheduler_ref={**record.scheduler_ref, "kubeconfig": str(kube)})
    store.save(record)
    inv = parse_inventory(TWO_BY_TWO, str(tmp_path / "inv.yaml"))
    policy = WatchPolicy(max_restarts=1, node_lost_timeout=0, interval=0.05)
    with job_group(record, inv) as group:
        assert group.nodes == ()  # no SSH connection for a k8s job
        out = watch(record, group, store, policy, console=Console(file=io.StringIO()),
                    echo=lambda _: None)
    assert out.status is JobStatus.FAILED
    assert out.message.startswith(f"not restarted: job {record.job_id}: cannot reach "
                                  "10.0.0.1, 10.0.0.2; nothing was restarted; last cause: "
                                  "node 10.0.0.1 ")
    assert [h["status"] for h in out.history] == ["FAILED", "FAILED"]


def test_fetch_is_refused_in_one_line(tmp_path: Path) -> None:
    record, _ = _job(tmp_path)
    with pytest.raises(JobError) as e:
        get_backend("k8s").fetch(record, None, "10.0.0.1", "ranks/0/stdout.log",  # type: ignore[arg-type]
                                 tmp_path / "x")
    assert str(e.value) == (f"job {record.job_id} runs on Kubernetes: ranks/0/stdout.log of "
                            "10.0.0.1 is inside its pod, not reachable from here; checkpoints "
                            f"and strategies are on the claim bloom-ckpt under {record.job_id}/")
