"""A run killed outright (SIGKILL, out of memory) reads `died` with its last step, not `running` forever.

run.json records the writing process (host, pid, start time, boot); heartbeat.json its time and last step. On the
same host the pid decides; on another host a stale heartbeat. `--resume` refuses a live run, and a died run without
a checkpoint offers `--restart`, which trains it again from scratch in the same folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config, write_yaml

import tunesmith
from tunesmith.cli.main import main
from tunesmith.engine.pipeline import resolve_config
from tunesmith.errors import ConfigError, RunError
from tunesmith.runs.record import HEARTBEAT_FILE, RUN_FILE, STALE_AFTER, liveness, process_started, this_process
from tunesmith.runs.run import Run
from tunesmith.utils import atomic_write_json

# The real write side in another process: RunFolder.start records the process and starts the heartbeat thread.
WRITER = textwrap.dedent(
    """
    import json, sys, time, types
    from pathlib import Path
    from tunesmith.config.loader import load_config
    from tunesmith.runs.folder import RunFolder

    path = Path(sys.argv[1])
    folder = RunFolder(path, True, types.SimpleNamespace(run_id=None), resume=False)
    folder.heartbeat.every = 0.02
    folder.start(load_config(json.loads(sys.argv[2])))
    folder.reached(7)  # what the loop reports after optimizer step 7
    while json.loads((path / "heartbeat.json").read_text())["step"] != 7:
        time.sleep(0.01)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def _gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run_folder(path: Path, process: dict, step: int | None = 3, beat: float | None = None, config: dict | None = None):
    """A run folder as RunFolder writes it while running: run.json, heartbeat.json (and config.yaml)."""
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path / RUN_FILE, {"status": "running", "name": path.name, "task": "text-classification", "process": process}
    )
    if beat is not None:
        (path / HEARTBEAT_FILE).write_text(json.dumps({"time": beat, "step": step}))
    if config is not None:
        write_yaml(path / "config.yaml", config)
    return path


@pytest.fixture
def cfg(tmp_path, tiny_model, toy_csv) -> dict:
    return tiny_config(tmp_path, tiny_model, toy_csv, train={"epochs": 1, "eval_every": 1000})


def test_a_run_killed_with_sigkill_reads_died_with_its_last_step(tmp_path, cfg, capsys):
    path = tmp_path / "runs" / "tiny-killed"
    path.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), json.dumps(cfg)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        alive = liveness(path)
        assert (alive.status, alive.step, alive.process["pid"]) == ("running", 7, proc.pid)
        assert Run(path).status == "running"
        with pytest.raises(RunError, match=rf"still running \(pid {proc.pid} on .*a second process would corrupt"):
            resolve_config(None, [], path)
        assert main(["runs", "--output-dir", str(path.parent)]) == 0
        assert "running (step 7)" in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait()

    dead = liveness(path)
    assert (dead.status, dead.step) == ("died", 7)
    assert dead.why == f"process {proc.pid} on {alive.process['host']} is gone"
    assert (
        Run(path).status == "died" and json.loads((path / RUN_FILE).read_text())["status"] == "running"
    )  # not written
    assert main(["runs", "--output-dir", str(path.parent)]) == 0
    assert "died (step 7, " in capsys.readouterr().out

    # --resume without a checkpoint: one line, exit 2, and the command that restarts it in place.
    assert main(["train", "--resume", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: cannot be resumed: it died before its first checkpoint")
    assert "(last seen at step 7, " in err[0] and err[0].endswith(f"tunesmith train --restart {path}")

    # With a checkpoint, a died run resumes as an interrupted one does.
    (path / "checkpoints" / "last").mkdir(parents=True)
    assert resolve_config(None, [], path).name == cfg["name"]


def test_a_reused_pid_reads_died(tmp_path):
    me = this_process()  # this pid is alive: only the start time tells the run's process from another
    assert liveness(_run_folder(tmp_path / "same", me)).status == "running"
    reused = liveness(_run_folder(tmp_path / "reused", {**me, "started": "ticks:1"}))
    assert reused.status == "died" and reused.why == f"pid {me['pid']} on {me['host']} now belongs to another process"
    gone = liveness(_run_folder(tmp_path / "gone", {**me, "pid": _gone_pid()}))
    assert gone.status == "died" and gone.why.endswith("is gone")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="/proc is Linux-only")
def test_the_start_token_is_the_process_start_time():
    import psutil

    ticks = int(process_started(os.getpid()).removeprefix("ticks:"))
    started = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    assert started == pytest.approx(psutil.Process().create_time(), abs=2.0)
    assert process_started(_gone_pid()) is None


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").is_file(), reason="boot id is Linux-only")
def test_a_run_from_before_a_reboot_reads_died(tmp_path):
    rebooted = liveness(_run_folder(tmp_path / "r", {**this_process(), "boot": "another-boot"}))
    assert rebooted.status == "died" and "restarted" in rebooted.why


def test_another_hosts_run_dies_when_its_heartbeat_goes_stale(tmp_path):
    t = 1_700_000_000.0
    path = _run_folder(tmp_path / "r", {"host": "gpu-7.invalid", "pid": 4242, "started": "ticks:9"}, step=3, beat=t)
    assert liveness(path, now=t + 60).status == "running"  # its pid means nothing here: only the heartbeat counts
    assert liveness(path, now=t + STALE_AFTER - 1).status == "running"
    stale = liveness(path, now=t + STALE_AFTER + 1)
    assert stale.status == "died" and stale.why == "no heartbeat from gpu-7.invalid for 10 min"
    assert stale.describe(now=t + 3 * 3600) == "died (step 3, 3 h ago)"
    assert stale.last_seen(now=t + 45) == "last seen at step 3, 45 s ago"


def test_runs_without_a_process_record_keep_their_status(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    atomic_write_json(path / RUN_FILE, {"status": "running"})  # written before processes were recorded
    assert liveness(path).status == "running"
    atomic_write_json(path / RUN_FILE, {"status": "failed", "process": {"host": "x", "pid": _gone_pid()}})
    assert liveness(path).status == "failed"  # only `running` can turn into `died`


def test_restart_trains_a_died_run_again_from_scratch_in_its_folder(tmp_path, cfg):
    path = _run_folder(
        tmp_path / "runs" / "tiny-died", {**this_process(), "pid": _gone_pid()}, beat=time.time(), config=cfg
    )
    (path / "history.jsonl").write_text('{"step": 1, "train_loss": 9.9}\n')  # what the dead attempt left
    (path / "checkpoints" / "best").mkdir(parents=True)
    with pytest.raises(ConfigError, match="--restart .* trains with the run's saved config"):
        resolve_config(str(path / "config.yaml"), [], path, restart=True)
    with pytest.raises(ConfigError, match="not both"):
        tunesmith.finetune(resume=path, restart=path)

    run = tunesmith.finetune(restart=path)
    assert run.path == path and run.status == "complete"
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")] == [path.name]
    assert not (path / "checkpoints").exists()  # the dead attempt's partial state is gone
    assert '"train_loss": 9.9' not in (path / "history.jsonl").read_text()
    assert run.info["process"]["pid"] == os.getpid()
    assert json.loads((path / HEARTBEAT_FILE).read_text())["step"] == run.metrics["steps"]  # the last beat
    assert not [t for t in threading.enumerate() if t.name == "tunesmith-heartbeat"]  # the thread has stopped
    with pytest.raises(RunError, match="already complete; start a new run instead of --restart"):
        resolve_config(None, [], path, restart=True)


def test_restart_ends_the_died_attempts_mlflow_run(tmp_path, cfg):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {**cfg, "tracking": {"backend": "mlflow", "uri": uri, "experiment": "died"}}
    client = MlflowClient(uri)
    stale = client.create_run(client.create_experiment("died")).info.run_id  # what the dead attempt left RUNNING
    path = _run_folder(
        tmp_path / "runs" / "tiny-died", {**this_process(), "pid": _gone_pid()}, beat=time.time(), config=cfg
    )
    info = json.loads((path / RUN_FILE).read_text())
    atomic_write_json(path / RUN_FILE, {**info, "mlflow_run_id": stale})
    run = tunesmith.finetune(restart=path)
    assert client.get_run(stale).info.status == "KILLED"
    fresh = run.info["mlflow_run_id"]
    assert fresh != stale and client.get_run(fresh).info.status == "FINISHED"
