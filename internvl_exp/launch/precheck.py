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

from internvl_exp.config.resolve import resolve
from internvl_exp.config.schema import Config, register_configs
from internvl_exp.config.show import annotated_yaml
from internvl_exp.data.sources import load_entries
from internvl_exp.errors import ConfigError, UserError
from internvl_exp.launch.overrides import override_problems
from internvl_exp.launch.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[2]  # the folder of launch.py and conf/


def resolved_or_exit(cfg: Config, overrides: list[str] = ()) -> Any:
    """The resolved spec of a composed config (config/resolve.py), or exit 1 with the validation message."""
    try:
        return resolve(cfg, overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def data_file_error(cfg: Config) -> str | None:
    """The first missing or unreadable data file the config names (meta JSON, annotation files, for training
    and data.eval), found in a fraction of a second before torch is imported; None when they are there or the
    run generates them (data.generate_demo). The lines themselves are scanned later (data/prescan.py)."""
    from omegaconf import OmegaConf

    data = cfg.data
    if data.generate_demo:
        return None

    def inline(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if node else None

    try:
        if data.meta_path or data.datasets:
            load_entries(data.meta_path, inline(data.datasets))
        if data.eval.meta_path or data.eval.datasets:
            load_entries(data.eval.meta_path, inline(data.eval.datasets), key="data.eval")
    except UserError as e:
        return str(e)
    return None


def check_override_keys(argv: list[str], config_dir: Path) -> None:
    """launch.py: exit with one line per mistyped override key ("did you mean ...", launch/overrides.py) before
    Hydra composes and prints its own advice. Left to Hydra with another config (--config-dir/-path/-name)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.config_dir or args.config_path or (args.config_name or "config") != "config" or args.shell_completion:
        return
    problems = override_problems(list(args.overrides), config_dir)
    if problems:
        raise SystemExit("\n".join(problems))


def compose_config(overrides: list[str], config_dir: Path = ROOT / "conf", config_name: str = "config",
                   check: bool = False) -> Any:
    """The resolved run spec Hydra's job would get for `launch.py OVERRIDES` (run mode; same schema registration
    and resolvers). The one composer of the tools (validate, data_check, plan, predict, chat) and of `--cfg`.
    check=True validates (ConfigError); otherwise the caller validates the result once.
    A mistyped key raises Hydra's ConfigCompositionException with the one-line suggestion (launch/overrides.py)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    if config_name == "config" and Path(config_dir).resolve() == (ROOT / "conf").resolve():
        problems = override_problems(list(overrides), config_dir)
        if problems:
            raise ConfigCompositionException("\n".join(problems))

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
        print(annotated_yaml(spec), end="")
        raise SystemExit(0)
