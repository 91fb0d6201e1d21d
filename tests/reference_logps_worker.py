"""One rank of the 2-process precompute (tests/test_reference_logps.py): computes the store with every rank, then
asks again with a model that must not run, and writes what it got."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(ref_dir: str, data_dir: str, cache: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from internvl_exp.objectives import reference_logps as rl
    from test_reference_logps import Unusable, dataset_at

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tokenizer = AutoTokenizer.from_pretrained(ref_dir)
    model = AutoModelForImageTextToText.from_pretrained(ref_dir, dtype=torch.float32).eval()
    dataset = dataset_at(Path(data_dir), tokenizer)
    store = rl.precompute(model, dataset, ref_dir, cache, batch_size=2)
    again = rl.precompute(Unusable(), dataset_at(Path(data_dir), tokenizer), ref_dir, cache)  # cached on every rank
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "world": dist.get_world_size(), "lines": store.line.tolist(), "chosen": store.chosen.tolist(),
        "rejected": store.rejected.tolist(), "again_chosen": again.chosen.tolist(), "path": str(again.path)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from internvl_exp.shutdown import finish

    finish(lambda: main(*sys.argv[1:5]))  # as the training workers do: gloo's threads can abort a rank at teardown
