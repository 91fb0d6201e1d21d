"""The minimal hand-written HF `Trainer` script bench/overhead.py compares launch.py with.

The same model (the tiny preset, freeze=vision), the same dataset and collator (the project's own, so that
only the framework around the Trainer differs), the same batch, steps, lr, schedule and seeds, given to a plain
`transformers.Trainer` with no callbacks of ours. Flags add our pieces one at a time to see where any
overhead of launch.py goes:

    --same-graph   keep_vision_in_graph (text-only batches still run the vision path)
    --callbacks    our throughput/MFU and loss-window callbacks
    --ours         our InternVLTrainer (parameter groups, fused AdamW, scheduler) instead of transformers.Trainer

    python bench/minimal_trainer.py OUT_DIR [overrides ...] [--same-graph] [--callbacks] [--ours]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> None:
    flags = {a for a in argv if a.startswith("--")}
    out, *overrides = [a for a in argv if not a.startswith("--")]

    from transformers import Trainer, TrainingArguments, set_seed

    from internvl_exp.data.from_config import build_from_config, tokens_per_tile
    from internvl_exp.data.packing import training_data
    from internvl_exp.launch.precheck import compose_config
    from internvl_exp.models.loading import load_model, load_tokenizer
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.tuning.trainable import make_trainable

    cfg = compose_config(overrides, ROOT / "conf")
    set_seed(cfg.seed)
    t = cfg.trainer
    tokenizer = load_tokenizer(cfg.model, None)
    dataset, _ = build_from_config(cfg, tokenizer, tokens_per_tile(cfg.model))
    family = get_family(cfg.model.family)
    model = make_trainable(load_model(cfg.model, tokenizer, None), family, cfg.freeze, cfg.model).model
    args = TrainingArguments(
        output_dir=out, seed=cfg.seed, data_seed=cfg.data.seed, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size, learning_rate=cfg.optimizer.lr,
        lr_scheduler_type="cosine", logging_steps=t.logging_steps, logging_first_step=True, save_strategy="no",
        use_cpu=True, report_to=[], remove_unused_columns=False,
    )
    train_dataset, collator = training_data(cfg, dataset, args)
    if "--same-graph" in flags:
        from internvl_exp.train.recipe.same_graph import keep_vision_in_graph

        keep_vision_in_graph(model)
    if "--ours" in flags:
        from internvl_exp.train.recipe.trainer import InternVLTrainer

        trainer = InternVLTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                                  family=family, optimizer_config=cfg.optimizer, group_by_length=False)
    else:
        trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator)
    if "--callbacks" in flags:
        from internvl_exp.train.recipe.callbacks import ThroughputCallback, install_first
        from internvl_exp.train.planning.flops import FlopsModel
        from internvl_exp.train.reporting.loss_summary import LossWindows

        install_first(trainer, ThroughputCallback(FlopsModel.from_model(model, family, tokens_per_tile(cfg.model)),
                                                  t.peak_tflops, 1))
        trainer.add_callback(LossWindows())
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1:])
