"""Structured-config schema for the whole run.

Every config group is backed by a dataclass, so a typo (``optimizer.lrr=1``) or a wrong type
(``trainer.max_steps=abc``) fails when Hydra composes the config, before anything heavy is imported.
This module must stay light: no torch, no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class HubIds:
    """Where a release lives on the Hugging Face Hub: OpenGVLab's original repo (remote-code layout, converted on
    first use) and the transformers-native copy (`-hf` / `-HF`), preferred when it exists."""

    original: Optional[str] = None  # OpenGVLab/<name>: remote-code layout, converted once to the native one
    native: Optional[str] = None  # the transformers-native repo (-hf), preferred when it exists


@dataclass
class VisionArch:
    """InternViT dims (transformers' InternVLVisionConfig names). null = not sourced (docs/models.md)."""

    hidden_size: Optional[int] = None
    num_hidden_layers: Optional[int] = None
    num_attention_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    norm_type: Optional[str] = None  # layer_norm (InternViT-300M) | rms_norm (InternViT-6B)
    use_qk_norm: Optional[bool] = None
    attention_bias: Optional[bool] = None


@dataclass
class TextArch:
    """The LLM's dims (transformers' text-config names). null = not sourced, or not used by this model_type
    (head_dim for llama/qwen2/phi3, the MoE fields for dense models); internvl_exp.models.arch says which."""

    model_type: Optional[str] = None  # llama | qwen2 | qwen3 | qwen3_moe | gpt_oss | phi3
    hidden_size: Optional[int] = None
    num_hidden_layers: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    intermediate_size: Optional[int] = None
    vocab_size: Optional[int] = None
    tie_word_embeddings: Optional[bool] = None
    num_experts: Optional[int] = None
    num_experts_per_tok: Optional[int] = None
    moe_intermediate_size: Optional[int] = None


@dataclass
class ArchConfig:
    """The architecture for random init (`model.random_init=true`) and for checking a checkpoint's size.
    Loading real weights reads the architecture from the checkpoint's own config.json instead."""

    vision: VisionArch = field(default_factory=VisionArch)
    text: TextArch = field(default_factory=TextArch)


@dataclass
class RecipeConfig:
    """InternVL's official fine-tuning recipe for a preset: the value of each of these keys that the run leaves at
    null (optimizer.lr, optimizer.weight_decay, optimizer.warmup_ratio, optimizer.scheduler, data.max_seq_length,
    trainer.bf16, trainer.activation_checkpointing). Filled in once by internvl_exp.config.resolve, which records
    where each value came from. null here: not sourced (the run must then set the key itself)."""

    name: Optional[str] = None  # shown as the values' origin: "recipe <name>"
    source: Optional[str] = None  # the official script (or card) the values come from
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_ratio: Optional[float] = None
    scheduler: Optional[str] = None
    max_seq_length: Optional[int] = None
    bf16: Optional[bool] = None
    activation_checkpointing: Optional[bool] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    # Family name in the parts registry (internvl_exp.models.registry): how parts map to modules.
    family: str = "internvl_hf"
    # The weights: model.path when set, else the Hub ids below looked up offline in the HF cache and
    # paths.models_dir (internvl_exp.models.resolve). A preset with weights never falls back to random.
    hub: HubIds = field(default_factory=HubIds)
    # Other weights of the same architecture, chosen with model.variant (e.g. mpo: the preference-tuned weights).
    variants: dict[str, HubIds] = field(default_factory=dict)
    variant: Optional[str] = None  # a key of `variants` (null: the main release)
    path: Optional[str] = None  # a local checkpoint directory; wins over the Hub ids
    # Build the architecture from `arch` with random weights (throughput benchmarks, planning); never implied.
    random_init: bool = False
    # The conversation template (internvl_exp.data.templates); null = not known, must be set (model=local).
    template: Optional[str] = "internvl2_5"
    image_context_token: str = "<IMG_CONTEXT>"  # the placeholder token repeated once per image token
    # The id the preset expects for image_context_token; checked against the checkpoint (null: not checked).
    image_token_id: Optional[int] = None
    image_size: int = 448  # tile size in pixels (InternVL's force_image_size)
    patch_size: int = 14  # ViT patch size in pixels
    downsample_ratio: float = 0.5  # pixel-shuffle ratio: image tokens per tile = (image_size/patch_size)^2 x ratio^2
    min_dynamic_patch: int = 1  # fewest tiles an image is cut into
    max_dynamic_patch: int = 6  # most tiles an image is cut into (the thumbnail comes on top)
    use_thumbnail: bool = True  # add a whole-image thumbnail tile when an image has more than one tile
    normalize_type: str = "imagenet"  # pixel normalisation: imagenet | clip | siglip
    # Weights' dtype: auto = float32 without DeepSpeed (trainer.bf16 autocasts over fp32 master weights),
    # bfloat16 under DeepSpeed with trainer.bf16 (fp32 master in its optimizer); internvl_exp/config/precision.py.
    dtype: str = "auto"
    attn_implementation: str = "sdpa"  # transformers' attention kernel: sdpa | eager | flash_attention_2
    # Stochastic depth on the ViT's residual branches (timm DropPath), linear from 0 (first layer) to this rate
    # (last layer); active in training only, and only on trainable vision layers unless drop_path_on_frozen.
    drop_path_rate: float = 0.0
    # Also drop paths in frozen vision layers (InternVL's official behaviour; needs freeze.frozen_mode=train).
    drop_path_on_frozen: bool = False
    arch: ArchConfig = field(default_factory=ArchConfig)
    # The defaults this preset brings for other groups' keys left at null (see RecipeConfig).
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


@dataclass
class DatasetSpec:
    """One entry of InternVL's meta JSON (same keys), usable inline in `data.datasets`."""

    annotation: str = MISSING
    root: str = ""
    repeat_time: float = 1.0
    data_augment: bool = False
    max_dynamic_patch: Optional[int] = None
    length: Optional[int] = None
    # Relative share of this dataset in a weighted mixture (set on every dataset or none; docs/data.md).
    weight: Optional[float] = None


@dataclass
class EvalDataConfig:
    """Eval datasets in InternVL's format, never trained on: a meta JSON and/or inline datasets (inline wins on
    a name clash). Every usable line is evaluated once (repeat_time and weight do not apply; no augmentation)."""

    # data=demo: the demo's eval split while data.meta_path is inside paths.demo_data_dir, else null (own data).
    meta_path: Optional[str] = None
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)  # inline eval datasets, as data.datasets


@dataclass
class PackingConfig:
    """Sequence packing of whole samples (docs/data.md, "Packing"); off by default."""

    enabled: bool = False
    # Tokens per pack (>= data.max_seq_length, so every sample fits whole).
    max_packed_tokens: int = 8192
    # Tiles (images' tiles + video frames) per pack; bounds the vision tower's batch. A sample with more gets
    # a pack of its own.
    max_tiles: int = 48
    # Samples per first-fit-decreasing window: larger packs tighter, costs nothing but planning time.
    buffer_size: int = 1000


@dataclass
class DataConfig:
    name: str = MISSING
    # A meta JSON in InternVL's format, and/or datasets given inline (inline entries win on name clashes).
    meta_path: Optional[str] = None
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)  # name -> DatasetSpec (InternVL's meta keys)
    # Generate the demo datasets into paths.demo_data_dir first (deterministic, once).
    generate_demo: bool = False
    # Tokens per sample, image tokens included (longer: see length_policy). null: the model recipe's.
    max_seq_length: Optional[int] = None
    # What to do with samples longer than max_seq_length: drop (skip and count) or truncate whole turns.
    length_policy: str = "drop"
    # The share of a dataset's lines the length policy may drop before the run stops (before the model loads),
    # naming the dataset and the fixes; 1.0 accepts any loss. A dataset left with no sample always stops.
    max_drop_share: float = 0.05
    # Bad annotation lines or unreadable media: strict (stop and list every problem) or skip (skip and count).
    on_error: str = "strict"
    system_message: Optional[str] = None  # replaces the template's system prompt (null: the template's own)
    seed: int = 0  # data order, sampling of mixtures and video frames
    # Video samples: frames per video drawn uniformly in [min_num_frame, max_num_frame] (capped by the
    # frames available), picked from equal segments at random ("rand") or at their middle ("middle").
    min_num_frame: int = 8
    max_num_frame: int = 32
    frame_sampling: str = "rand"
    # Image resize kernel: "pil" (InternVL's own training pixels, bit for bit) or "torch" (torchvision's, =
    # transformers' GotOcr2ImageProcessor: faster, differs by up to ~13 uint8 levels on photos; docs/data.md).
    resize_backend: str = "pil"
    # Turn images upright by their EXIF orientation tag before tiling. Off: pixels as stored, as InternVL's
    # loader reads them; data_check and the run's data report count the images that carry such a tag.
    exif_transpose: bool = False
    # Processes for the pre-flight scan (null: every core available); the scan runs once per machine.
    scan_workers: Optional[int] = None
    # Cache the pre-flight plan under paths.cache_dir, shared by ranks, reruns and sweep jobs (docs/data.md).
    plan_cache: bool = True
    packing: PackingConfig = field(default_factory=PackingConfig)
    # The loss over an optimizer step: token (mean over supervised tokens), sample (mean of per-sample means,
    # weights 1/n) or square (InternVL's square averaging, weights 1/sqrt(n)); train/recipe/loss.py.
    loss_reduction: str = "token"
    # Batch samples of similar length together (no packing); lengths from the pre-flight plan.
    group_by_length: bool = False
    # Eval data (docs/inference.md, "Eval during training"): datasets of their own, or a held-out share of the
    # training lines (split by a hash of dataset + file name + line number; never trained on). Not both.
    eval: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval_fraction: float = 0.0  # in [0, 1)


@dataclass
class LoraConfig:
    """LoRA on the parts whose mode is `lora` (docs/freeze.md)."""

    r: int = 16  # LoRA rank
    alpha: float = 32.0  # LoRA scaling numerator (the update is scaled by alpha / r)
    dropout: float = 0.05  # dropout on the LoRA branch's input
    # Module names inside one LLM decoder layer / one ViT layer, e.g. [self_attn.q_proj, self_attn.v_proj];
    # null = the family's defaults (all attention and MLP projections).
    llm_targets: Optional[list[str]] = None
    vision_targets: Optional[list[str]] = None


@dataclass
class FreezeConfig:
    name: str = MISSING
    # Per-part training mode: frozen | full | lora (lora: vision and llm only).
    parts: dict[str, str] = field(
        default_factory=lambda: {"vision": "frozen", "projector": "full", "llm": "full", "lm_head": "full"}
    )
    # The LLM's input token embeddings (a sub-part of llm): frozen | full; null = follow llm (full when llm is
    # full, frozen when llm is frozen or lora). Tied to lm_head? Then both must have the same mode.
    embeddings: Optional[str] = None
    # Train the last N layers of an otherwise frozen ViT (needs parts.vision=frozen). N counts from the top:
    # 2 = the last two layers, unlike InternVL's `unfreeze_vit_layers` slice start.
    vit_last_n: Optional[int] = None
    # How frozen modules run in training: eval (no dropout / drop-path, deterministic) or train (InternVL's way).
    frozen_mode: str = "eval"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DeepSpeedConfig:
    name: str = MISSING
    stage: Optional[int] = None  # ZeRO stage 1 | 2 | 3; null: no DeepSpeed
    # The DeepSpeed JSON as a mapping ("auto" values are filled by the Trainer).
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = MISSING
    # null (lr, weight_decay, scheduler, warmup_ratio): the model recipe's value (model.recipe; config/resolve.py).
    lr: Optional[float] = None  # peak learning rate
    weight_decay: Optional[float] = None  # AdamW weight decay (never on biases and norms)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    scheduler: Optional[str] = None  # an HF scheduler name: cosine | linear | constant | cosine_with_min_lr | warmup_stable_decay | ...
    warmup_ratio: Optional[float] = None  # share of all steps spent warming up linearly from 0
    max_grad_norm: float = 1.0  # gradient clipping by global norm
    # Multiplies `lr` per part, e.g. {vision: 0.1}. Parts not listed use 1.0; `embeddings` defaults to llm's.
    part_lr_scale: dict[str, float] = field(default_factory=dict)
    # Layer-wise lr decay for the ViT: the last layer keeps the vision lr, each layer below is multiplied by this
    # factor once more (the patch/position embeddings once more than layer 0). null = off.
    vision_layer_decay: Optional[float] = None
    # No weight decay on embeddings (LLM token embeddings, ViT position embeddings / class token). Biases and
    # norm weights never get weight decay.
    no_decay_embeddings: bool = True
    # torch's fused AdamW kernel: null = use it when every trainable parameter is on a device that supports it.
    fused: Optional[bool] = None
    # warmup_stable_decay: the share of all steps spent decaying at the end.
    decay_ratio: float = 0.1
    # cosine_with_min_lr / warmup_stable_decay: the final lr as a fraction of the peak.
    min_lr_ratio: float = 0.0
    # Extra keyword arguments for the HF scheduler (e.g. {num_cycles: 0.5}); they win over the two above.
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    name: str = MISSING
    # null: train num_train_epochs epochs; a number caps the run at that many optimiser steps (it wins over epochs).
    max_steps: Optional[int] = None
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 1  # samples per device per forward pass
    # The optimiser's batch across all processes, stated once; gradient accumulation is then derived as
    # global / (per_device_train_batch_size x world size) and must divide (internvl_exp/config/batch.py).
    # null: use gradient_accumulation_steps as given.
    global_batch_size: Optional[int] = None
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step
    logging_steps: int = 10  # log loss, lr and throughput every N steps
    save_strategy: str = "no"  # checkpoints during training: no | steps | epoch
    save_steps: int = 500  # checkpoint every N steps (save_strategy=steps)
    save_total_limit: Optional[int] = None  # keep only the N newest checkpoints (null: all)
    dataloader_num_workers: int = 0  # data-loader worker processes (0: in the training process)
    bf16: Optional[bool] = None  # bf16 mixed precision (autocast; DeepSpeed: bf16 weights); null: the model recipe's
    # Accept half-precision weights trained by a torch optimizer without fp32 master weights (warns).
    pure_half_precision: bool = False
    # "auto": CPU when no accelerator is visible.
    device: str = "auto"
    activation_checkpointing: Optional[bool] = None  # null: the model recipe's; recompute each layer in the backward pass: less memory, ~1/3 more compute
    save_final: bool = True  # save the trained model (or adapter) and processor to <run_dir>/final
    # Eval loss on data.eval / data.eval_fraction: no | steps | epoch (HF names); null: steps when there is eval
    # data, else no. With eval data the final model is always evaluated once more at the end (final_eval_loss).
    eval_strategy: Optional[str] = None
    eval_steps: int = 50  # evaluate every N optimiser steps (eval_strategy=steps)
    per_device_eval_batch_size: Optional[int] = None  # null: per_device_train_batch_size
    # At each eval, also generate (greedy) for the first N eval samples: eval_exact_match, eval_relaxed_match.
    eval_generate_samples: int = 0
    # Peak dense TFLOPS of one device, the MFU denominator. null: looked up from the device name
    # (internvl_exp/train/planning/flops.py, bf16 dense tensor-core peaks); no MFU when unknown (e.g. CPU).
    peak_tflops: Optional[float] = None
    # Memory of one device in GiB for the planner's verdict (internvl_exp/train/planning/memory_plan.py). null: the
    # detected GPU's, else the table entry of the assumed device.
    device_memory_gb: Optional[float] = None
    # The model FLOPs utilisation the planner assumes for its step-time estimate (an assumption, not a
    # measurement; bench/gpu.py measures it on a GPU box).
    planner_mfu: float = 0.35
    # The loss from the last hidden states and the LM head in chunks of tokens, never the [tokens x vocab] logits
    # (internvl_exp/train/recipe/chunked_loss.py; InternVL's --use_liger True): auto | true | false. auto: on for every
    # real preset, off for model=tiny.
    chunked_loss: str = "auto"


@dataclass
class PreferenceWeights:
    """Weights of the preference loss terms (objectives/preference_loss.py): sigmoid = DPO, bco_pair = BCO with
    the running-mean shift δ. 0 leaves a term out."""

    sigmoid: float = 0.0  # DPO's -log σ(β·margin) (InternVL's sigmoid_loss_weight; 0.8 in MPO)
    bco_pair: float = 0.0  # BCO-pair with the running-mean shift δ (InternVL's bco_pair_loss_weight; 0.2 in MPO)


@dataclass
class ObjectiveConfig:
    """What the run optimises (docs/preference.md): sft (next-token loss on supervised data), dpo or mpo (pairs
    of a chosen and a rejected answer; data in InternVL's MPO format). The defaults are sft's: the preference
    keys below must stay at them under sft (validated)."""

    name: str = "sft"
    kind: str = "sft"  # sft | dpo | mpo
    beta: float = 0.1  # β: the scale of the implicit reward β·(log π − log π_ref)
    weights: PreferenceWeights = field(default_factory=PreferenceWeights)
    # Weight of the NLL of the chosen answers (MPO's generation loss); null: no NLL term.
    rpo_alpha: Optional[float] = None
    label_smoothing: float = 0.0  # conservative DPO: the preference label is wrong with this probability
    # The NLL's mean: token (InternVL's code: over every supervised chosen token of the micro-batch) or sequence
    # (the paper: mean over pairs of NLL / answer length). They agree at one pair per device.
    nll_normalisation: str = "token"
    # The reference model. null: the starting weights (a frozen copy; with LoRA the base with the adapters
    # disabled, no copy). A path: another checkpoint (either layout) or a run directory (its final/).
    # precomputed: the starting weights' log-probs, computed once before training and kept on disk (no reference
    # in memory while training).
    reference: Optional[str] = None


@dataclass
class WandbConfig:
    project: str = "internvl-exp"  # W&B project
    entity: Optional[str] = None  # W&B team or user (null: your default)
    group: Optional[str] = None  # W&B run group
    tags: list[str] = field(default_factory=list)  # W&B run tags
    job_type: str = "train"  # W&B job type
    mode: str = "offline"  # offline (sync later) | online | disabled


@dataclass
class LoggerConfig:
    name: str = MISSING
    wandb: Optional[WandbConfig] = None


@dataclass
class DistributedConfig:
    """How the training processes start (not Hydra's `hydra/launcher`, which runs the jobs of a sweep):
    single = in the Hydra job; torchrun = the job starts torchrun on internvl_exp.launch.worker; slurm = the job
    submits one SLURM job whose task on each node starts torchrun (or, already inside one, starts it here)."""

    name: str = MISSING
    nproc_per_node: int = 1  # training processes (GPUs) per node
    nnodes: int = 1
    node_rank: int = 0
    rdzv_backend: str = "c10d"
    # HOST:PORT of the rendezvous (node 0); null on one node: localhost on master_port.
    rdzv_endpoint: Optional[str] = None
    rdzv_id: Optional[str] = None
    # null: a free port is picked on this machine (one node only); under slurm: derived from the job id.
    master_port: Optional[int] = None
    # A collective (all-reduce, barrier) that waits longer than this fails, naming the ranks that stopped
    # answering, instead of hanging the job (TrainingArguments.ddp_timeout; launch/worker.py). Seconds.
    timeout_s: int = 1800
    # distributed=slurm (conf/distributed/slurm.yaml; internvl_exp/launch/slurm.py): one SLURM job, one task per
    # node running torchrun; nproc_per_node/nnodes follow gpus_per_node/nodes.
    nodes: Optional[int] = None  # sbatch --nodes (slurm)
    gpus_per_node: Optional[int] = None  # sbatch --gpus-per-node, and the workers per node (slurm)
    partition: Optional[str] = None  # sbatch --partition
    time: Optional[int] = None  # the job's time limit, minutes (sbatch --time)
    account: Optional[str] = None  # sbatch --account
    qos: Optional[str] = None  # sbatch --qos
    constraint: Optional[str] = None  # sbatch --constraint
    cpus_per_task: Optional[int] = None  # sbatch --cpus-per-task (the one task per node)
    mem_gb: Optional[int] = None  # sbatch --mem, per node
    requeue: bool = True  # preempted or out of time: save, then requeue the job (it resumes)
    signal_delay_s: int = 300  # SIGUSR1 this long before the time limit: a step plus a save must fit
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra sbatch options: +distributed.sbatch.mail-type=END
    wait: bool = True  # the Hydra job waits for the SLURM job (needed for a sweep's objective)
    executor: str = "slurm"  # slurm | local (submitit's local executor: this machine, for tests)


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    output_dir: str = MISSING  # runs go to <output_dir>/<experiment_name>/<run_name>/
    cache_dir: str = MISSING  # converted checkpoints and other derived files
    demo_data_dir: str = MISSING  # where the demo datasets are generated
    # Local copies of Hub checkpoints: <models_dir>/<repo-name> or <models_dir>/<org>/<repo-name>.
    models_dir: str = MISSING


@dataclass
class ResolvedConfig:
    """What internvl_exp.config.resolve decided from the rest of the config, once, in the Hydra job (never set by
    hand): config.yaml carries it to every process and tool."""

    world_size: int = 1  # training processes the launch starts (nproc_per_node x nnodes; SLURM: nodes x gpus)
    # Micro-batches per optimiser step: trainer.global_batch_size / (per-device batch x world_size) when the global
    # batch is set, else trainer.gradient_accumulation_steps.
    gradient_accumulation_steps: int = 1
    weights_path: Optional[str] = None  # the checked checkpoint the launch found (models/resolve.py); null: none
    # Where it was found: model.path | HF cache | paths.models_dir | random init; null: not looked up (--cfg job, tools)
    weights_origin: Optional[str] = None
    tokens_per_tile: int = 0  # image tokens per tile: (image_size / patch_size)^2 x downsample_ratio^2
    # Where a value came from when it is not the config groups' own: "recipe <name>" or "override".
    origins: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    freeze: FreezeConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    distributed: DistributedConfig = MISSING
    paths: PathsConfig = MISSING
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # not MISSING: older config.yaml = sft
    experiment_name: str = "default"
    run_name: str = MISSING
    # The sweep's directory name under outputs/<experiment_name>/multirun/ (null for single runs).
    sweep_name: Optional[str] = None
    # The metrics.json key (dotted for nested) a job returns to the sweeper as its objective; auto: final_eval_loss
    # when the run has eval data, else final_loss.
    optimized_metric: str = "auto"
    seed: int = 42  # seeds python, numpy and torch (transformers.set_seed)
    # Re-running a run_name: auto (continue from its newest complete checkpoint; a finished run refuses),
    # true (must find one), false/never (start over in a fresh <run_name>-N directory), or a path to a run
    # directory or checkpoint to continue from (internvl_exp/train/checkpointing/resume.py).
    resume: Any = "auto"
    # Extra secrets: regular expressions whose matches are redacted from everything a run writes, on top of the
    # values of secret-named environment variables (internvl_exp/redact.py; docs/experiments.md).
    secrets: list[str] = field(default_factory=list)
    # Also print the whole resolved config as a tree at the start of a run (it is always in config.yaml; the
    # console shows a short header: internvl_exp/train/reporting/console_header.py).
    print_config: bool = False
    # Filled in by internvl_exp.config.resolve (null until then); not a setting.
    resolved: Optional[ResolvedConfig] = None


def demo_eval_split(meta_path: Optional[str], demo_data_dir: str) -> Optional[str]:
    """The demo's eval split while the training data is the demo's own (a meta JSON inside paths.demo_data_dir),
    else None: own data set through `data.meta_path` never evaluates on the demo (conf/data/demo.yaml)."""
    import os

    if not meta_path:
        return None
    demo, train = os.path.realpath(str(demo_data_dir)), os.path.realpath(str(meta_path))
    split = os.path.join(str(demo_data_dir), "eval", "meta.json")
    if os.path.commonpath([train, demo]) != demo or train == os.path.realpath(split):  # own data, or the split itself
        return None
    return split


def register_configs(project_root: str | None = None) -> None:
    """Register the schema so `conf/config.yaml` can extend it (`defaults: [config_schema, ...]`),
    the `${project_root:}` resolver (the folder of launch.py; the working directory otherwise) and
    `${demo_eval_split:meta_path,demo_data_dir}` (see demo_eval_split)."""
    import os

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    root = os.path.abspath(project_root or os.getcwd())
    OmegaConf.register_new_resolver("project_root", lambda: root, replace=True)
    OmegaConf.register_new_resolver("demo_eval_split", demo_eval_split, replace=True)

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
