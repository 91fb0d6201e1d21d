"""distributed=slurm: the host list, each node's torchrun command from SLURM's environment, the sbatch script
submitit writes (a recording `sbatch` on PATH), signals chained with a handler installed before ours, and
submitit's local executor running the same per-node function end to end on the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import compose, run_launch
from internvl_exp.errors import ConfigError, UserError
from internvl_exp.launch.slurm import NodeLauncher, SlurmNode, expand_nodelist, hostnames, node_torchrun_argv

# Real SLURM nodelist forms and what SLURM's `scontrol show hostnames` prints for them.
NODELISTS = {
    "gpu[001-003,007],cpu5": ["gpu001", "gpu002", "gpu003", "gpu007", "cpu5"],
    "node1": ["node1"],
    "gpu-a100-[08-10]": ["gpu-a100-08", "gpu-a100-09", "gpu-a100-10"],
    "a[1-2]-ib,c[9-11]": ["a1-ib", "a2-ib", "c9", "c10", "c11"],
    "rack[1-2]-n[01-02]": ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],
}


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("nodelist", list(NODELISTS))
def test_expand_nodelist(nodelist):
    from submitit.slurm.slurm import _parse_node_list  # a second, independent parser

    assert expand_nodelist(nodelist) == NODELISTS[nodelist] == _parse_node_list(nodelist)


def test_nodelist_errors_and_scontrol_first(tmp_path, monkeypatch):
    for bad in ("gpu[1-2", "gpu[a-b]", "gpu]1["):
        with pytest.raises(UserError, match="SLURM_JOB_NODELIST"):
            expand_nodelist(bad)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert hostnames("gpu[001-002]") == ["gpu001", "gpu002"]  # no scontrol: our parser
    _tool(tmp_path, "scontrol", 'echo "from-scontrol-$3"\n')
    assert hostnames("gpu[001-002]") == ["from-scontrol-gpu[001-002]"]  # SLURM's own answer wins


def _torchrun_args(argv: list[str]):
    from torch.distributed.run import get_args_parser  # torchrun's own parser reads our command line

    assert argv[:3] == [sys.executable, "-m", "internvl_exp.launch.agent"]  # torchrun in-process (launch/agent.py)
    return get_args_parser().parse_args(argv[3:])


def test_node_command_from_slurm_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol here
    cfg = compose(["distributed=slurm", "distributed.nodes=2", "distributed.gpus_per_node=4"])
    env = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
           "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_STEP_ID": "0"}
    node = SlurmNode.from_env(env)
    args = _torchrun_args(node_torchrun_argv(cfg.distributed, tmp_path / "run", node))
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("4", "2", 1)
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "gpu007:24242"  # 20000 + 4242 % 20000
    assert args.rdzv_id == "slurm-4242"
    assert args.module and args.training_script == "internvl_exp.launch.worker"
    assert args.training_script_args == [str(tmp_path / "run")]
    assert "SIGTERM" not in args.signals_to_handle  # the workers save on SIGTERM; torchrun must not kill them
    fixed = compose(["distributed=slurm", "distributed.nodes=2", "distributed.gpus_per_node=4",
                     "distributed.master_port=29400"])
    assert _torchrun_args(node_torchrun_argv(fixed.distributed, tmp_path, node)).rdzv_endpoint == "gpu007:29400"
    with pytest.raises(ConfigError, match="distributed.nodes=2 but this SLURM job has 3 node"):
        node_torchrun_argv(cfg.distributed, tmp_path, SlurmNode.from_env({**env, "SLURM_NNODES": "3"}))


def test_validation_errors():
    from internvl_exp.config.validate import config_problems

    problems = "\n".join(config_problems(compose([
        "distributed=slurm", "distributed.nodes=0", "distributed.nproc_per_node=3", "distributed.node_rank=1",
        "distributed.executor=cloud", "distributed.time=1", "distributed.signal_delay_s=60"])))
    assert any("distributed.time=None: give the job's time limit" in p
               for p in config_problems(compose(["distributed=slurm", "distributed.time=null"])))
    assert "distributed.nodes=0" in problems
    assert "distributed.nproc_per_node=3 but gpus_per_node=8" in problems
    assert "distributed.node_rank=1: under distributed=slurm it comes from SLURM" in problems
    assert "distributed.executor='cloud'" in problems
    assert "distributed.signal_delay_s=60" in problems
    assert not [p for p in config_problems(compose(["distributed=slurm", "distributed.gpus_per_node=1"]))
                if p.startswith("distributed")]
    # A CPU cluster: no GPUs, the processes per node set apart (and needed).
    cpu = "\n".join(config_problems(compose(["distributed=slurm", "distributed.gpus_per_node=0"])))
    assert "distributed.nproc_per_node=0: with distributed.gpus_per_node=0 (a CPU cluster)" in cpu
    assert not [p for p in config_problems(compose(["distributed=slurm", "distributed.gpus_per_node=0",
                                                    "distributed.nproc_per_node=2"])) if p.startswith("distributed")]
    assert any(p.startswith("distributed.gpus_per_node=-1: give the GPUs per node")
               for p in config_problems(compose(["distributed=slurm", "distributed.gpus_per_node=-1"])))
    local = config_problems(compose(["distributed=slurm", "distributed.executor=local", "distributed.nodes=2"]))
    assert any("executor=local runs on this machine" in p for p in local)


def test_login_node_submits_one_job_with_the_sbatch_parameters(tmp_path, monkeypatch, demo_dir):
    """The real job on a 'login node' whose sbatch records what it is given: one submission of our per-node
    function on the run directory, and the sbatch script carries every setting."""
    from submitit.core.utils import DelayedSubmission

    from internvl_exp.launch.job import run_job

    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir(), record.mkdir()
    _tool(bin_dir, "sbatch", f'cp "$1" {record}/script.sh\necho "$@" >> {record}/calls\n'
                             'echo "Submitted batch job 4242"\n')
    _tool(bin_dir, "srun", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    overrides = [f"paths.output_dir={tmp_path / 'out'}", f"paths.demo_data_dir={demo_dir}", "run_name=big",
                 "distributed=slurm", "distributed.nodes=2", "distributed.gpus_per_node=8",
                 "distributed.partition=gpu", "distributed.time=90", "distributed.account=proj",
                 "distributed.qos=high", "distributed.constraint=a100", "distributed.cpus_per_task=32",
                 "distributed.wait=false", "+distributed.sbatch.mail-type=END"]
    run_dir = tmp_path / "out" / "default" / "big"
    assert run_job(compose(overrides), run_dir, overrides) is None  # submitted, not waited for
    assert len((record / "calls").read_text().splitlines()) == 1
    lines = set((record / "script.sh").read_text().splitlines())
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--time=90",
                 "--account=proj", "--qos=high", "--constraint=a100", "--cpus-per-task=32", "--signal=USR1@300",
                 "--requeue", "--mail-type=END", "--job-name=default/big"):
        assert f"#SBATCH {flag}" in lines, (flag, sorted(lines))
    assert not any(line.startswith("#SBATCH --signal=USR2") for line in lines)  # ours replaced submitit's
    # The task's first instruction catches the preemption signals (launch/node_task.py), then runs submitit's.
    assert any(line.startswith("srun ") and "-m internvl_exp.launch.node_task -u -m submitit.core._submit" in line
               for line in lines)
    saved = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    assert saved["distributed"]["nproc_per_node"] == 8 and saved["distributed"]["nnodes"] == 2  # resolved
    pickles = list((run_dir / "submitit").rglob("*_submitted.pkl"))
    assert len(pickles) == 1
    job = DelayedSubmission.load(pickles[0])
    assert isinstance(job.function, NodeLauncher) and job.function.run_dir == str(run_dir)
    assert not (run_dir / "metrics.json").exists()


# -- signals ---------------------------------------------------------------------------------------------------------


def test_preemption_chains_a_previous_handler_after_the_save():
    """A plain Python handler installed before ours is not called when the signal arrives (it could requeue and
    exit mid-step, as submitit's does), is back after the run, and pass_on calls it once, returning its exit
    status."""
    from transformers import TrainerControl, TrainerState

    from internvl_exp.launch.signals import pass_on
    from internvl_exp.train.checkpointing.preemption import PreemptionCallback

    calls = []

    def previous(signum, frame):
        calls.append(signal.Signals(signum).name)
        raise SystemExit(-1)  # what submitit's handler does after `scontrol requeue`

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        cb = PreemptionCallback()
        assert cb.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert cb.received == "SIGUSR1" and calls == []
        control = cb.on_step_end(None, TrainerState(global_step=3), TrainerControl())
        assert control.should_save and control.should_training_stop and cb.stopped_by == "SIGUSR1"
        cb.restore()
        assert signal.getsignal(signal.SIGUSR1) is previous
        # The checkpoint is saved: now the previous handler runs; the status it exits with is the caller's to use.
        assert pass_on("SIGUSR1") == -1
        assert calls == ["SIGUSR1"]
        assert pass_on("a signal on another rank") is None
    finally:
        signal.signal(signal.SIGUSR1, old)


STOPPED_THEN_CTRL_C = """
import os, signal, sys
from internvl_exp.train.checkpointing.preemption import PreemptionCallback
cb = PreemptionCallback()
assert cb.install()
if sys.argv[1] == "stopping":
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: caught, the run saves and stops
    assert cb.received == "SIGINT"
cb.restore()  # the run is over; metrics.json is written next
print("restored", flush=True)
os.kill(os.getpid(), signal.SIGINT)
print("still here", flush=True)
"""


@pytest.mark.parametrize("case", ["stopping", "finished"])
def test_ctrl_c_after_the_run_stopped_still_stops_at_once(case):
    """After a caught signal the run's handlers are restored while the process still has work to do (the
    checkpoint is saved; metrics.json is not yet written): a Ctrl-C then ends it at once with one line, not
    KeyboardInterrupt's traceback (CI saw one when the second Ctrl-C came right after the save). A run that ended
    on its own gives Python's KeyboardInterrupt back."""
    proc = subprocess.run([sys.executable, "-c", STOPPED_THEN_CTRL_C, case], capture_output=True, text=True,
                          timeout=120)
    assert "restored" in proc.stdout and "still here" not in proc.stdout
    if case == "stopping":
        assert proc.returncode == -signal.SIGINT, proc.stderr
        assert "SIGINT again: stopping now, without a checkpoint" in proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        assert "KeyboardInterrupt" in proc.stderr


CHILD = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda s, f: out.write_text(out.read_text() + "USR1\\n" if out.exists() else "USR1\\n"))
print("ready", flush=True)
time.sleep(30)
"""


def test_launcher_outlives_the_signal_and_forwards_it_once(tmp_path, monkeypatch):
    """The launching process (Hydra job / node task) catches SIGTERM while its workers run and forwards one
    SIGUSR1 to them; inside a SLURM step it forwards nothing (SLURM signalled every process itself)."""
    import psutil

    from internvl_exp.launch.signals import hold_signals

    for in_step, expected in ((False, "USR1\n"), (True, None)):
        if in_step:
            monkeypatch.setenv("SLURM_JOB_ID", "7"), monkeypatch.setenv("SLURM_STEP_ID", "0")
        out = tmp_path / f"got-{in_step}"
        # A stand-in for torchrun (a shell) whose child stands in for a worker.
        parent = subprocess.Popen(["sh", "-c", '"$0" -c "$1" "$2" & wait', sys.executable, CHILD, str(out)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert parent.stdout.readline().strip() == "ready"
            with hold_signals() as held:
                held.workers_of = parent.pid
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGUSR1)  # another signal is not forwarded again (the same one twice
                # stops at once: tests/test_worker_failures.py)
                time.sleep(0.5)
            assert held.received == "SIGTERM"
            assert (out.read_text() if out.exists() else None) == expected
        finally:
            for proc in psutil.Process(parent.pid).children(recursive=True):
                proc.kill()
            parent.kill()
            parent.wait()


CAUGHT_BEFORE_HOLD = """
import os, signal, sys
from internvl_exp.launch import signals
os.environ.update(SLURM_JOB_ID="7", SLURM_STEP_ID="0")
signals.catch_early((signal.SIGTERM,))  # the node task's start-up catcher
signals.mark_for_workers(sys.argv[1], "7.0")
assert signals.early_signal() is None  # the node task's check: nothing yet, so it starts the workers
os.kill(os.getpid(), signal.SIGTERM)  # scancel, before hold_signals replaces the catcher
with signals.hold_signals() as held:
    print(held.received, flush=True)
"""


def test_a_signal_between_the_start_up_check_and_hold_signals_reaches_the_workers(tmp_path):
    """SLURM signals the step's processes once: a SIGTERM the node task catches after its own 'anything during
    start-up?' check but before hold_signals counts as caught, and the note tells the workers about to start (CI
    saw such a scancel go unseen: the run trained on until SLURM killed it)."""
    note = tmp_path / ".preempt-node0"
    proc = subprocess.run([sys.executable, "-c", CAUGHT_BEFORE_HOLD, str(note)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "SIGTERM"
    assert note.read_text().split() == ["7.0", "SIGTERM"]


# -- end to end: submitit's local executor runs the per-node function ----------------------------------------------


@pytest.mark.slow
def test_local_executor_runs_the_node_function_end_to_end(tmp_path, demo_dir):
    res = run_launch([f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}", "run_name=viaslurm",
                      "distributed=slurm", "distributed.executor=local", "distributed.gpus_per_node=1",
                      "distributed.time=10", "trainer.max_steps=2", "trainer.per_device_train_batch_size=2",
                      "trainer.save_strategy=no"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [p.name for p in (tmp_path / "default").iterdir()] == ["viaslurm"]  # one run directory
    run_dir = tmp_path / "default" / "viaslurm"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2, metrics
    assert metrics["throughput"]["world_size"] == 1 and metrics["objective"] is not None
    assert (run_dir / "final" / "model.safetensors").is_file()
    logs = list((run_dir / "submitit").rglob("*_log.out"))
    assert logs and "internvl_exp.launch.agent" in "".join(p.read_text() for p in logs)  # the node task ran torchrun


@pytest.mark.slow
def test_hydra_submitit_launcher_job_preempted_saves_then_submitit_requeues(tmp_path, demo_dir):
    """`-m hydra/launcher=submitit_local`: submitit runs the sweep job and has installed its handlers. Its
    preemption signal (SIGUSR2) makes our run save a complete checkpoint first; then submitit's own handler runs
    (checkpoint + requeue: locally, exit status 144), submitit starts the job again, and the job resumes from
    that checkpoint to the end, in the same job directory, within the one command."""
    import psutil

    from conftest import ROOT

    args = ["-m", "hydra/launcher=submitit_local", f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}",
            "trainer.max_steps=40", "trainer.save_steps=100", "trainer.logging_steps=1",
            "trainer.per_device_train_batch_size=2"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            logs = list(tmp_path.glob("default/multirun/*/0_*/train.log"))
            if logs and "SIGUSR2 too (submitit's" in logs[0].read_text():
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        jobs = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "submitit.core._submit" in " ".join(p.cmdline())]
        assert len(jobs) == 1
        jobs[0].send_signal(signal.SIGUSR2)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    (job_dir,) = [p.parent for p in tmp_path.glob("default/multirun/*/0_*/train.log")]  # one job directory
    log = job_dir.joinpath("train.log").read_text()
    # The step it saves at depends on when the signal lands (enough steps that it lands before the end).
    saved = re.search(r"preemption: SIGUSR2 received; saving a checkpoint at step (\d+)", log)
    assert saved, log[-3000:]
    assert "passing SIGUSR2 on to the handler installed before ours" in log
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 40
    assert metrics["resumed_from"] == str(job_dir / "checkpoints" / f"checkpoint-{saved[1]}")  # saved before the requeue
    submitit_logs = "".join(p.read_text() for p in tmp_path.glob("default/multirun/*/.submitit/*/*_log.*"))
    assert "Requeued job" in submitit_logs


# -- what squeue says (a recording squeue on PATH; the real one: tests/test_slurm_real.py) --------------------------


def test_run_lock_follows_the_slurm_job_while_squeue_shows_it(tmp_path, monkeypatch):
    """A run directory whose recorded SLURM job is still queued or running is refused (the submitting process
    may be gone); once squeue shows it ended, or no longer knows it, the launch goes ahead."""
    from internvl_exp.launch.run_lock import RunLocked, acquire, release
    from internvl_exp.launch.slurm_queue import record_job

    bin_dir, run_dir = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir(), run_dir.mkdir()
    state = tmp_path / "state"
    _tool(bin_dir, "squeue", f'echo "$@" >> {tmp_path}/calls\ncat {state}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    record_job(run_dir, "77")
    for shown, refused in (("RUNNING|None|vm", True), ("PENDING|BeginTime|", True), ("COMPLETED|None|vm", False),
                           ("CANCELLED|None|vm", False), ("", False)):
        state.write_text(shown + "\n")
        if refused:
            with pytest.raises(RunLocked, match=rf"in use by SLURM job 77 \({shown.split('|')[0]}\); .*scancel 77"):
                acquire(run_dir)
        else:
            assert acquire(run_dir)
            release(run_dir)
    assert "--jobs 77" in (tmp_path / "calls").read_text()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the job itself (a requeued attempt's own launch) is not refused
    state.write_text("RUNNING|None|vm\n")
    assert acquire(run_dir)
    release(run_dir)


def test_pending_reasons_and_sbatch_refusals():
    from internvl_exp.launch.slurm_queue import never_starts, sbatch_refusal

    for reason in ("PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig", "BadConstraints",
                   "InvalidAccount", "InvalidQOS", "QOSMaxNodePerJobLimit", "AssocMaxCpuPerJobLimit"):
        assert never_starts(reason), reason
    for reason in ("Priority", "Resources", "BeginTime", "Dependency", "QOSMaxJobsPerUserLimit", "None", ""):
        assert never_starts(reason) is None, reason
    # What submitit's FailedJobError carries from sbatch 22.05 (its stderr, verbatim).
    error = RuntimeError("sbatch: error: invalid partition specified: nope\n"
                         "sbatch: error: Batch job submission failed: Invalid partition name specified")
    assert sbatch_refusal(error) == "invalid partition specified: nope"
    assert sbatch_refusal(RuntimeError("sbatch: error: Batch job submission failed: Invalid account")) == \
        "Batch job submission failed: Invalid account"
