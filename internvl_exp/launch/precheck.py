"""Validate a composed config before Hydra makes a run directory: the one check (and the one message) behind
a launch, `launch.py --cfg job` and `python -m internvl_exp.tools.validate`.

    single run      the RunGuard callback (hydra_callbacks.py) checks in `on_run_start`, before Hydra creates
                    the run directory: a rejected config leaves nothing behind
    --cfg job|all   Hydra runs no callback there, so launch.py composes the same config first and checks it
    sweep job       validated inside the job (launch/job.py), which records the failure in its directory

Light: hydra, omegaconf and our config modules only (no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from internvl_exp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]  # the folder of launch.py and conf/


def resolved_or_exit(cfg: Any, overrides: list[str] = ()) -> Any:
    """The resolved spec of a composed config (config/resolve.py), or exit 1 with the validation message."""
    from internvl_exp.config.resolve import resolve

    try:
        return resolve(cfg, overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def compose_config(overrides: list[str], config_dir: Path = ROOT / "conf", config_name: str = "config",
                   check: bool = False) -> Any:
    """The resolved run spec Hydra's job would get for `launch.py OVERRIDES` (run mode; same schema registration
    and resolvers). The one composer of the tools (validate, data_check, plan, predict, chat) and of `--cfg`.
    check=True validates (ConfigError); otherwise the caller validates the result once."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from internvl_exp.config.resolve import resolve
    from internvl_exp.config.schema import register_configs
    from internvl_exp.launch.resolvers import register_resolvers

    register_configs(project_root=str(ROOT))
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        composed = compose(config_name=config_name, overrides=list(overrides))
    return resolve(composed, overrides, check=check)


def check_cfg_request(argv: list[str], config_dir: Path) -> None:
    """For `launch.py ... --cfg job|all`: exit non-zero with the launch's message when the config is invalid.
    `--cfg job` (without --package) prints the resolved run spec itself, each value that a recipe or an override
    decided marked with its origin, and exits: what the run would write as its config.yaml.

    A config that does not even compose is left to Hydra, which then reports it in its own words."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.cfg not in ("job", "all") or args.multirun:
        return
    if args.config_path:
        config_dir = (config_dir.parent / args.config_path).resolve()
    overrides = list(args.overrides)
    if args.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]")
    try:
        spec = compose_config(overrides, config_dir, args.config_name or "config", check=True)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    except Exception:  # Hydra's own --cfg path reports composition errors
        return
    if args.cfg == "job" and not args.package:
        from internvl_exp.config.show import annotated_yaml

        print(annotated_yaml(spec), end="")
        raise SystemExit(0)
