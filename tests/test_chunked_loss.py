"""trainer.chunked_loss: the loss from the hidden states and the head, chunk by chunk, against the plain path
(the full logits through train/recipe/loss.py's weighted_token_loss, or log_softmax for per-sequence log-probs) as the
oracle: loss and every gradient, for every reduction, padded and packed batches, a trainable, frozen or
PEFT-wrapped head, tied and untied embeddings, float32 and bf16. The 2-process DDP / ZeRO-3 runs are in
tests/test_chunked_loss_distributed.py."""

from __future__ import annotations

import pytest
import torch

from conftest import compose

# float32: the chunked sums add the same terms in another order.
RTOL32, ATOL32 = 1e-5, 1e-6
# bf16: both paths round the logits and each gradient to bf16, in other places (chunked: the head's gradient once
# per chunk, the backward's scale after the rounding): within 2 bf16 ulps (2 x 2^-7) of the largest entry.
BF16_REL = 2 * 2**-7


def _features(seed: int, n: int, vocab: int = 600) -> list[dict]:
    """Text-only samples of different lengths, each with an unsupervised prompt (ids above the tiny
    tokenizer's special tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(12, 40, (1,), generator=g))
        ids = torch.randint(20, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[: int(torch.randint(2, length // 2, (1,), generator=g))] = -100
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


def _batch(kind: str, reduction: str, pad_id: int = 0) -> dict:
    from internvl_exp.data.collator import Collator
    from internvl_exp.data.packing import PackedCollator

    feats = _features(1, 3)
    if kind == "packed":
        return PackedCollator(reduction)([feats[:2], feats[2:]])
    return Collator(pad_id, reduction)(feats)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=RTOL32, atol=ATOL32, msg=what)
    else:
        err = (a.float() - b.float()).abs().max().item()
        assert err <= BF16_REL * b.float().abs().max().item() + 1e-6, (what, err, b.float().abs().max().item())


# ----------------------------------------------------------------------------------------------- functions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_linear_cross_entropy_equals_the_full_logits_loss(dtype, kind, reduction):
    from internvl_exp.train.recipe.chunked_loss import linear_cross_entropy
    from internvl_exp.train.recipe.loss import weighted_token_loss

    batch = _batch(kind, reduction)
    labels, weight = batch["labels"], batch["loss_weight"]
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(*labels.shape, 32, generator=g).to(dtype).requires_grad_()
    head = (torch.randn(600, 32, generator=g) * 0.2).to(dtype).requires_grad_()
    bias = (torch.randn(600, generator=g) * 0.1).to(dtype).requires_grad_()

    plain = weighted_token_loss(torch.nn.functional.linear(hidden, head, bias), labels, weight)
    expected = [x.detach().clone() for x in (plain, *torch.autograd.grad(plain * 0.7, (hidden, head, bias)))]
    chunked = linear_cross_entropy(hidden, head, labels, weight, bias, chunk_rows=7)  # several chunks
    got = [chunked.detach(), *torch.autograd.grad(chunked * 0.7, (hidden, head, bias))]
    for name, a, b in zip(("loss", "hidden", "head", "bias"), got, expected):
        assert a.dtype == b.dtype, name
        _close(a, b, dtype, name)


def test_linear_cross_entropy_without_gradients_and_with_nothing_supervised():
    from internvl_exp.train.recipe.chunked_loss import linear_cross_entropy
    from internvl_exp.train.recipe.loss import weighted_token_loss

    batch = _batch("padded", "token")
    hidden, head = torch.randn(*batch["labels"].shape, 8), torch.randn(600, 8, requires_grad=True)
    with torch.no_grad():  # eval: the loss alone
        plain = weighted_token_loss(hidden @ head.T, batch["labels"], batch["loss_weight"])
        torch.testing.assert_close(linear_cross_entropy(hidden, head, batch["labels"], batch["loss_weight"]), plain)
    # A batch with no supervised token (an eval padding item) still reaches the head: zero loss, zero gradient.
    none = torch.full_like(batch["labels"], -100)
    loss = linear_cross_entropy(hidden, head, none, torch.zeros_like(batch["loss_weight"]))
    loss.backward()
    assert loss.item() == 0.0 and head.grad is not None and not head.grad.any()


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_sequence_logps_equal_log_softmax_sums(kind):
    from internvl_exp.train.recipe.chunked_loss import packed_sequence_ids, sequence_logps

    batch = _batch(kind, "token")
    labels = batch["labels"]
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(*labels.shape, 16, generator=g, requires_grad=True)
    head = (torch.randn(600, 16, generator=g) * 0.3).requires_grad_()
    ids = packed_sequence_ids(batch["sample_lengths"], labels.shape[1]) if kind == "packed" else None
    sums, counts = sequence_logps(hidden, head, labels, ids, chunk_rows=5)

    # Oracle: log_softmax of the full logits, the shifted targets, summed per sequence by a Python loop.
    logp = torch.log_softmax(hidden @ head.T, dim=-1)[:, :-1]
    target = labels[:, 1:]
    token = logp.gather(2, target.clamp_min(0)[..., None]).squeeze(-1) * (target != -100)
    if kind == "packed":
        bounds = torch.cumsum(batch["sample_lengths"], 0).tolist()
        starts = [0] + bounds[:-1]
        # position t (t >= 1) belongs to the sample holding it; the shifted grid's column t - 1 predicts it
        expected = torch.stack([token[0, max(s - 1, 0):e - 1].sum() for s, e in zip(starts, bounds)])
        n = torch.tensor([int((labels[0, s:e] != -100).sum()) for s, e in zip(starts, bounds)])
    else:
        expected, n = token.sum(1), (target != -100).sum(1)
    torch.testing.assert_close(sums, expected)
    assert counts.tolist() == n.tolist()
    coef = torch.linspace(-1.0, 2.0, len(sums))  # a preference-style signed combination
    got = torch.autograd.grad((sums * coef).sum(), (hidden, head))
    want = torch.autograd.grad((expected * coef).sum(), (hidden, head))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=RTOL32, atol=ATOL32)


def test_use_chunked_loss_resolution():
    from internvl_exp.errors import ConfigError
    from internvl_exp.config.chunked_loss import use_chunked_loss

    assert use_chunked_loss("auto", "internvl3_5_8b") and not use_chunked_loss("auto", "tiny")
    assert use_chunked_loss(True, "tiny") and use_chunked_loss("true", "tiny")
    assert not use_chunked_loss("False", "internvl3_78b")
    with pytest.raises(ConfigError, match="trainer.chunked_loss: 'yes' is not one of auto, true, false"):
        use_chunked_loss("yes", "tiny")


# ----------------------------------------------------------------------------------------------- in a model

HEADS = {
    "full": ["freeze=full"],
    "frozen_head": ["freeze=full", "freeze.parts.lm_head=frozen"],
    "lora_frozen_head": ["freeze=lora_llm"],
    "lora_full_head": ["freeze=lora_llm", "freeze.parts.lm_head=full"],  # PEFT modules_to_save wraps the head
    "tied_full": ["freeze=full", "model.arch.text.tie_word_embeddings=true"],
    "tied_lora": ["freeze=lora_llm", "model.arch.text.tie_word_embeddings=true"],
}


def _model(overrides: list[str], tokenizer):
    from internvl_exp.models.loading import load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.tuning.freeze import ties_lm_head
    from internvl_exp.train.tuning.trainable import make_trainable

    cfg = compose(overrides + ["freeze.lora.dropout=0.0"])
    torch.manual_seed(0)
    model = load_model(cfg.model, tokenizer)
    assert ties_lm_head(model) == ("model.arch.text.tie_word_embeddings=true" in overrides)
    return make_trainable(model, get_family(cfg.model.family), cfg.freeze, cfg.model).model


def _loss_and_grads(model, batch, chunked: bool):
    from internvl_exp.train.recipe.chunked_loss import model_loss_sum
    from internvl_exp.train.recipe.loss import weighted_token_loss

    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weight", "sample_lengths")}
    model.zero_grad(set_to_none=True)
    if chunked:
        total, outputs = model_loss_sum(model, model, inputs, batch["labels"], batch["loss_weight"])
        assert outputs.logits is None
    else:
        total = weighted_token_loss(model(**inputs, use_cache=False).logits, batch["labels"], batch["loss_weight"])
    (total / batch["loss_weight"].sum()).backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head", list(HEADS))
def test_model_loss_and_gradients_equal_the_plain_path(head, tokenizer):
    model = _model(HEADS[head], tokenizer)
    head_trains = any(p.requires_grad for p in model.get_output_embeddings().parameters())
    assert head_trains == (head in ("full", "lora_full_head", "tied_full"))
    for kind, reduction in (("padded", "square"), ("packed", "sample")):
        batch = _batch(kind, reduction, tokenizer.pad_token_id)
        plain, plain_grads = _loss_and_grads(model, batch, chunked=False)
        chunked, chunked_grads = _loss_and_grads(model, batch, chunked=True)
        torch.testing.assert_close(chunked, plain, rtol=RTOL32, atol=0)
        assert set(chunked_grads) == set(plain_grads) and plain_grads
        for name, g in plain_grads.items():
            torch.testing.assert_close(chunked_grads[name], g, rtol=RTOL32, atol=ATOL32, msg=name)
    # The patched head is restored: a plain call gives logits again.
    out = model(input_ids=batch["input_ids"], use_cache=False)
    assert out.logits.shape == (*batch["input_ids"].shape, 671)  # the tiny vocabulary


@pytest.mark.parametrize("setting", ["bf16_weights", "autocast"])
def test_model_bf16_within_tolerance(setting, tokenizer):
    model = _model(["freeze=full"], tokenizer)
    batch = _batch("padded", "token", tokenizer.pad_token_id)
    if setting == "bf16_weights":
        model.to(torch.bfloat16)
        context = torch.autocast("cpu", enabled=False)
    else:
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    with context:
        plain, plain_grads = _loss_and_grads(model, batch, chunked=False)
        chunked, chunked_grads = _loss_and_grads(model, batch, chunked=True)
    _close(chunked, plain, torch.bfloat16, "loss")
    for name in ("lm_head.weight", "model.language_model.norm.weight", "model.language_model.embed_tokens.weight"):
        _close(chunked_grads[name], plain_grads[name], torch.bfloat16, name)


# ----------------------------------------------------------------------------------------------- the Trainer


def _trained(chunked: bool, cfg, tokenizer, train, ev, tmp_path):
    from internvl_exp.data.collator import Collator
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments
    from internvl_exp.train.recipe.trainer import InternVLTrainer
    from training_helpers import build

    family, setup = build(cfg, tokenizer)
    args = training_arguments(cfg, RunDir(tmp_path / f"run{int(chunked)}"))
    args.disable_tqdm = True
    collator = Collator(tokenizer.pad_token_id, cfg.data.loss_reduction)
    trainer = InternVLTrainer(model=setup.model, args=args, train_dataset=train, eval_dataset=ev,
                              data_collator=collator, eval_collator=collator, family=family,
                              optimizer_config=cfg.optimizer, chunked_loss=chunked)
    trainer.train()
    return trainer, trainer.evaluate()["eval_loss"]


def test_trainer_steps_and_eval_loss_equal_the_plain_path(tmp_path, demo_dir, tokenizer):
    from internvl_exp.data.eval_data import train_and_eval_data
    from training_helpers import quick_cfg

    cfg = quick_cfg(["data.loss_reduction=square", "freeze=full"], tmp_path, demo_dir)
    train, _, ev, _ = train_and_eval_data(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    plain, plain_eval = _trained(False, cfg, tokenizer, train, ev, tmp_path)
    chunked, chunked_eval = _trained(True, cfg, tokenizer, train, ev, tmp_path)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, chunked)]
    # Step 2's loss and the eval loss follow the AdamW updates of the chunked gradients. (Not the weights
    # element by element: AdamW divides each step by the gradient's size, so an element whose gradient is ~0
    # turns float32 noise into a visible step.)
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=RTOL32)
    assert chunked_eval == pytest.approx(plain_eval, rel=RTOL32)


# ----------------------------------------------------------------------------------------------- the planner


@pytest.mark.parametrize("chunked", [False, True])
def test_planner_loss_term_matches_memtracker(chunked):
    """The planner's logits term (memory_plan.activation_bytes) against the peak of live tensor bytes that torch's
    MemTracker measures for one loss + backward at vocab 151,674, less the inputs and their gradients."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from internvl_exp.train.recipe.chunked_loss import linear_cross_entropy
    from internvl_exp.train.recipe.loss import weighted_token_loss
    from internvl_exp.train.planning.memory_plan import ConfigView, activation_bytes

    vocab, hidden, tokens = 151674, 32, 400
    tracker = MemTracker()
    with tracker:
        h = torch.randn(1, tokens, hidden, requires_grad=True)
        head = torch.randn(vocab, hidden, requires_grad=True)
        labels, weight = torch.randint(0, vocab, (1, tokens)), torch.ones(1, tokens)
        loss = (linear_cross_entropy(h, head, labels, weight) if chunked
                else weighted_token_loss(h @ head.T, labels, weight))
        loss.backward()
        del h, head, labels, weight, loss
    measured = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - 2 * 4 * (tokens + vocab) * hidden
    config = ConfigView({"downsample_ratio": 0.5, "text": {"hidden_size": hidden, "vocab_size": vocab},
                         "vision": {"image_size": 448, "patch_size": 14}})
    flows = {"vision": False, "projector": False, "llm": False, "lm_head": True}
    predicted = activation_bytes(config, flows, 1, tokens, 0, False, 4, False, 0, chunked=chunked, head_trains=True,
                                 weight_bytes=4)["logits"]
    assert 0.85 < predicted / measured < 1.15, (predicted, measured)
    if chunked:  # one 128 MiB chunk, not the 3 x 400 x vocab x 4 bytes of the plain path
        assert measured < 0.2 * 3 * tokens * vocab * 4


def test_plan_names_the_loss(tmp_path, demo_dir):
    from internvl_exp.train.planning.memory_plan import format_plan, plan_memory

    plans = {setting: plan_memory(compose([f"trainer.chunked_loss={setting}", "model.arch.text.vocab_size=151674"],
                                          tmp_path, demo_dir), seq_len=4096, tiles=0, gpu="H100")
             for setting in ("true", "false")}
    assert plans["true"].loss == "chunked" and plans["false"].loss == "full logits"
    assert plans["true"].activation_detail["logits"] < plans["false"].activation_detail["logits"] / 20
    assert "chunked loss (trainer.chunked_loss)" in format_plan(plans["true"])
    assert "full logits" in format_plan(plans["false"])
