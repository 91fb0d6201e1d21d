"""The SLURM task's Python entry under distributed=slurm (submitit's `python` command: `python -u -m
internvl_exp.launch.node_task -u -m submitit.core._submit <folder>`).

Its first instruction catches the preemption signals (launch/signals.py `catch_early`): SLURM signals every
process of the job step, and SIGUSR1 at its default action would end the task while Python and submitit are
still starting, failing the job instead of requeueing it. Then it runs submitit's job runner exactly as
`python -m submitit.core._submit <folder>` does; the node task (launch/slurm.py NodeLauncher) finds any signal
caught meanwhile.

Standard library only until submitit is imported.
"""

from internvl_exp.launch.signals import PREEMPTION_SIGNALS, catch_early

if __name__ == "__main__":
    catch_early(PREEMPTION_SIGNALS)

    import sys

    args = sys.argv[1:]
    while args and args[0] == "-u":  # the interpreter flag submitit writes after its python command
        args = args[1:]
    if args[:2] != ["-m", "submitit.core._submit"]:
        sys.exit(f"usage: python -m internvl_exp.launch.node_task -m submitit.core._submit FOLDER (got {args})")
    from submitit.core.submission import submitit_main

    sys.argv = ["submitit.core._submit", *args[2:]]
    submitit_main()
