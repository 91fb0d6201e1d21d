"""Will a run fit, and how long will it take? Per-GPU memory and time from the config alone (no GPU, no weights).

`plan_memory(cfg)` builds the preset on the meta device (shapes only), applies the run's real freeze/LoRA code
to it, and adds up, per device (all in bytes):

  weights      every parameter x its dtype (model.dtype; DeepSpeed casts to bf16 under trainer.bf16),
               / world under ZeRO-3, 0 on the GPU with ZeRO-3 parameter offload.
  gradients    trainable parameters x the weight dtype, / world under ZeRO-2 and -3.
  optimizer    AdamW: two moments per trainable parameter in the weight dtype (torch keeps them in the
               parameter's dtype), plus an fp32 master copy and fp32 moments (12 bytes) under DeepSpeed with
               16-bit weights; / world under ZeRO-1/2/3; 0 on the GPU with optimizer offload.
  buffers      DDP's gradient buckets (a second copy of the gradients, several processes without DeepSpeed);
               DeepSpeed's reduce/all-gather (ZeRO-1/2) or prefetch/live-parameter (ZeRO-3) buckets at the sizes
               its config names, in the weight dtype.
  activations  what autograd keeps for the backward pass of the configured per-device batch (model below).

Activation model (elements saved per token of one layer; x bytes of the activation dtype, bf16 under
trainer.bf16 else model.dtype). It counts the tensors each op of transformers' InternVL/Llama/Qwen2 layers
saves for its backward; attention itself (sdpa/flash) saves only q, k, v, its output and a per-row statistic,
so there is no seq^2 term except under `attn_implementation=eager`, which adds heads x seq^2 x 2 per layer:

  LLM layer   (h hidden, kv = kv_heads*head_dim, q = heads*head_dim, i intermediate)
              linear inputs 2*h + q + i (q/k/v, o_proj, gate/up, down) + the rest: norm inputs 2*h (+ their
              fp32 upcast), attention q + 2*kv and its output q, MLP activation inputs 3*i
              [MoE: i is top_k x the expert width, plus the router logits]
  ViT layer   (h hidden, i intermediate) linear inputs 3*h + i + the rest: norm inputs 2*h, q/k/v 3*h,
              attention output h, layer scales 2*h, GELU input i
  A frozen layer that gradients pass through keeps no linear inputs (a frozen weight needs none to pass
  the gradient on); a LoRA layer keeps one dropout output per adapter in their place (q, k and v each drop out their own copy
  of the same input), plus the masks and rank-r products.
  projector   per image token: 2 x 4*h_vit (norm in/out) + 2 x h_llm (fc1 out, GELU out)
  logits      per token: vocab x (bytes + 12): the logits, their fp32 upcast (none for fp32 logits) and
              fp32 log-softmax (transformers' loss upcasts), plus the fp32 gradient of the logits.
              Under trainer.chunked_loss (train/recipe/chunked_loss.py) no logits exist: per token the hidden-state
              gradient it computes in the forward pass and the supervised rows' copy, 2 x h x bytes; once, one
              chunk's fp32 logits (+ the 16-bit logits before the upcast), chunk_rows x vocab x (4 [+ bytes]); and, for a trained head whose weights are not in the
              activation dtype, the head gradient's accumulator (vocab x h x bytes).

A part stores activations only if gradients flow through it (it or a part before it trains; the FLOPs model's
rule). With activation checkpointing a layer keeps only its input (h per token) and one layer's full set is
rebuilt during its backward. Tokens: per-device batch x data.max_seq_length (every row padded to the
longest: the worst case); vision tokens: batch x tiles x (patches + class token), tiles = max_dynamic_patch
(+1 thumbnail): the worst case.

Preference objectives (objective=dpo|mpo, `reference_mode`): the policy's forward runs over 2 sequences per pair
(chosen and rejected: the LLM and logits terms count 2 x batch rows; the images are encoded once per pair, so the
vision terms keep the batch), and the reference model adds (`reference_memory`):
  copy         a frozen copy of the weights in the training dtype (no gradients, no optimizer state); / world
               under ZeRO-3, 0 on the GPU with ZeRO-3 parameter offload, like the policy's weights
  lora         nothing: the reference is the policy with its adapters disabled
  precomputed  nothing: its log-probs are read from disk (tools.score_pairs' pass)
and, for copy and lora, the reference's no-grad forward after the policy's, while the policy's activations are
alive: the widest no-grad moment of an LLM layer (its MLP: 2h + 3i per token) plus the logits of the 2 x batch rows
(full logits with their fp32 upcast and log-softmax; one chunk under the chunked loss).

Peak = weights + optimizer + buffers + max(activations + lm_head gradient, gradients + step temporaries):
the backward starts with every activation alive and no gradient, and ends the other way round; the optimizer
step then holds the gradients plus its temporaries (`optimizer_step_temp`: none for torch's fused AdamW, one
weight-sized copy for foreach AdamW, DeepSpeed's fp32 gradient partition).
The verdict compares peak + CUDA_OVERHEAD_GB (CUDA context, NCCL, allocator fragmentation: not in torch's
allocator statistics) with the device memory; on CPU the overhead is CPU_OVERHEAD_GB, what a training process
grows by beyond its tensors.

Time: the model FLOPs of `train/planning/flops.py` for that batch (+ one extra forward under checkpointing, which the
hardware does but MFU does not count), at `trainer.planner_mfu` of the device's peak (an assumption, stated in
every plan).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from internvl_exp.config.batch import accumulation_steps
from internvl_exp.config.choices import PARTS
from internvl_exp.config.chunked_loss import chunk_rows_for, use_chunked_loss
from internvl_exp.config.precision import weights_dtype
from internvl_exp.config.schema import Config
from internvl_exp.models.arch import planning_arch
from internvl_exp.models.loading import build_model_on_meta
from internvl_exp.models.registry import get_family
from internvl_exp.outputs import write_json_atomic
from internvl_exp.train.planning.flops import FlopsModel, PartWeights, peak_tflops_for
from internvl_exp.train.tuning.freeze import freeze_plan, num_vision_layers, trainable_vision_layers

GIB = 2**30
# What a CUDA process holds outside torch's allocator stats: context (~0.5 GiB), NCCL buffers, fragmentation.
CUDA_OVERHEAD_GB = 2.0
# What a CPU training process grows by beyond its live tensors (the Trainer's and the libraries' own memory,
# allocator slack): measured on the tiny model at its own vocabulary, 0.16 GiB of RSS growth in training against
# 0.06 GiB of planned tensors (docs/benchmarks.md, "Chunked loss in a training run").
CPU_OVERHEAD_GB = 0.1
# Device memory (GiB) of the accelerators whose dense peak train/planning/flops.py knows, most specific names first.
DEVICE_MEMORY_GB: tuple[tuple[str, float], ...] = (
    ("B200", 180.0), ("H200 NVL", 141.0), ("H200", 141.0), ("H100 NVL", 94.0), ("H100", 80.0), ("H800", 80.0),
    ("A100 40GB", 40.0), ("A100", 80.0), ("A800", 80.0), ("L40S", 48.0), ("L40", 48.0), ("L4", 24.0),
)
# The device assumed when none is detected and neither trainer.device_memory_gb nor --gpu says otherwise.
DEFAULT_DEVICE = "H100"
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def device_memory_for(device_name: str | None) -> float | None:
    """The table's memory (GiB) for a device name, or None."""
    if not device_name:
        return None
    name = device_name.upper().replace("-", " ")
    for key, gb in DEVICE_MEMORY_GB:
        if key.upper() in name:
            return gb
    return None


@dataclass
class Device:
    name: str
    memory_gb: float | None
    peak_tflops: float | None
    source: str  # where the numbers came from


def detect_device(cfg: Config, gpu: str | None = None, running: bool = False) -> Device:
    """trainer.device_memory_gb / trainer.peak_tflops win; else the named (--gpu) or detected GPU's table
    entries; else DEFAULT_DEVICE, said so. `running`: the plan of this very run, whose device is the truth
    (a CPU run has no device memory to compare against unless trainer.device_memory_gb says)."""
    t = cfg.trainer
    name, source = gpu, "--gpu"
    if name is None:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and t.device != "cpu":
            props = torch.cuda.get_device_properties(0)
            return Device(props.name, t.get("device_memory_gb") or props.total_memory / GIB,
                          t.peak_tflops or peak_tflops_for(props.name), "detected GPU")
        if running:
            return Device("cpu", t.get("device_memory_gb"), t.peak_tflops, "this run's device")
        name, source = DEFAULT_DEVICE, f"assumed {DEFAULT_DEVICE} (no GPU detected; --gpu NAME to change)"
    memory = t.get("device_memory_gb") or device_memory_for(name)
    if t.get("device_memory_gb"):
        source += "; memory from trainer.device_memory_gb"
    return Device(name, memory, t.peak_tflops or peak_tflops_for(name), source)


@dataclass
class Plan:
    """One device's memory and time budget (bytes, seconds); `rows()` gives the table."""

    model: str
    world_size: int
    zero_stage: int  # 0: no DeepSpeed
    offload_optimizer: bool
    offload_params: bool
    per_device_batch: int
    seq_len: int
    tiles_per_sample: int
    activation_checkpointing: bool
    weight_dtype: str
    activation_dtype: str
    parameters: int
    trainable: int
    loss: str  # "chunked" (trainer.chunked_loss) | "full logits"
    trainable_per_part: dict[str, int]
    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    buffers_bytes: float
    activations_bytes: float
    activation_detail: dict[str, float]
    peak_bytes: float
    device: dict[str, Any]
    fits: bool | None
    max_batch: int | None  # largest per-device batch that fits (None: unknown device memory)
    overhead_gb: float  # added to the peak in the verdict (CUDA_OVERHEAD_GB on a GPU, CPU_OVERHEAD_GB on CPU)
    step_flops: float
    mfu: float
    step_time_s: float | None
    steps: int | None
    run_time_s: float | None
    assumptions: list[str] = field(default_factory=list)
    # Preset values no public source gives, assumed to build the model (models.assumed_arch): the sizes above
    # rest on them.
    assumed_arch: list[str] = field(default_factory=list)
    # Preference objectives: the reference mode (REFERENCE_MODES; "none" for sft), its weights and the transient
    # of its no-grad forward (bytes per device).
    reference: str = "none"
    reference_bytes: float = 0.0
    reference_forward_bytes: float = 0.0

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GIB

    def verdict(self) -> str:
        mem = self.device.get("memory_gb")
        need = self.peak_gb + self.overhead_gb
        if self.fits is None:
            return f"needs ~{need:.1f} GiB per device; device memory unknown (set trainer.device_memory_gb)"
        word = "fits" if self.fits else "DOES NOT FIT"
        batch = f"; largest per-device batch that fits: {self.max_batch}" if self.max_batch is not None else ""
        if self.max_batch == 0:
            batch = "; not even batch 1 fits: freeze more, use LoRA, a higher ZeRO stage, offload or checkpointing"
        return f"{word}: ~{need:.1f} of {mem:.0f} GiB per {self.device['name']}{batch}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(peak_gb=self.peak_gb, verdict=self.verdict())
        return out


def _layer_activation_elems(kind: str, c: Any, mode: str = "full", lora_r: int = 0, act_bytes: int = 2,
                            lora_dropout: float = 0.0) -> float:
    """Elements saved per token by one layer (the module docstring's formulas), split into the inputs of its
    linear layers (kept only when the weight trains: a frozen linear needs just its weight to pass gradients
    on) and everything else (norm inputs, attention's q/k/v/output, the MLP's activation inputs). `mode`: how
    the layer's weights train, full | frozen (gradients flow through it) | lora (adapters on every linear:
    their dropout output stands in for the input, plus the dropout mask and the rank-r product)."""
    h = c.hidden_size
    if kind == "llm":
        head_dim = getattr(c, "head_dim", None) or h // c.num_attention_heads
        q = c.num_attention_heads * head_dim
        kv = c.num_key_value_heads * head_dim
        experts = getattr(c, "num_experts_per_tok", None)
        width = (getattr(c, "moe_intermediate_size", None) or c.intermediate_size) * experts if experts else c.intermediate_size
        n_exp = (getattr(c, "num_experts", None) or getattr(c, "num_local_experts", 0)) if experts else 0
        linear_in = h + q + h + width  # q/k/v, o_proj, gate/up, down inputs
        lora_in = 3 * h + q + 2 * h + width  # one per adapter
        other = 2 * h + (q + 2 * kv) + q + 3 * width + n_exp  # norm inputs, attention q/k/v/out, SiLU/mul, router
        n_linear = 7
    else:  # ViT
        i = c.intermediate_size
        linear_in = 3 * h + i  # qkv, proj, fc1, fc2 inputs
        lora_in = 3 * h + h + h + i  # q/k/v each, projection, fc1, fc2
        other = 2 * h + 3 * h + h + 2 * h + i  # norm inputs, q/k/v, attention out, layer scales, GELU input
        n_linear = 6
    if mode == "frozen":
        return other
    if mode == "lora":
        if not lora_dropout:  # nn.Identity: the adapters share the base linears' inputs
            return other + linear_in + n_linear * lora_r
        # each adapter drops out its own copy of its input (q, k and v: three copies), plus a 1-byte mask
        return other + lora_in * (1 + 1 / act_bytes) + n_linear * lora_r
    return other + linear_in


def activation_bytes(model_config: Any, flows: dict[str, bool], batch: int, seq: int, tiles: int,
                     checkpointing: bool, act_bytes: int, eager: bool, vision_trainable_layers: int,
                     modes: dict[str, str] | None = None, lora_r: int = 0, lora_dropout: float = 0.0,
                     chunked: bool = False, head_trains: bool = False, weight_bytes: int = 4) -> dict[str, float]:
    """Activation bytes per part for one micro-batch (module docstring). `vision_trainable_layers`: the ViT
    layers gradients reach (all when anything in or before the tower trains through it; the last N under
    vit_last_n). `modes`: the freeze mode of vision and llm (default full); `lora_r`: the LoRA rank.
    `chunked`: trainer.chunked_loss (no logits; `head_trains` and `weight_bytes` size its head gradient)."""
    modes = modes or {}
    tc, vc = model_config.get_text_config(), model_config.vision_config
    size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    n_llm = batch * seq
    n_vit = batch * tiles * ((size // patch) ** 2 + 1)
    n_img = batch * tiles * int((size // patch) ** 2 * model_config.downsample_ratio**2)
    fp32_norm = 2 * tc.hidden_size * (4 / act_bytes - 1) if act_bytes < 4 else 0.0  # RMSNorm's fp32 upcast

    def stack(kind: str, conf: Any, tokens: float, layers: int, extra: float = 0.0) -> float:
        mode = modes.get("vision" if kind == "vit" else "llm", "full")
        mode = "full" if kind == "vit" and mode == "frozen" else mode  # a frozen tower's reached layers train (vit_last_n)
        per_layer = (_layer_activation_elems(kind, conf, mode, lora_r, act_bytes, lora_dropout) + extra) * tokens * act_bytes
        if eager:
            seqlen = seq if kind == "llm" else (size // patch) ** 2 + 1
            rows = batch if kind == "llm" else batch * tiles
            per_layer += 2 * conf.num_attention_heads * seqlen**2 * rows * act_bytes
        if checkpointing:
            return layers * conf.hidden_size * tokens * act_bytes + per_layer  # inputs + one layer rebuilt
        return layers * per_layer

    out = {"vision": 0.0, "projector": 0.0, "llm": 0.0, "logits": 0.0}
    if flows["vision"] and vision_trainable_layers:
        out["vision"] = stack("vit", vc, n_vit, vision_trainable_layers)
    if flows["projector"]:
        out["projector"] = n_img * (8 * vc.hidden_size + 2 * tc.hidden_size) * act_bytes
    if flows["llm"]:
        out["llm"] = stack("llm", tc, n_llm, tc.num_hidden_layers, fp32_norm)
    if flows["lm_head"] and chunked:
        rows = min(chunk_rows_for(tc.vocab_size), n_llm)
        upcast = act_bytes if act_bytes < 4 else 0
        accumulator = tc.vocab_size * tc.hidden_size * act_bytes if head_trains and weight_bytes != act_bytes else 0
        out["logits"] = 2 * n_llm * tc.hidden_size * act_bytes + rows * tc.vocab_size * (4 + upcast) + accumulator
    elif flows["lm_head"]:
        upcast = 4 if act_bytes < 4 else 0  # `.float()` of fp32 logits is the same tensor
        out["logits"] = n_llm * tc.vocab_size * (act_bytes + upcast + 4 + 4)
    return out


# How a preference run gets its reference log-probs (the objective group's `reference`, train/recipe/reference.py).
REFERENCE_MODES = ("none", "copy", "lora", "precomputed")
PRECOMPUTED = "precomputed"  # the objective.reference value that reads them from disk (objectives/reference_logps.py)


def reference_mode(cfg: Config) -> str:
    """none (objective sft, or no objective group), precomputed (objective.reference=precomputed), lora (the
    starting weights under LoRA: the adapters disabled), else copy (the starting weights or another checkpoint)."""
    objective = cfg.get("objective") if hasattr(cfg, "get") else None
    if objective is None or str(objective.get("kind", "sft")) == "sft":
        return "none"
    ref = objective.get("reference")
    if ref is not None and str(ref) == PRECOMPUTED:
        return "precomputed"
    if ref is None and "lora" in dict(cfg.freeze.parts).values():
        return "lora"
    return "copy"


def reference_memory(mode: str, params: int, weight_bytes: int, world: int, stage: int, off_par: bool) -> float:
    """Bytes per device the reference's weights add in `mode` (REFERENCE_MODES): a copy of all `params` in the
    training dtype, sharded under ZeRO-3 and offloaded with the policy's parameters; no gradients, no optimizer
    state. Nothing for lora (the policy is the reference), precomputed (on disk) and none."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference mode {mode!r} is not one of {list(REFERENCE_MODES)}")
    if mode != "copy" or off_par:
        return 0.0
    return params * weight_bytes / (world if stage == 3 else 1)


def reference_forward_bytes(model_config: Any, rows: int, seq: int, act_bytes: int, chunked: bool) -> float:
    """The transient of the reference's no-grad forward over `rows` sequences: an LLM layer's widest moment (the
    MLP) and the logits the log-probs need (full: 16-bit, the fp32 upcast and log-softmax; chunked: the hidden
    states and one chunk of fp32 rows)."""
    tc = model_config.get_text_config()
    tokens = rows * seq
    experts = getattr(tc, "num_experts_per_tok", None)
    width = (getattr(tc, "moe_intermediate_size", None) or tc.intermediate_size) * experts if experts else tc.intermediate_size
    # Without autograd nothing is kept for a backward: the widest moment is the MLP's, with the residual and its
    # normed input (2h) and the gate, the up projection and their product (3 x width) alive at once.
    layer = (2 * tc.hidden_size + 3 * width) * tokens * act_bytes
    if chunked:
        chunk = min(chunk_rows_for(tc.vocab_size), tokens)
        logits = tokens * tc.hidden_size * act_bytes + chunk * tc.vocab_size * (4 + (act_bytes if act_bytes < 4 else 0))
    else:
        logits = tokens * tc.vocab_size * (act_bytes + (4 if act_bytes < 4 else 0) + 4)
    return layer + logits


def _zero(cfg: Config) -> tuple[int, bool, bool, dict[str, Any]]:
    ds = cfg.deepspeed
    if ds.stage is None:
        return 0, False, False, {}
    from omegaconf import OmegaConf

    zc = OmegaConf.to_container(ds.config, resolve=True).get("zero_optimization", {}) if ds.config else {}
    off_opt = (zc.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    off_par = (zc.get("offload_param") or {}).get("device") in ("cpu", "nvme")
    return int(ds.stage), off_opt, off_par, zc


def state_bytes(params: int, trainable: int, weight_bytes: int, world: int, stage: int, off_opt: bool,
                off_par: bool) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per device under ZeRO `stage` (0 = none) over `world` processes."""
    master = 4 if stage and weight_bytes < 4 else 0  # DeepSpeed's fp32 master copy of 16-bit weights
    moment = 4 if stage else weight_bytes  # DeepSpeed: fp32 moments; torch: the parameter's dtype
    weights = params * weight_bytes / (world if stage == 3 else 1)
    grads = trainable * weight_bytes / (world if stage >= 2 else 1)
    opt = trainable * (master + 2 * moment) / (world if stage >= 1 else 1)
    if off_par:
        weights = 0.0
    if off_opt:
        opt = 0.0
    return weights, grads, opt


def optimizer_step_temp(trainable: int, weight_bytes: int, world: int, stage: int, fused: bool | None) -> float:
    """Bytes the optimizer step adds on top of the gradients: DeepSpeed's fp32 copy of this rank's gradient
    partition (16-bit weights); torch's foreach AdamW one temporary the size of the weights; fused AdamW none
    (it updates in place; our default whenever the device supports it)."""
    if stage:
        return trainable * 4 / world if weight_bytes < 4 else 0.0
    return 0.0 if fused is None or fused else float(trainable * weight_bytes)


def _buffers(stage: int, zc: dict[str, Any], grads_full: float, world: int, weight_bytes: int) -> float:
    if stage == 0:
        return grads_full if world > 1 else 0.0  # DDP's buckets: a copy of every gradient
    if stage in (1, 2):
        return (float(zc.get("reduce_bucket_size", 5e8)) + float(zc.get("allgather_bucket_size", 5e8))) * weight_bytes
    return (float(zc.get("reduce_bucket_size", 5e8)) + float(zc.get("stage3_prefetch_bucket_size", 5e7))) * weight_bytes


def _meta_setup(cfg: Config):
    """The preset on the meta device with the run's freeze/LoRA applied: (model, family, assumed), `assumed`
    naming the unsourced arch values it was built with (models.arch.planning_arch)."""
    import logging
    import warnings

    from internvl_exp.train.tuning.trainable import make_trainable

    family = get_family(cfg.model.family)
    model_cfg, assumed = planning_arch(cfg.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("internvl_exp.train.tuning.trainable").level
        logging.getLogger("internvl_exp.train.tuning.trainable").setLevel(logging.ERROR)  # drop-path notes: not a run
        try:
            model = make_trainable(build_model_on_meta(model_cfg), family, cfg.freeze, model_cfg).model
        finally:
            logging.getLogger("internvl_exp.train.tuning.trainable").setLevel(level)
    return model, family, assumed


# The HF config fields activation_bytes reads (a cached summary keeps just these; see ModelSummary).
_TEXT_FIELDS = ("hidden_size", "num_attention_heads", "head_dim", "num_key_value_heads", "intermediate_size",
                "num_experts_per_tok", "moe_intermediate_size", "num_experts", "num_local_experts",
                "num_hidden_layers", "vocab_size")
_VISION_FIELDS = ("hidden_size", "intermediate_size", "image_size", "patch_size", "num_attention_heads")


class ConfigView:
    """The few fields of an InternVL config the activation model reads, without transformers: the
    `get_text_config()` / `vision_config` / `downsample_ratio` shape of the real config."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields
        self.downsample_ratio = fields["downsample_ratio"]
        self.vision_config = SimpleNamespace(**fields["vision"])
        self._text = SimpleNamespace(**fields["text"])

    def get_text_config(self) -> Any:
        return self._text

    @staticmethod
    def fields_of(config: Any) -> dict[str, Any]:
        tc, vc = config.get_text_config(), config.vision_config
        return {"downsample_ratio": config.downsample_ratio,
                "text": {k: getattr(tc, k, None) for k in _TEXT_FIELDS},
                "vision": {k: getattr(vc, k, None) for k in _VISION_FIELDS}}


@dataclass
class ModelSummary:
    """What the planner needs from the model once freeze/LoRA is applied: parameter counts, the FLOPs model,
    the ViT depth and the config fields of the activation model. Planning builds the preset on the meta device
    for it (torch + transformers' modeling: ~9 s of imports on 2 cores, while the config composes: see
    meta_worker.py), so `tools.plan` keeps it in
    `<paths.cache_dir>/plan_models/`, keyed by the model and freeze config, the package's source and the
    torch/transformers/peft versions: a second plan of the same model and freeze (another batch, ZeRO stage,
    process count, device) imports neither."""

    total: int
    trainable: int
    per_part: dict[str, int]
    flops: Any  # FlopsModel
    vision_layers: int
    config: Any  # the model's config (a ConfigView when planned from the config alone)
    # The unsourced preset values the meta build assumed (models.assumed_arch), one line per reason.
    assumed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "trainable": self.trainable, "per_part": self.per_part,
                "flops": asdict(self.flops), "vision_layers": self.vision_layers,
                "config": ConfigView.fields_of(self.config), "assumed": list(self.assumed)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelSummary":
        flops = FlopsModel(**{**d["flops"], "weights": {p: PartWeights(**w) for p, w in d["flops"]["weights"].items()}})
        return cls(d["total"], d["trainable"], d["per_part"], flops, d["vision_layers"], ConfigView(d["config"]),
                   list(d["assumed"]))


def _summary_key(cfg: Config) -> str:
    import hashlib
    import json
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    from omegaconf import OmegaConf

    h = hashlib.sha256()
    h.update(json.dumps([OmegaConf.to_container(cfg.model, resolve=True),
                         OmegaConf.to_container(cfg.freeze, resolve=True)], sort_keys=True, default=str).encode())
    for lib in ("torch", "transformers", "peft"):
        try:
            h.update(f"{lib}={version(lib)}".encode())
        except PackageNotFoundError:
            h.update(lib.encode())
    package = Path(__file__).resolve().parents[2]  # internvl_exp/
    for src in sorted(package.rglob("*.py")):  # any code change may change the counts: rebuild
        h.update(str(src.relative_to(package)).encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:32]


def model_summary(cfg: Config, setup: Any = None, cache: bool = True, build: Any = None) -> ModelSummary:
    """The ModelSummary of `setup` (a (model, family) already made trainable: a run's own model) or of the
    preset built on the meta device, from the cache when the same model/freeze/code was planned before.
    `build(cfg) -> ModelSummary` builds it elsewhere on a cache miss (tools.plan: a MetaWorker)."""
    tpt = int(cfg.resolved.tokens_per_tile)
    if setup is not None:
        return _summarise(*setup, tpt, keep_config=True)
    path = None
    if cache and cfg.get("paths") is not None and cfg.paths.get("cache_dir"):
        from pathlib import Path

        path = Path(cfg.paths.cache_dir) / "plan_models" / f"{_summary_key(cfg)}.json"
        if path.is_file():
            import json

            try:
                return ModelSummary.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError):
                pass  # unreadable or from an older layout: rebuild and overwrite
    if build is not None:
        summary = build(cfg)
    else:
        model, family, assumed = _meta_setup(cfg)
        summary = _summarise(model, family, tpt, keep_config=False, assumed=assumed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, summary.to_json())
        except OSError:
            pass  # a read-only cache only costs the next plan its speed
    return summary


def _summarise(model: Any, family: Any, tpt: int, keep_config: bool, assumed: list[str] | None = None) -> ModelSummary:
    total, trainable, per_part = count_parameters(model, family)
    config = model.config if keep_config else ConfigView(ConfigView.fields_of(model.config))
    return ModelSummary(total, trainable, per_part, FlopsModel.from_model(model, family, tpt),
                        num_vision_layers(model, family), config, list(assumed or []))


def count_parameters(model: Any, family: Any) -> tuple[int, int, dict[str, int]]:
    """(all, trainable, trainable per part) as the optimizer sees them (PEFT's idle originals left out)."""
    total = trainable = 0
    per_part = {p: 0 for p in PARTS}
    for name, p in model.named_parameters():
        if family.is_peft_original(name):
            continue
        n = int(getattr(p, "ds_numel", 0) or p.numel())  # ZeRO-3 keeps the full size in ds_numel
        total += n
        if p.requires_grad:
            trainable += n
            per_part[family.part_of(name)] += n
    return total, trainable, per_part


def plan_memory(cfg: Config, *, gpu: str | None = None, seq_len: int | None = None, tiles: int | None = None,
                samples: int | None = None, batch: int | None = None, setup: Any = None,
                world: int | None = None, running: bool = False, build: Any = None,
                reference: str | None = None) -> Plan:
    """The plan of a composed config (see the module docstring). `seq_len`/`tiles` replace the worst case
    (data.max_seq_length, max_dynamic_patch + thumbnail); `samples`: the epoch size for the run time (else
    trainer.max_steps decides, or no run time); `batch` replaces the per-device batch; `setup`: a
    (model, family) already made trainable (a run passes its own model: no second build); `world`: the
    process count (else what the launch group will start); `running`: planning the current run's own device;
    `build`: see model_summary; `reference`: the preference reference mode (REFERENCE_MODES; default
    `reference_mode(cfg)`)."""
    summary = model_summary(cfg, setup, build=build)
    t, m = cfg.trainer, cfg.model
    world = int(world or cfg.resolved.world_size)
    b = int(batch or t.per_device_train_batch_size)
    seq = int(seq_len or cfg.data.max_seq_length)
    n_tiles = int(tiles if tiles is not None else m.max_dynamic_patch + (1 if m.use_thumbnail and m.max_dynamic_patch > 1 else 0))
    stage, off_opt, off_par, zc = _zero(cfg)
    total, trainable, per_part = summary.total, summary.trainable, summary.per_part

    loaded = weights_dtype(cfg)  # model.dtype=auto resolved as the run resolves it
    weight_dtype = "bfloat16" if (stage and t.bf16) else loaded  # DeepSpeed casts the model under bf16
    act_dtype = "bfloat16" if t.bf16 else loaded
    wb, ab = _BYTES[weight_dtype], _BYTES[act_dtype]
    weights, grads, opt = state_bytes(total, trainable, wb, world, stage, off_opt, off_par)
    ref_mode = reference if reference is not None else reference_mode(cfg)
    ref_weights = reference_memory(ref_mode, total, wb, world, stage, off_par)
    pair_rows = 1 if ref_mode == "none" else 2  # sequences per sample: chosen and rejected
    buffers = _buffers(stage, zc, trainable * wb, world, wb)

    flops = summary.flops
    flows = flops._gradient_flows()
    plan = freeze_plan(cfg.freeze)
    n_vit = summary.vision_layers
    vit_layers = n_vit if plan.modes["vision"] != "frozen" else len(trainable_vision_layers(plan, n_vit))
    eager = m.attn_implementation == "eager"
    config = summary.config

    chunked = use_chunked_loss(t.get("chunked_loss", "auto"), m.name)

    def acts_for(rows: int) -> dict[str, float]:
        return activation_bytes(config, flows, rows, seq, n_tiles, bool(t.activation_checkpointing), ab, eager, vit_layers,
                                dict(plan.modes), int(cfg.freeze.lora.r) if plan.uses_lora else 0,
                                float(cfg.freeze.lora.dropout) if plan.uses_lora else 0.0,
                                chunked, per_part["lm_head"] > 0, wb)

    def peak_for(bsz: int) -> tuple[float, dict[str, float], float]:
        acts = acts_for(bsz)
        if pair_rows > 1:  # the LLM and the logits see 2 rows per pair; the images are encoded once per pair
            doubled = acts_for(pair_rows * bsz)
            acts = {**acts, "llm": doubled["llm"], "logits": doubled["logits"]}
        ref_fwd = (reference_forward_bytes(config, pair_rows * bsz, seq, ab, chunked)
                   if ref_mode in ("copy", "lora") else 0.0)
        head_grad = per_part["lm_head"] * wb / (world if stage >= 2 else 1)
        adam_tmp = 0.0 if off_opt else optimizer_step_temp(trainable, wb, world, stage, cfg.optimizer.fused)
        held = weights + ref_weights + opt + buffers
        return held + max(sum(acts.values()) + max(head_grad, ref_fwd), grads + adam_tmp), acts, ref_fwd

    peak, acts, ref_fwd = peak_for(b)
    dev = detect_device(cfg, gpu, running)
    overhead = CPU_OVERHEAD_GB if dev.name == "cpu" else CUDA_OVERHEAD_GB
    fits = max_batch = None
    if dev.memory_gb:
        budget = (dev.memory_gb - overhead) * GIB
        fits = peak <= budget
        max_batch, probe = 0, 1
        while probe <= 4096 and peak_for(probe)[0] <= budget:  # peak grows linearly with the batch: doubling, then bisect
            max_batch, probe = probe, probe * 2
        lo, hi = max_batch, min(probe, 4097)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if peak_for(mid)[0] <= budget else (lo, mid)
        max_batch = lo

    tokens = pair_rows * b * seq
    step = flops.step_flops(tokens, pair_rows * b * seq**2, b * n_tiles)
    forward = FlopsModel(weights={p: PartWeights(w.total, 0) for p, w in flops.weights.items()},
                         vision_tokens_per_tile=flops.vision_tokens_per_tile, image_tokens_per_tile=flops.image_tokens_per_tile,
                         llm_layers=flops.llm_layers, llm_attn_width=flops.llm_attn_width,
                         vision_layers=flops.vision_layers, vision_attn_width=flops.vision_attn_width)
    once = forward.step_flops(tokens, pair_rows * b * seq**2, b * n_tiles)
    hardware = step + (once if t.activation_checkpointing else 0.0)
    if ref_mode in ("copy", "lora"):  # the reference's forward over the same rows
        step += once
        hardware += once
    mfu = float(t.get("planner_mfu") or 0.35)
    accum = accumulation_steps(t, world)  # for `world` (the planner tool may plan another size than resolved)
    step_time = hardware * accum / (dev.peak_tflops * 1e12 * mfu) if dev.peak_tflops else None
    if t.max_steps is not None:
        steps = int(t.max_steps)
    elif samples is not None:
        steps = math.ceil(samples / (b * world * accum)) * int(math.ceil(t.num_train_epochs))
    else:
        steps = None
    assumptions = [
        f"every row padded to {seq} tokens, {n_tiles} tiles per sample (worst case)",
        f"MFU {mfu:.0%} (trainer.planner_mfu) of {dev.peak_tflops or '?'} dense TFLOPS ({dev.name})",
        (f"+{overhead:g} GiB process memory beyond the tensors in the verdict" if dev.name == "cpu" else
         f"+{overhead:.0f} GiB CUDA context/NCCL/fragmentation in the verdict"),
        f"device: {dev.name} ({dev.source})",
    ]
    if ref_mode != "none":
        assumptions.append(f"pairs: {pair_rows} sequences of {seq} tokens per pair, images encoded once per pair; "
                           f"reference {ref_mode}")
    return Plan(
        model=m.name, world_size=world, zero_stage=stage, offload_optimizer=off_opt, offload_params=off_par,
        per_device_batch=b, seq_len=seq, tiles_per_sample=n_tiles,
        activation_checkpointing=bool(t.activation_checkpointing), weight_dtype=weight_dtype, activation_dtype=act_dtype,
        parameters=total, trainable=trainable, loss="chunked" if chunked else "full logits", trainable_per_part=per_part,
        weights_bytes=weights, gradients_bytes=grads, optimizer_bytes=opt, buffers_bytes=buffers,
        activations_bytes=sum(acts.values()), activation_detail=acts, peak_bytes=peak,
        device=asdict(dev), fits=fits, max_batch=max_batch, overhead_gb=overhead, step_flops=step * accum, mfu=mfu,
        step_time_s=step_time, steps=steps, run_time_s=step_time * steps if step_time and steps else None,
        assumptions=assumptions, assumed_arch=list(summary.assumed),
        reference=ref_mode, reference_bytes=ref_weights, reference_forward_bytes=ref_fwd,
    )


def format_plan(plan: Plan) -> str:
    """The plan as a per-GPU table (rich, plain text)."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    zero = f"ZeRO-{plan.zero_stage}" if plan.zero_stage else "no DeepSpeed"
    offload = "+".join(k for k, v in (("optimizer", plan.offload_optimizer), ("params", plan.offload_params)) if v)
    title = (f"{plan.model} on {plan.world_size} GPU(s), {zero}{' offload ' + offload if offload else ''}, "
             + (f"batch {plan.per_device_batch} pairs/GPU (2 sequences each) x {plan.seq_len} tokens x "
                f"{plan.tiles_per_sample} tiles, " if plan.reference != "none" else
                f"batch {plan.per_device_batch}/GPU x {plan.seq_len} tokens x {plan.tiles_per_sample} tiles, ")
             + f"checkpointing {'on' if plan.activation_checkpointing else 'off'}")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("per GPU", justify="left")
    table.add_column("GiB", justify="right")
    table.add_column("what", justify="left")
    pct = 100 * plan.trainable / plan.parameters if plan.parameters else 0
    rows = [
        ("weights", plan.weights_bytes, f"{plan.parameters:,} parameters in {plan.weight_dtype}"),
        ("gradients", plan.gradients_bytes, f"{plan.trainable:,} trainable ({pct:.1f}%)"),
        ("optimizer state", plan.optimizer_bytes, "AdamW" + (" fp32 master + 2 fp32 moments" if plan.zero_stage and plan.weight_dtype != "float32" else " 2 moments")),
        ("buffers", plan.buffers_bytes, "DeepSpeed buckets" if plan.zero_stage else "DDP gradient buckets"),
    ]
    if plan.reference != "none":
        what = {"copy": f"frozen copy in {plan.weight_dtype}, no gradients or optimizer state"
                        + (f", sharded over {plan.world_size} (ZeRO-3)" if plan.zero_stage == 3 else ""),
                "lora": "the policy with its LoRA adapters disabled: no copy",
                "precomputed": "log-probs precomputed on disk (objective.reference=precomputed): nothing"}[plan.reference]
        rows.append(("reference model", plan.reference_bytes, what))
        if plan.reference_forward_bytes:
            rows.append(("reference forward", plan.reference_forward_bytes,
                         "no-grad forward over chosen+rejected after the policy's (transient)"))
    for part in ("vision", "projector", "llm", "logits"):
        what = plan.activation_dtype
        if part == "logits":
            what = ("chunked loss (trainer.chunked_loss): one chunk of logits at a time" if plan.loss == "chunked"
                    else "full logits: 16-bit + fp32 loss copies (trainer.chunked_loss=true avoids them)")
        rows.append((f"activations: {part}", plan.activation_detail[part], what))
    for name, value, what in rows:
        table.add_row(name, f"{value / GIB:.2f}", what)
    peak_what = ("weights + reference + optimizer + buffers + max(activations + reference forward, gradients + step "
                 "temporaries)" if plan.reference != "none" else
                 "weights + optimizer + buffers + max(activations, gradients + step temporaries)")
    table.add_row("peak (allocated)", f"{plan.peak_gb:.2f}", peak_what, end_section=True)
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False, color_system=None)
    console.print(table)
    console.print(f"verdict: {plan.verdict()}")
    trainable = ", ".join(f"{p} {n:,}" for p, n in plan.trainable_per_part.items() if n)
    console.print(f"trainable by part: {trainable or 'nothing'}")
    if plan.step_time_s is not None:
        line = f"time: {plan.step_flops / 1e12:,.0f} TFLOPs per optimizer step -> ~{plan.step_time_s:.2f} s/step"
        if plan.run_time_s is not None:
            line += f"; {plan.steps:,} steps ~{plan.run_time_s / 3600:.2f} h"
        else:
            line += " (run time: set trainer.max_steps or pass --samples N)"
        console.print(line)
    console.print("assumptions: " + "; ".join(plan.assumptions))
    for line in plan.assumed_arch:  # unsourced preset values: said, never silently planned with
        console.print(f"preset value {line}")
    return buf.getvalue()
