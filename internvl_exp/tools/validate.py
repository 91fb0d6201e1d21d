"""Check a config without running anything: `python -m internvl_exp.tools.validate [OVERRIDES ...]`.

Composes the config exactly as `python launch.py OVERRIDES` would, runs the launch's validation (schema keys,
cross-group rules, no credential in the config) and exits 0 with `config OK` or 1 with the launch's message.
No torch import: it takes about a second. (`python launch.py OVERRIDES --cfg job` does the same check and
prints the config as well.)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    from internvl_exp.config.schema import register_configs
    from internvl_exp.launch.precheck import compose_config, config_error
    from internvl_exp.launch.resolvers import register_resolvers
    from internvl_exp.redact import scrub

    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__.strip())
        return 0
    register_configs(project_root=str(ROOT))
    register_resolvers()
    try:
        cfg = compose_config(ROOT / "conf", "config", overrides)
    except HydraException as e:
        cause = f"\n{e.__cause__}" if e.__cause__ is not None else ""
        print(scrub(f"{e}{cause}"), file=sys.stderr)
        return 1
    message = config_error(cfg)
    if message is not None:
        print(message, file=sys.stderr)
        return 1
    print(f"config OK: model={cfg.model.name} data={cfg.data.name} freeze={cfg.freeze.name} "
          f"deepspeed={cfg.deepspeed.name} optimizer={cfg.optimizer.name} logger={cfg.logger.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
