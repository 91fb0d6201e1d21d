"""Eval data and eval during training: the held-out split, the eval loss against an independent oracle (HF's own
per-sample loss), generation scores, and the config rules. The end-to-end runs live in existing tests: the demo
run (tests/test_train_e2e.py), the sweeps (tests/test_sweeps.py) and 2-process DDP/ZeRO (tests/test_distributed.py).
"""

from __future__ import annotations


import pytest
import torch

from conftest import compose
from training_helpers import build, quick_cfg


def _scan(cfg, tokenizer):
    from internvl_exp.data.eval_data import train_and_eval_data

    return train_and_eval_data(cfg, tokenizer, cfg.resolved.tokens_per_tile)


def _lines(dataset, rows) -> set[tuple[str, int]]:
    r = dataset.plan.rows
    return {(dataset.entries[int(r["dataset"][i])].name, int(r["line_no"][i])) for i in rows}


def test_held_out_split_is_by_line_disjoint_and_excluded_before_sampling(tmp_path, demo_dir, tokenizer):
    # data=mix: repeat_time 2 / 1 / 0.5 / 0.5, so the training epoch repeats and subsamples lines.
    cfg = compose(["data=mix", "data.eval_fraction=0.25"], tmp_path, demo_dir)
    train, report, ev, ev_report = _scan(cfg, tokenizer)
    every = _lines(train, range(len(train.plan))) | _lines(ev, range(len(ev.plan)))
    assert len(every) == 4 * 48  # the two plans partition the usable lines
    held = _lines(ev, range(len(ev.plan)))
    assert not held & _lines(train, range(len(train.plan)))
    assert not held & _lines(train, train.epoch_order())  # never in a training epoch, whatever repeat_time draws
    for epoch in (1, 2):
        train.set_epoch(epoch)
        assert not held & _lines(train, train.epoch_order())
    assert 0.15 < len(held) / 192 < 0.35  # about the fraction (binomial, sd ~0.03)
    # Every held-out line exactly once in the eval set (no repeat_time there), in file order.
    assert sorted(ev.epoch_order().tolist()) == list(range(len(ev.plan))) and ev_report.samples == len(held)
    # repeat_time applies to the remaining lines only: shapes (repeat 2) has twice its kept lines per epoch.
    kept_shapes = sum(1 for name, _ in _lines(train, range(len(train.plan))) if name == "shapes")
    assert report.per_dataset["shapes"] == 2 * kept_shapes and report.samples == len(train)

    # Stable: the same split again, and a line's side depends on that line alone (appending lines moves nothing).
    again = _scan(cfg, tokenizer)[2]
    assert _lines(again, range(len(again.plan))) == held
    longer = tmp_path / "longer"
    longer.mkdir()
    text = (demo_dir / "text.jsonl").read_text()
    (longer / "text.jsonl").write_text(text + text)
    cfg2 = compose(["data=mix", "~data.datasets.shapes", "~data.datasets.counting", "~data.datasets.compare",
                    f"data.datasets.text.annotation={longer / 'text.jsonl'}", "data.eval_fraction=0.25"],
                   tmp_path, demo_dir)
    held2 = _lines(_scan(cfg2, tokenizer)[2], range(len(_scan(cfg2, tokenizer)[2].plan)))
    assert {k for k in held2 if k[1] <= 48} == {k for k in held if k[0] == "text"}
    assert any(k[1] > 48 for k in held2)


def _oracle(model, dataset, pad_token_id) -> tuple[float, float]:
    """(mean over every supervised token, mean of per-sample means) from HF's own loss, one sample at a time."""
    from internvl_exp.data.collator import Collator

    collate = Collator(pad_token_id)
    losses, counts = [], []
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = collate([dataset[i]])
            batch.pop("loss_weight")
            out = model(**batch, use_cache=False)
            losses.append(float(out.loss))
            counts.append(int((batch["labels"][:, 1:] != -100).sum()))
    token = sum(l * n for l, n in zip(losses, counts)) / sum(counts)
    return token, sum(losses) / len(losses)


@pytest.mark.parametrize("reduction", ["token", "sample"])
def test_eval_loss_is_the_whole_set_reduction_not_a_mean_of_batch_means(reduction, tmp_path, demo_dir, tokenizer):
    from internvl_exp.data.collator import Collator
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments
    from internvl_exp.train.recipe.trainer import InternVLTrainer

    cfg = quick_cfg([f"data.loss_reduction={reduction}", "trainer.eval_generate_samples=4"], tmp_path, demo_dir)
    family, setup = build(cfg, tokenizer)
    train, _, ev, ev_report = _scan(cfg, tokenizer)
    assert ev_report.samples == 64
    args = training_arguments(cfg, RunDir(tmp_path / "run"))
    args.disable_tqdm = True
    args.per_device_eval_batch_size = 3  # uneven batches of uneven lengths: batch means would differ
    pad = tokenizer.pad_token_id
    trainer = InternVLTrainer(model=setup.model, args=args, train_dataset=train, eval_dataset=ev,
                              data_collator=Collator(pad, reduction), family=family, optimizer_config=cfg.optimizer,
                              eval_collator=Collator(pad, reduction), eval_generate_samples=4,
                              template=cfg.model.template, processing_class=_processor(cfg, tokenizer))
    metrics = trainer.evaluate()
    token, sample = _oracle(setup.model, ev, pad)
    expected = token if reduction == "token" else sample
    assert metrics["eval_samples"] == 64
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(token - sample) > 1e-3  # the two reductions really differ on this set
    # Generation scores over the first 4 samples: fractions, and logged into the history like the loss.
    assert 0.0 <= metrics["eval_exact_match"] <= metrics["eval_relaxed_match"] <= 1.0
    assert any("eval_loss" in h and "eval_relaxed_match" in h for h in trainer.state.log_history)


def _processor(cfg, tokenizer):
    from internvl_exp.models.loading import load_processor

    return load_processor(cfg.model, tokenizer, cfg.resolved.tokens_per_tile)


def test_eval_history_summary_from_the_log():
    from internvl_exp.train.recipe.evaluation import eval_history

    log = [{"loss": 3.0, "step": 10}, {"eval_loss": 2.5, "eval_samples": 8, "step": 10},
           {"eval_loss": 1.5, "step": 20, "eval_samples": 8}, {"eval_loss": 1.75, "step": 25, "eval_samples": 8}]
    out = eval_history(log)
    assert out["eval_loss"] == [{"step": 10, "value": 2.5}, {"step": 20, "value": 1.5}, {"step": 25, "value": 1.75}]
    assert out["best_eval_loss"] == 1.5 and out["final_eval_loss"] == 1.75
    assert eval_history([{"loss": 1.0, "step": 1}]) == {}


@pytest.mark.parametrize("overrides, key", [
    (["data=meta", "data.meta_path=/d/m.json", "trainer.eval_strategy=steps"], "trainer.eval_strategy"),
    (["data=meta", "data.meta_path=/d/m.json", "trainer.eval_generate_samples=4"], "trainer.eval_generate_samples"),
    (["data=meta", "data.meta_path=/d/m.json", "optimized_metric=final_eval_loss"], "optimized_metric"),
    (["data.eval_fraction=0.1"], "data.eval and data.eval_fraction"),
    (["data.eval_fraction=1.0", "data.eval.meta_path=null"], "data.eval_fraction"),
    (["trainer.eval_strategy=sometimes"], "trainer.eval_strategy"),
])
def test_eval_settings_without_eval_data_or_contradictory_are_refused(overrides, key):
    from internvl_exp.config.validate import validate
    from internvl_exp.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(overrides))


def test_defaults_follow_the_eval_data():
    from internvl_exp.config.validate import validate
    from internvl_exp.config.eval_settings import eval_strategy, optimized_metric

    demo = compose()  # the demo evaluates on its eval split
    validate(demo)
    assert (eval_strategy(demo), optimized_metric(demo)) == ("steps", "final_eval_loss")
    own = compose(["data=meta", "data.meta_path=/d/m.json"])
    assert (eval_strategy(own), optimized_metric(own)) == ("no", "final_loss")
    held = compose(["data=meta", "data.meta_path=/d/m.json", "data.eval_fraction=0.05"])
    assert (eval_strategy(held), optimized_metric(held)) == ("steps", "final_eval_loss")
    kept = compose(["optimized_metric=best_loss", "trainer.eval_strategy=no"])  # an explicit choice is kept
    assert (eval_strategy(kept), optimized_metric(kept)) == ("no", "best_loss")


def test_missing_eval_meta_names_the_key(tmp_path, demo_dir, tokenizer):
    from internvl_exp.data.sources import DataConfigError

    cfg = compose([f"data.eval.meta_path={tmp_path / 'nope.json'}"], tmp_path, demo_dir)
    with pytest.raises(DataConfigError, match=r"data\.eval\.meta_path: .*nope\.json does not exist"):
        _scan(cfg, tokenizer)
