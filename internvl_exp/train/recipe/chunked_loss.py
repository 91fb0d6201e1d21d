"""A linear cross-entropy that never holds the [tokens x vocab] logits: the loss straight from the last hidden
states and the LM head, a chunk of tokens at a time (`trainer.chunked_loss`).

With a Qwen vocabulary (151,674 tokens) the logits of an 8,192-token row are 5 GB in float32, and the plain loss
(train/recipe/loss.py) keeps three tensors that size alive at once (the logits or their float32 upcast, the
log-softmax, the gradient of the logits). Here each chunk of `chunk_rows` tokens is projected, reduced and
dropped:

- `linear_cross_entropy` (the training and eval loss, a scalar): sum_t w_t * CE_t, exactly
  `weighted_token_loss(hidden @ W^T, labels, weight)`. When a gradient is wanted, each chunk's gradients for
  the hidden states and for the head are computed right away in the forward pass (the logits are live there
  anyway) and the backward only scales them by the incoming scalar: three matmuls per chunk, as the plain path.
- `sequence_logps` (per-sequence summed log-probabilities and token counts, for a preference objective): a
  vector output, so the backward recomputes each chunk's logits (four matmuls per chunk).

Only positions that are supervised (label != ignore, weight != 0) are projected at all: a long prompt costs
nothing here. The logits are computed in the dtype the plain path computes them in (the autocast dtype under
torch autocast, else the weight's), reduced in float32; the head's gradient accumulates in that same dtype.

Inside a model, the head must run inside its own module call, so that DeepSpeed ZeRO-3 gathers its sharded
weight for the forward and again (its pre-backward hook on the module's output) before the backward, and so
that DDP and tied embeddings see an ordinary parameter use: `head_computes` swaps the head Linear's forward for
the duration of one model call, and the model's own `self.lm_head(hidden_states)` then returns the loss (the
`logits` field of the output holds it). Generation and every other model call are untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from internvl_exp.config.chunked_loss import chunk_rows_for
from internvl_exp.data.templates import IGNORE_INDEX
from internvl_exp.errors import ConfigError


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # The plain path's logits dtype: autocast's when it is on (it casts both operands of the head), else the
    # weight's (a bf16 model's hidden states are bf16 too).
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return weight.dtype


def _chunks(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """One chunk's logits in the compute dtype, upcast to float32 (a copy only for 16-bit logits)."""
    return F.linear(h, w, b).float()


def _exp_stats_(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In place, logits -> exp(logits - rowmax) (one [chunk x vocab] tensor, no temporaries, unlike logsumexp);
    returns (logsumexp, target logit, the rows' sum of that exp)."""
    picked = logits.gather(1, target[:, None]).squeeze(1)
    top = logits.amax(dim=-1)
    total = logits.sub_(top[:, None]).exp_().sum(dim=-1)
    return top + total.log(), picked, total


def _softmax_minus_onehot_(exp: torch.Tensor, total: torch.Tensor, target: torch.Tensor,
                           scale: torch.Tensor) -> torch.Tensor:
    """In place, from _exp_stats_'s exp and row sums: (softmax - onehot(target)) * scale per row, the gradient
    of scale_t * CE_t."""
    exp.div_(total[:, None])
    exp.scatter_add_(1, target[:, None], torch.full_like(total[:, None], -1.0))
    return exp.mul_(scale[:, None])


def _grad_buffers(h: torch.Tensor, w: torch.Tensor, need_h: bool, need_w: bool, need_b: bool):
    """The hidden-state, head-weight and (float32) bias gradients the chunks accumulate into; None if unneeded."""
    return (torch.empty_like(h) if need_h else None, torch.zeros_like(w) if need_w else None,
            torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None)


def _add_chunk_grads(g: torch.Tensor, s: slice, hc: torch.Tensor, w: torch.Tensor, dtype: torch.dtype,
                     grad_h: torch.Tensor | None, grad_w: torch.Tensor | None, grad_b: torch.Tensor | None) -> None:
    """One chunk's gradient w.r.t. its logits, g [chunk x vocab], into the bias, hidden-state and head gradients."""
    if grad_b is not None:
        grad_b += g.sum(0)
    g = g.to(dtype)
    if grad_h is not None:
        grad_h[s] = g @ w
    if grad_w is not None:
        grad_w.addmm_(g.t(), hc)


class _WeightedCE(torch.autograd.Function):
    """sum_t scale_t * CE(h_t @ W^T + b, target_t); gradients computed in the forward pass (module docstring)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                scale: torch.Tensor, rows: int, dtype: torch.dtype, want_grad: bool) -> torch.Tensor:
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        need_h, need_w = ctx.needs_input_grad[0] and want_grad, ctx.needs_input_grad[1] and want_grad
        need_b = bias is not None and ctx.needs_input_grad[2] and want_grad
        grad_h, grad_w, grad_b = _grad_buffers(h, w, need_h, need_w, need_b)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in _chunks(h.shape[0], rows):
            hc = h[s].to(dtype)
            logits = _chunk_logits(hc, w, b)
            lse, picked, sums = _exp_stats_(logits, target[s])
            total += ((lse - picked) * scale[s]).sum()
            if need_h or need_w or need_b:
                g = _softmax_minus_onehot_(logits, sums, target[s], scale[s])
                _add_chunk_grads(g, s, hc, w, dtype, grad_h, grad_w, grad_b)
            logits = g = None  # both name the chunk's tensor: drop it before the next chunk's is made
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.param_dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.used = False
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if ctx.needs_input_grad[0] and grad_h is None or ctx.needs_input_grad[1] and grad_w is None:
            raise RuntimeError("chunked loss: a gradient is needed that was not computed in the forward pass "
                               "(the loss was computed under no_grad or with want_grad=False)")
        if ctx.used:
            raise RuntimeError("chunked loss: backward through the same loss twice is not supported")
        ctx.used = True
        wdt, bdt = ctx.param_dtypes
        # Scaled in place: the head's gradient is the one accumulator, no second vocab x hidden copy.
        out_h = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
        out_w = grad_w.mul_(grad_out.to(grad_w.dtype)).to(wdt) if grad_w is not None else None
        out_b = grad_b.mul_(grad_out).to(bdt) if grad_b is not None else None
        return out_h, out_w, out_b, None, None, None, None, None


class _TokenLogp(torch.autograd.Function):
    """log p(target_t | h_t) per row; the backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                rows: int, dtype: torch.dtype) -> torch.Tensor:
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lses = torch.empty_like(out)
        for s in _chunks(h.shape[0], rows):
            lse, picked, _ = _exp_stats_(_chunk_logits(h[s].to(dtype), w, b), target[s])
            lses[s] = lse
            out[s] = picked - lse
        ctx.save_for_backward(h, weight, bias, target, lses)
        ctx.rows, ctx.dtype = rows, dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        h, weight, bias, target, lses = ctx.saved_tensors
        dtype, rows = ctx.dtype, ctx.rows
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h, grad_w, grad_b = _grad_buffers(h, w, need_h, need_w, need_b)
        for s in _chunks(h.shape[0], rows):
            hc = h[s].to(dtype)
            # d logp_t / d logits = onehot - softmax: minus the CE gradient, scaled by the incoming gradient.
            exp = _chunk_logits(hc, w, b).sub_(lses[s, None]).exp_()  # the softmax itself
            g = _softmax_minus_onehot_(exp, torch.ones_like(lses[s]), target[s], -grad_out[s].float())
            _add_chunk_grads(g, s, hc, w, dtype, grad_h, grad_w, grad_b)
            exp = g = None  # one chunk's tensor at a time
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None)


def _shifted(hidden: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None):
    """The rows of hidden[:, :-1] that predict a supervised labels[:, 1:] (and where `keep`), their targets and
    their flat positions in the shifted [batch x (seq - 1)] grid."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = labels[:, 1:].reshape(-1).to(hidden.device)
    mask = target != IGNORE_INDEX
    if keep is not None:
        mask &= keep.reshape(-1)
    index = mask.nonzero().squeeze(1)
    return h.index_select(0, index), target.index_select(0, index), index


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         loss_weight: torch.Tensor, bias: torch.Tensor | None = None,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """sum_t w_t * CE_t over shifted positions from the last hidden states [batch, seq, hidden] and the head
    (weight [vocab, hidden], optional bias): `weighted_token_loss(hidden @ weight.T + bias, labels, loss_weight)`
    without the logits. Float32 scalar."""
    w = loss_weight[:, 1:].to(hidden.device, torch.float32)
    h, target, index = _shifted(hidden, labels, w != 0)
    scale = w.reshape(-1).index_select(0, index)
    rows = chunk_rows or chunk_rows_for(weight.shape[0])
    want = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    return _WeightedCE.apply(h, weight, bias, target, scale, rows, _compute_dtype(hidden, weight), want)


def sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   sequence_ids: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                   chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probabilities [sequences] float32, supervised token counts [sequences] int64) over shifted
    positions. `sequence_ids` [batch, seq] numbers the sequences (packed rows: `packed_sequence_ids`); None:
    each row of a padded batch is one sequence. The label at position t + 1 belongs to position t + 1's
    sequence."""
    if sequence_ids is None:
        sequence_ids = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    seq = sequence_ids[:, 1:].reshape(-1).to(hidden.device)
    h, target, index = _shifted(hidden, labels)
    rows = chunk_rows or chunk_rows_for(weight.shape[0])
    logp = _TokenLogp.apply(h, weight, bias, target, rows, _compute_dtype(hidden, weight))
    n = int(sequence_ids.max()) + 1 if sequence_ids.numel() else 0
    owner = seq.index_select(0, index)
    sums = torch.zeros(n, dtype=torch.float32, device=hidden.device).index_add(0, owner, logp)
    counts = torch.bincount(owner, minlength=n)
    return sums, counts


def packed_sequence_ids(sample_lengths: torch.Tensor, total: int) -> torch.Tensor:
    """[1, total] sequence number of every position of a packed row (data/packing.py's `sample_lengths`);
    trailing padding (if any) counts as one more sequence."""
    lengths = sample_lengths.reshape(-1).to(torch.long)
    ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    pad = total - ids.numel()
    if pad > 0:
        ids = torch.cat([ids, torch.full((pad,), len(lengths), dtype=torch.long)])
    return ids[None]


# ---------------------------------------------------------------------------------------------------------
# Inside a model: the head computes the loss in its own module call.


def head_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear module(s) that may serve as the model's output head: the head itself, or under PEFT's
    `modules_to_save` (a trained head next to LoRA) its original and its trained copy, whichever PEFT calls."""
    head = model.get_output_embeddings()
    if isinstance(head, nn.Linear):
        return [head]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    if head is None or hasattr(head, "base_layer") or not linears or not hasattr(head, "modules_to_save"):
        raise ConfigError(
            f"trainer.chunked_loss: the model's output head is a {type(head).__name__}, not a Linear layer (or "
            "PEFT's modules_to_save copy of one); set trainer.chunked_loss=false"
        )
    return linears


@contextlib.contextmanager
def head_computes(model: nn.Module, compute: Callable[[nn.Linear, torch.Tensor], torch.Tensor]) -> Iterator[list[int]]:
    """For one model call: the head's call returns `compute(head, hidden_states)` instead of the logits. Runs
    inside the head module's call, so DeepSpeed ZeRO-3 has gathered `head.weight` (and gathers it again for the
    backward). Yields a one-element list counting the head calls (the caller checks it is exactly one)."""
    calls = [0]
    linears = head_linears(model)

    def patched(module: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(hidden: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return compute(module, hidden)
        return forward

    for module in linears:
        module.forward = patched(module)  # an instance attribute: nn.Module.__call__ looks it up first
    try:
        yield calls
    finally:
        for module in linears:
            del module.forward


def _call(model: nn.Module, unwrapped: nn.Module, inputs: dict[str, Any],
          compute: Callable[[nn.Linear, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, Any]:
    with head_computes(unwrapped, compute) as calls:
        outputs = model(**inputs, use_cache=False)  # a live cache would silently skip the packed mask
    if calls[0] != 1:
        raise RuntimeError(f"chunked loss: the model called its output head {calls[0]} times in one forward; "
                           "expected once (set trainer.chunked_loss=false for this model)")
    result = outputs.logits
    outputs.logits = None  # it held the loss, not logits
    return result, outputs


def model_loss_sum(model: nn.Module, unwrapped: nn.Module, inputs: dict[str, Any], labels: torch.Tensor,
                   loss_weight: torch.Tensor, chunk_rows: int | None = None) -> tuple[torch.Tensor, Any]:
    """(sum_t w_t * CE_t, the model's outputs without logits) for one batch through `model` (DDP, DeepSpeed or
    plain; `unwrapped` is the model inside it). The chunked twin of `weighted_token_loss(model(...).logits, ...)`."""

    def compute(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(hidden, head.weight, labels.to(hidden.device), loss_weight, head.bias, chunk_rows)

    return _call(model, unwrapped, inputs, compute)


def model_sequence_logps(model: nn.Module, unwrapped: nn.Module, inputs: dict[str, Any], labels: torch.Tensor,
                         sequence_ids: torch.Tensor | None = None,
                         chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(per-sequence summed log-probs, supervised token counts, outputs) for one batch through `model`."""
    counts: list[torch.Tensor] = []

    def compute(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        sums, n = sequence_logps(hidden, head.weight, labels.to(hidden.device), sequence_ids, head.bias, chunk_rows)
        counts.append(n)
        return sums

    sums, outputs = _call(model, unwrapped, inputs, compute)
    return sums, counts[0], outputs
