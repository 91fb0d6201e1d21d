"""The rules of `distributed=slurm` (launch/slurm.py runs it): checked with the rest of the config.

Light: no import of the package.
"""

from __future__ import annotations

from typing import Any

EXECUTORS = ("slurm", "local")
# Keys that come from SLURM under distributed=slurm (setting them would be silently overridden).
FROM_SLURM = {"node_rank": 0, "rdzv_endpoint": None, "rdzv_id": None}


def slurm_problems(d: Any) -> list[str]:
    """Config validation for distributed=slurm (one line each, naming the key)."""
    problems = []
    nodes, gpus = d.get("nodes"), d.get("gpus_per_node")
    if not isinstance(nodes, int) or nodes < 1:
        problems.append(f"distributed.nodes={nodes}: distributed=slurm needs >= 1 node")
    if not isinstance(gpus, int) or gpus < 0:
        problems.append(f"distributed.gpus_per_node={gpus}: give the GPUs per node (>= 1; 0 on a CPU cluster, "
                        "with distributed.nproc_per_node=N processes per node)")
    elif gpus == 0:  # a CPU cluster: the processes per node are set apart, and no GPU is asked for
        if not isinstance(d.nproc_per_node, int) or d.nproc_per_node < 1:
            problems.append(f"distributed.nproc_per_node={d.nproc_per_node}: with distributed.gpus_per_node=0 (a "
                            "CPU cluster) set the processes per node, e.g. distributed.nproc_per_node=4")
    elif d.nproc_per_node != gpus:
        problems.append(f"distributed.nproc_per_node={d.nproc_per_node} but gpus_per_node={gpus}: under "
                        "distributed=slurm every node runs one worker per GPU; set distributed.gpus_per_node only "
                        "(distributed.nproc_per_node is for CPU clusters, with gpus_per_node=0)")
    if isinstance(nodes, int) and d.get("nnodes") != nodes:
        problems.append(f"distributed.nnodes={d.get('nnodes')} but nodes={nodes}: set distributed.nodes only")
    for key, default in FROM_SLURM.items():
        if d.get(key) != default:
            problems.append(f"distributed.{key}={d.get(key)}: under distributed=slurm it comes from SLURM's "
                            "environment (SLURM_NODEID, SLURM_JOB_NODELIST, SLURM_JOB_ID); remove it")
    if not isinstance(d.get("time"), int) or d.time < 1:  # null would get submitit's default of 5 minutes
        problems.append(f"distributed.time={d.get('time')}: give the job's time limit in minutes (>= 1)")
    if d.get("signal_delay_s", 0) < 0 or (d.get("time") and d.signal_delay_s >= d.time * 60):
        problems.append(f"distributed.signal_delay_s={d.signal_delay_s}: must be >= 0 and shorter than the time "
                        f"limit ({d.get('time')} min)")
    if d.get("executor") not in EXECUTORS:
        problems.append(f"distributed.executor={d.get('executor')!r} is not one of {list(EXECUTORS)}")
    elif d.executor == "local" and nodes != 1:
        problems.append(f"distributed.executor=local runs on this machine: distributed.nodes={nodes} must be 1")
    if d.get("master_port") is not None and not 1 <= d.master_port <= 65535:
        problems.append(f"distributed.master_port={d.master_port} is not a port (1-65535)")
    return problems
