"""Check a config without running anything: `python -m internvl_exp.tools.validate [OVERRIDES ...]`.

Composes the config exactly as `python launch.py OVERRIDES` would, runs the launch's validation (schema keys,
cross-group rules, no credential in the config) and exits 0 with `config OK` or 1 with the launch's message.
Grid-sweep overrides (`optimizer.lr=1e-4,3e-4`) are expanded as the basic sweeper would, and every job is
checked (`job N (overrides): ...`). No torch import: it takes about a second per config.
(`python launch.py OVERRIDES --cfg job` does the same check for a single run and prints the config as well.)
"""

from __future__ import annotations

import sys

from internvl_exp.errors import ConfigError
from internvl_exp.launch.precheck import compose_config
from internvl_exp.redact import scrub


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__.strip())
        return 0
    failed, configs = 0, []
    try:
        jobs = _jobs(overrides)
        for num, job in enumerate(jobs):
            message = None
            try:
                configs.append(compose_config(job, check=True))  # resolved and validated, as the launch does
            except ConfigError as e:
                message = str(e)
            if message is not None:
                print(scrub(f"job {num} ({' '.join(job)}): {message}") if len(jobs) > 1 else message,
                      file=sys.stderr)
                failed += 1
    except HydraException as e:
        cause = f"\n{e.__cause__}" if e.__cause__ is not None else ""
        print(scrub(f"{e}{cause}"), file=sys.stderr)
        return 1
    if failed:
        return 1
    cfg = configs[0]
    many = f" ({len(jobs)} jobs)" if len(jobs) > 1 else ""
    print(f"config OK{many}: model={cfg.model.name} data={cfg.data.name} freeze={cfg.freeze.name} "
          f"deepspeed={cfg.deepspeed.name} optimizer={cfg.optimizer.name} logger={cfg.logger.name}")
    return 0


def _jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of a grid sweep (one list when nothing sweeps), in the sweeper's order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if o not in ("-m", "--multirun")])
    if not any(o.is_sweep_override() for o in parsed):
        return [[o for o in overrides if o not in ("-m", "--multirun")]]
    return BasicSweeper.split_arguments(parsed, None)[0]


if __name__ == "__main__":
    raise SystemExit(main())
