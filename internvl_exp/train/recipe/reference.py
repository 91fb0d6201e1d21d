"""The reference model of a preference run (`objective.reference`), built once, frozen, never optimised.

- null (the default) means the starting weights:
  - with LoRA (freeze=lora_*): no second copy; the policy itself with its adapters disabled (PEFT's
    `disable_adapter`, modules_to_save included) and in eval mode for the reference's forward;
  - otherwise a second copy of the starting checkpoint (or, for a random init, of the freshly built model before
    anything changes it).
- a path: another checkpoint (either layout; an original one is converted once) or a run directory (its final/).

A copy is put in eval mode with requires_grad False and gets no optimizer state. Under DDP and ZeRO-1/2 it is a
whole replica on each device, in the dtype the policy trains in (DeepSpeed's bf16/fp16 weights, else the loaded
dtype under autocast). Under ZeRO-3 it is sharded like the policy: loaded partitioned (zero.Init is active) and
wrapped by `deepspeed.initialize` with a ZeRO-3 config that has no optimizer.

- precomputed: the starting weights as for null, but used once, before training: every rank scores its share of
  the train pairs (and of the eval pairs, a second store) with the reference built as above and the forward the
  live reference uses, through objectives/reference_logps.py precompute (stored under
  `<paths.cache_dir>/reference_logps/`); then the reference module is released and training looks each batch's
  `pair_ids` up (`PrecomputedReference`). A re-run with the same weights, data and settings finds the stores
  before loading anything (`stored_reference`) and never loads the reference.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from internvl_exp.config.objective_rules import PRECOMPUTED
from internvl_exp.config.schema import Config
from internvl_exp.errors import ConfigError
from internvl_exp.models.loading import load_model, native_checkpoint
from internvl_exp.models.resolve import read_checkpoint
from internvl_exp.objectives import reference_logps as rl
from internvl_exp.train.recipe.pair_forward import batch_logps
from internvl_exp.train.recipe.same_graph import keep_vision_in_graph

log = logging.getLogger(__name__)


def uses_lora(cfg: Config) -> bool:
    return "lora" in dict(cfg.freeze.parts).values()


def is_precomputed(cfg: Config) -> bool:
    return cfg.objective.reference == PRECOMPUTED


def starts_from_weights(cfg: Config) -> bool:
    """True when the reference is the starting weights (null, or precomputed from them)."""
    return cfg.objective.reference is None or is_precomputed(cfg)


def adapters_are_reference(cfg: Config) -> bool:
    """True when the reference is the LoRA policy with its adapters disabled (no copy is loaded)."""
    return starts_from_weights(cfg) and uses_lora(cfg)


def reference_checkpoint(cfg: Config) -> Path:
    """The native-layout directory of `objective.reference` (a run directory's final/, a checkpoint)."""
    path = Path(str(cfg.objective.reference)).expanduser()
    if (path / "final").is_dir() and not (path / "config.json").is_file():
        path = path / "final"
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"objective.reference: {path} is a LoRA adapter, not a whole model; merge it first "
                          "(python -m internvl_exp.tools.merge_lora) and point objective.reference at the merged model")
    weights = read_checkpoint(path, "objective.reference")
    return native_checkpoint(weights, Path(cfg.paths.cache_dir))


def load_reference(cfg: Config, tokenizer: Any, start_checkpoint: Path | None, fresh_policy: torch.nn.Module):
    """The reference module (not yet frozen or placed), or None when the LoRA adapters serve as the reference.
    Called right after the policy is loaded and before anything changes it (`fresh_policy`)."""
    if adapters_are_reference(cfg):
        return None
    if is_precomputed(cfg) and (start_checkpoint is None or cfg.model.random_init):
        raise ConfigError("objective.reference=precomputed with model.random_init=true: the stored log-probs are keyed "
                          "by the reference's checkpoint files, and a random start has none; start from a checkpoint "
                          "(model.path=DIR) or use objective.reference=null")
    if not starts_from_weights(cfg):
        where = reference_checkpoint(cfg)
        log.info("preference: reference model from %s (objective.reference)", where)
        return load_model(cfg.model, tokenizer, where)
    if start_checkpoint is not None and not cfg.model.random_init:
        log.info("preference: reference model = the starting weights, a second copy from %s", start_checkpoint)
        return load_model(cfg.model, tokenizer, start_checkpoint)
    if cfg.deepspeed.stage == 3:
        raise ConfigError("objective.reference=null with model.random_init=true under ZeRO-3: the random start "
                          "cannot be copied once partitioned; save it first (or use a checkpoint: model.path=DIR) "
                          "or set objective.reference=DIR")
    log.info("preference: reference model = a copy of the random initial weights")
    return copy.deepcopy(fresh_policy)


class Reference:
    """Log-probs of the reference model for a pair batch, without gradient."""

    def __init__(self, call: Any, module: torch.nn.Module, kind: str):
        self.call, self.module, self.kind = call, module, kind  # call: what is called (a DS engine or the module)

    @contextlib.contextmanager
    def _as_reference(self) -> Iterator[None]:
        if self.kind != "adapters_disabled":
            yield
            return
        was = self.module.training
        self.module.eval()  # no dropout, no drop-path: the reference is deterministic
        try:
            with self.module.disable_adapter():
                yield
        finally:
            self.module.train(was)

    def logps(self, batch: dict[str, Any], chunked: bool, split: str = "train") -> dict[str, torch.Tensor]:
        with torch.no_grad(), self._as_reference():
            return batch_logps(self.call, self.module, batch, chunked)


class PrecomputedReference:
    """The reference's log-probs looked up by the batch's `pair_ids` in stores computed before training (one for
    the train pairs, one for the eval pairs: their pair ids may coincide). Holds no module."""

    kind = "precomputed"
    module = None

    def __init__(self, stores: dict[str, Any]):
        self.stores = stores  # split ("train" | "eval") -> objectives/reference_logps.py ReferenceLogps

    def logps(self, batch: dict[str, Any], chunked: bool, split: str = "train") -> dict[str, torch.Tensor]:
        if "pair_ids" not in batch:
            raise ValueError("a precomputed reference needs the batch's pair_ids (collate_pairs adds them)")
        ids = batch["pair_ids"]
        chosen, rejected = self.stores[split].lookup(ids, device=batch["input_ids"].device)
        return {"chosen_logps": chosen, "rejected_logps": rejected}


def _store_settings(cfg: Config, args: Any, chunked: bool) -> dict[str, Any]:
    """What, besides the weights and the data, decides the stored log-probs: how the reference would be built and
    run (from the config, so a re-run can find its stores without loading the reference first)."""
    kind = "adapters_disabled" if adapters_are_reference(cfg) else ("zero3" if cfg.deepspeed.stage == 3 else "copy")
    return {"dtype": str(cfg.model.dtype), "deepspeed_stage": cfg.deepspeed.stage, "bf16": bool(args.bf16),
            "fp16": bool(args.fp16), "reference_kind": kind, "chunked": bool(chunked)}


def stored_reference(cfg: Config, args: Any, datasets: dict[str, Any], weights_dir: Path,
                     chunked: bool) -> PrecomputedReference | None:
    """The lookup when every split's store exists on every rank (a re-run with the same weights, data and
    settings): then the reference is never loaded. None otherwise (a collective: every rank must call it)."""
    stores = {}
    for split, dataset in datasets.items():
        if dataset is None:
            continue
        found = rl.stored_everywhere(dataset, weights_dir, cfg.paths.cache_dir, **_store_settings(cfg, args, chunked))
        if found is None:
            return None
        stores[split] = found
    log.info("preference: the reference log-probs of every pair are stored (%s): the reference model is not "
             "loaded", ", ".join(str(s.path) for s in stores.values()))
    return PrecomputedReference(stores)


def precompute_reference(cfg: Config, args: Any, live: Reference, datasets: dict[str, Any], weights_dir: Path,
                         chunked: bool) -> PrecomputedReference:
    """Score every pair of `datasets` (split -> PreferenceDataset) with the `live` reference on all ranks (each
    its share; every rank the same number of forwards), store or reuse the results, and return the lookup. The
    caller drops `live` afterwards so no reference weights stay in memory during training."""
    def forward(_model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return live.logps(batch, chunked)

    stores = {}
    for split, dataset in datasets.items():
        if dataset is None:
            continue
        started = time.perf_counter()
        stores[split] = rl.precompute(live.module, dataset, weights_dir, cfg.paths.cache_dir,
                                      batch_size=int(args.per_device_eval_batch_size), logps=forward,
                                      **_store_settings(cfg, args, chunked))
        log.info("preference: reference log-probs of %d %s pairs ready in %.1f s (%s)", len(stores[split]), split,
                 time.perf_counter() - started, stores[split].path)
    return PrecomputedReference(stores)



def _stray_trainable(policy: torch.nn.Module) -> list[str]:
    """Trainable base parameters of a LoRA policy (not an adapter, not a modules_to_save copy): disabling the
    adapters would not give their starting values back."""
    return [n for n, p in policy.named_parameters()
            if p.requires_grad and "lora_" not in n and "modules_to_save" not in n]


def _zero3_config(args: Any) -> dict[str, Any]:
    """A ZeRO-3 inference config for the reference: the training config's stage-3 settings, no optimizer, no
    scheduler, no optimizer offload; the training precision."""
    train = copy.deepcopy(getattr(args, "hf_deepspeed_config").config)
    zero = {k: v for k, v in train.get("zero_optimization", {}).items()
            if k not in ("offload_optimizer",) and v != "auto"}
    zero["stage"] = 3
    return {"train_micro_batch_size_per_gpu": args.per_device_train_batch_size, "gradient_accumulation_steps": 1,
            "zero_optimization": zero, "bf16": {"enabled": bool(args.bf16)},
            "fp16": {"enabled": bool(args.fp16)}, "steps_per_print": 10**9}


def build_reference(cfg: Config, args: Any, policy: torch.nn.Module, loaded: torch.nn.Module | None) -> Reference:
    """The Reference of a run: `policy` is the trainable model (PEFT-wrapped under LoRA), `loaded` what
    load_reference returned."""
    if loaded is None:
        stray = _stray_trainable(policy)
        if stray:
            raise ConfigError(f"objective.reference=null under LoRA means the base with the adapters disabled, but "
                              f"{len(stray)} base parameter(s) train too (e.g. {stray[0]}), so it would not be the "
                              "starting model; set objective.reference to the starting checkpoint to load a copy")
        if not hasattr(policy, "disable_adapter"):
            raise ConfigError("objective.reference=null under LoRA needs a PEFT model (disable_adapter)")
        log.info("preference: reference = the policy with its LoRA adapters disabled (no second copy)")
        return Reference(policy, policy, "adapters_disabled")
    ref = loaded
    ref.eval()
    ref.requires_grad_(False)
    stage = cfg.deepspeed.stage
    if stage == 3:
        import deepspeed

        keep_vision_in_graph(ref)  # text-only batches still gather the vision weights on every rank
        engine, *_ = deepspeed.initialize(model=ref, config=_zero3_config(args))
        engine.eval()
        return Reference(engine, engine.module, "zero3")
    if stage is not None and (args.bf16 or args.fp16):  # DeepSpeed trains 16-bit weights: the same for the reference
        ref = ref.to(torch.bfloat16 if args.bf16 else torch.float16)
    ref = ref.to(args.device)
    return Reference(ref, ref, "copy")


def held_parameters(*modules: torch.nn.Module) -> int:
    """Elements of the distinct parameter tensors of `modules` (a tensor shared by two counts once; ZeRO-3's
    partitioned ones by their full size): with LoRA's disabled adapters as the reference, the base once."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = int(getattr(p, "ds_numel", p.numel()))
    return sum(seen.values())
