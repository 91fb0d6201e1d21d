"""One rank of the 2-process packed run (tests/test_packing_ddp.py): trains, then writes its own step count."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import compose  # noqa: E402


def main(tmp: str, demo: str) -> None:
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.run import run

    import internvl_exp.train.recipe.run as run_mod

    seen = {}
    original = run_mod.InternVLTrainer

    class Counting(original):  # the real Trainer; only records what this rank did
        def training_step(self, model, inputs, *a, **k):
            seen.setdefault("samples", 0)
            seen["samples"] += len(inputs["sample_lengths"])
            seen.setdefault("ids", []).append(int(inputs["input_ids"].sum()))
            return super().training_step(model, inputs, *a, **k)

    run_mod.InternVLTrainer = Counting
    cfg = compose(["run_name=ddp", "data=mix", "data.packing.enabled=true", "data.packing.max_packed_tokens=512",
                   "trainer.per_device_train_batch_size=1", "trainer.num_train_epochs=1", "trainer.save_final=false",
                   "trainer.logging_steps=1", "trainer.device=cpu"], Path(tmp), Path(demo))
    metrics = run(cfg, RunDir(Path(tmp) / "run"))
    rank = int(os.environ["RANK"])
    out = {"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "steps": metrics["steps"], **seen}
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    from internvl_exp.shutdown import finish

    finish(lambda: main(sys.argv[1], sys.argv[2]))  # as the training workers do: gloo can abort a rank at teardown
