"""One scoring pass over preference pairs, and a store of its results for training (`objective.reference:
precomputed`).

`score` computes, for every scanned pair of a `PreferenceDataset` (each jsonl line once, whatever its repeat_time),
the summed log-probs and supervised token counts of the chosen and the rejected answer under a model (and, with
`reference=`, under a second one on the same batch). Under several processes each rank scores a contiguous share
of the pairs and rank 0 gathers them in data order (`score_distributed`). `tools/score_pairs.py` writes the result
as jsonl; `ReferenceLogps` keeps the reference's log-probs as arrays on disk so training can look them up by the
batch's `pair_ids` (dataset index, 1-based jsonl line) instead of holding a reference model in memory.

The store is keyed (`reference_key`) by the reference weights (path and the stat identity of its files), the data
plan (annotation files, tokenizer, template, tile settings, max_seq_length, the scanned lines) and this code, so a
re-run with the same inputs reuses it and any change computes it again. Images are scored without data_augment's
random JPEG degradation (a per-epoch draw cannot be precomputed); the key records which datasets had it on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from internvl_exp import dist as ranks
from internvl_exp.code_version import source_digest
from internvl_exp.data.prescan import tokenizer_fingerprint
from internvl_exp.errors import UserError

STORE_DIR = "reference_logps"  # under paths.cache_dir
FORMAT = 1


class ReferenceStoreError(UserError):
    """A precomputed reference file that is missing, damaged, or lacks a pair the training batch needs."""


# --- the scoring pass ---------------------------------------------------------------------------------


def _item(dataset: Any, row: int) -> dict[str, Any]:
    """The pair of scan row `row`, images without data_augment (the score is a property of the line)."""
    line = dataset.raw_line(row)
    entry = dataset.entries[int(dataset.rows["dataset"][row])]
    if entry.data_augment:
        entry = replace(entry, data_augment=False)
    encoder = dataset.encoder
    return encoder.load(entry, encoder.plan(entry, line.text))


def _to_device(batch: dict[str, Any], model: Any) -> dict[str, Any]:
    import torch

    param = next(model.parameters())
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(param.device, dtype=param.dtype if v.is_floating_point() else v.dtype)
        out[k] = v
    return out


def score(model: Any, dataset: Any, batch_size: int = 4, reference: Any | None = None,
          rows: Sequence[int] | np.ndarray | None = None, progress: Callable[[int], None] | None = None,
          encode_images_once: bool = True, forwards: int | None = None,
          logps: Callable[[Any, dict[str, Any]], Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Log-probs of scan rows `rows` (default: all) of `dataset` (a PreferenceDataset), in the order given.

    Returns arrays: row, dataset, line, chosen_logp, rejected_logp (float32), chosen_tokens, rejected_tokens, and
    with `reference` reference_chosen_logp, reference_rejected_logp. Pairs are batched by length (less padding;
    padding does not change a pair's log-probs) and the results put back in `rows` order. A pair whose line or
    images changed since the scan raises under data.on_error=strict and gets NaN log-probs under skip.
    `progress(n)` is called after each batch with the pairs done.

    `forwards`: run exactly this many forwards (at least the batches needed), so every rank of a sharded model
    (ZeRO-3, whose forward gathers weights collectively) runs as many as the others: a rank with fewer pairs, or a
    batch whose pairs all failed to load, runs a filler batch (the dataset's first pair) whose result is dropped.

    `logps(model, batch)`: how a batch is scored (default `pair_logps`); training passes its own reference forward
    (train/recipe/reference.py) so the stored values are those the live reference would give.
    """
    import torch

    from internvl_exp.data.preference import PairSkip, PreferenceDataError, collate_pairs
    from internvl_exp.objectives.sequence_logps import pair_logps

    rows = np.arange(len(dataset.rows["dataset"]), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    n = len(rows)
    out: dict[str, np.ndarray] = {
        "row": rows.copy(),
        "dataset": dataset.rows["dataset"][rows].astype(np.int64),
        "line": dataset.rows["line_no"][rows].astype(np.int64),
    }
    names = ["", "reference_"] if reference is not None else [""]
    for prefix in names:
        for side in ("chosen", "rejected"):
            out[f"{prefix}{side}_logp"] = np.full(n, np.nan, dtype=np.float32)
    for side in ("chosen", "rejected"):
        out[f"{side}_tokens"] = np.zeros(n, dtype=np.int64)
    longest = np.maximum(dataset.rows["chosen_length"], dataset.rows["rejected_length"])[rows]
    order = np.argsort(-longest, kind="stable")  # longest first: the first batch shows the peak memory
    pad = dataset.encoder.tokenizer.pad_token_id
    models = [(p, m) for p, m in zip(names, [model, reference])]
    batches = -(-n // batch_size)
    total = max(batches, forwards or 0)
    filler: list[dict[str, Any]] = []
    with torch.no_grad():
        for k in range(total):
            start = k * batch_size
            positions, items = [], []
            for pos in order[start:start + batch_size]:
                row = int(rows[pos])
                try:
                    items.append(_item(dataset, row))
                    positions.append(int(pos))
                except (PairSkip, OSError, UnicodeDecodeError) as e:
                    where = f"{dataset.entries[int(out['dataset'][pos])].annotation}:{int(out['line'][pos])}"
                    if dataset.on_error == "strict":
                        raise PreferenceDataError(f"{where}: {e} (changed since the pre-flight scan; "
                                                  "data.on_error=skip skips such pairs)") from e
                    dataset.load_failures.add(getattr(e, "reason", "corrupt_media"))
            if not items and forwards is None:
                continue  # nothing loaded, and no other rank waits for this forward
            if not items and not filler:
                filler.append(_item(dataset, 0))
            batch = collate_pairs(items or filler, pad)
            idx = np.asarray(positions, dtype=np.int64)
            for prefix, m in models:
                on_device = _to_device(batch, m)
                result = (logps(m, on_device) if logps is not None
                          else pair_logps(m, on_device, encode_images_once=encode_images_once))
                if not items:
                    continue  # a filler forward: kept in step with the other ranks, its result dropped
                for side in ("chosen", "rejected"):
                    out[f"{prefix}{side}_logp"][idx] = result[f"{side}_logps"].float().cpu().numpy()
                    if not prefix:
                        out[f"{side}_tokens"][idx] = result[f"{side}_counts"].cpu().numpy()
            if progress is not None and start < n:
                progress(len(order[start:start + batch_size]))
    return out


def rank_share(n: int, rank: int, world: int) -> np.ndarray:
    """The contiguous block of rows [0, n) that `rank` of `world` scores (sizes differ by at most one)."""
    lo, hi = (n * rank) // world, (n * (rank + 1)) // world
    return np.arange(lo, hi, dtype=np.int64)


def score_distributed(model: Any, dataset: Any, batch_size: int = 4, reference: Any | None = None,
                      progress: Callable[[int], None] | None = None,
                      logps: Callable[[Any, dict[str, Any]], Mapping[str, Any]] | None = None
                      ) -> dict[str, np.ndarray] | None:
    """`score` over every scan row, split across the initialised process group (if any): each rank scores its
    `rank_share` and rank 0 returns all rows in data order; the other ranks return None. Every rank must call it
    (a collective)."""
    group = ranks.process_group()
    world, rank = (group.get_world_size(), group.get_rank()) if group is not None else (1, 0)
    n = len(dataset.rows["dataset"])
    # Every rank runs as many forwards as the largest share needs (a sharded model's forward is a collective).
    largest_share = math.ceil(n / world)
    forwards = math.ceil(largest_share / batch_size) if group is not None else None
    local = score(model, dataset, batch_size, reference, rank_share(n, rank, world), progress, forwards=forwards,
                  logps=logps)
    if group is None:
        return local
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    group.gather_object(local, gathered, dst=0)
    if rank != 0:
        return None
    return {k: np.concatenate([g[k] for g in gathered]) for k in local}


# --- the key -----------------------------------------------------------------------------------------------------


def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def weights_fingerprint(directory: str | Path) -> dict[str, Any]:
    """The identity of a checkpoint directory: its resolved path and the size and mtime of every file in it (a
    LoRA run's final/ includes its base/). Stat, not content: hashing 150 GB of weights per run is not worth it,
    and a rewritten file gets a new mtime."""
    root = Path(directory).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {"path": str(root), "files": [[str(p.relative_to(root)), *_stat(p)] for p in files]}


def _code_version() -> str:
    """Editing any module that decides a pair's tokens, pixels or log-probs invalidates stored results."""
    return source_digest(*(f"internvl_exp.data.{m}" for m in ("image_header", "images", "preference", "templates",
                                                               "tiling")), "internvl_exp.objectives.sequence_logps",
                         __name__)


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """The data plan of a PreferenceDataset as far as per-pair log-probs depend on it (repeat_time, seed and
    on_error decide which pairs an epoch serves, not their log-probs; the scanned lines are in `lines`)."""
    enc = dataset.encoder
    rows = dataset.rows
    lines = hashlib.blake2b(np.ascontiguousarray(rows["dataset"]).tobytes()
                            + np.ascontiguousarray(rows["line_no"]).tobytes(), digest_size=16).hexdigest()
    return {
        "tokenizer": tokenizer_fingerprint(enc.tokenizer),
        "template": enc.template,
        "system_message": enc.system_message,
        "max_seq_length": enc.max_seq_length,
        "settings": {k: v for k, v in asdict(enc.settings).items()},
        "datasets": [{"name": e.name, "annotation": str(Path(e.annotation).resolve()), "stat": _stat(Path(e.annotation)),
                      "root": str(Path(e.root).resolve()), "max_dynamic_patch": e.max_dynamic_patch,
                      "data_augment_ignored": bool(e.data_augment)} for e in dataset.entries],
        "pairs": int(len(rows["dataset"])),
        "lines": lines,
    }


def reference_key(weights_dir: str | Path, dataset: Any, dtype: str, **extra: Any) -> dict[str, Any]:
    """Everything the stored reference log-probs depend on; `extra` for the caller's own settings (e.g. how
    images are encoded). Its digest names the store's directory."""
    return {"format": FORMAT, "code": _code_version(), "weights": weights_fingerprint(weights_dir), "dtype": str(dtype),
            "data": data_fingerprint(dataset), **extra}


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


# --- the store ---------------------------------------------------------------------------------------------------


@dataclass
class ReferenceLogps:
    """Reference log-probs per pair, looked up by (dataset index, 1-based line)."""

    key: dict[str, Any]
    dataset: np.ndarray  # int64 [N]
    line: np.ndarray  # int64 [N]
    chosen: np.ndarray  # float32 [N]
    rejected: np.ndarray  # float32 [N]
    path: Path | None = None

    def __post_init__(self) -> None:
        codes = (self.dataset.astype(np.int64) << 32) | self.line.astype(np.int64)
        self._order = np.argsort(codes, kind="stable")
        self._codes = codes[self._order]

    def __len__(self) -> int:
        return len(self.dataset)

    def lookup(self, pair_ids: Any, device: Any = None) -> tuple[Any, Any]:
        """(reference chosen, reference rejected) float32 tensors [B] for `pair_ids` (long [B, 2]: dataset index,
        line), on `device` (default: pair_ids'). A pair that is not stored is a ReferenceStoreError."""
        import torch

        ids = torch.as_tensor(pair_ids).detach().cpu().numpy().astype(np.int64).reshape(-1, 2)
        codes = (ids[:, 0] << 32) | ids[:, 1]
        at = np.clip(np.searchsorted(self._codes, codes), 0, max(len(self._codes) - 1, 0))
        found = (self._codes[at] == codes) if len(self._codes) else np.zeros(len(codes), bool)
        if not found.all():
            d, line = ids[int(np.argmin(found))]
            names = [ds["name"] for ds in self.key.get("data", {}).get("datasets", [])]
            name = f" ({names[d]!r})" if 0 <= d < len(names) else ""
            raise ReferenceStoreError(
                f"pair dataset {d}{name} line {line} is not in the precomputed reference log-probs "
                f"{self.path or '(in memory)'}; they were computed for other data: delete the file or point "
                "objective.reference at the model to compute them again")
        rows = self._order[at]
        target = device if device is not None else getattr(pair_ids, "device", None)
        return (torch.from_numpy(self.chosen[rows]).to(target), torch.from_numpy(self.rejected[rows]).to(target))

    def save(self, directory: str | Path) -> Path:
        """Write `directory` (logps.npz + key.json) atomically: a complete directory or none (main process only)."""
        final = Path(directory)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{final.name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        with open(tmp / "logps.npz", "wb") as f:
            np.savez(f, dataset=self.dataset.astype(np.int64), line=self.line.astype(np.int64),
                     chosen=self.chosen.astype(np.float32), rejected=self.rejected.astype(np.float32))
            f.flush()
            os.fsync(f.fileno())
        (tmp / "key.json").write_text(json.dumps(self.key, indent=1, sort_keys=True) + "\n")
        if final.exists():  # the same key computed again (or by a concurrent run): the newer one wins
            shutil.rmtree(final)
        os.rename(tmp, final)
        self.path = final
        return final


def load(path: str | Path) -> ReferenceLogps:
    """A store written by `ReferenceLogps.save` (its directory, or the key.json / logps.npz in it)."""
    p = Path(path)
    directory = p.parent if p.name in ("key.json", "logps.npz") else p
    try:
        key = json.loads((directory / "key.json").read_text())
        with np.load(directory / "logps.npz") as z:
            arrays = {k: z[k] for k in ("dataset", "line", "chosen", "rejected")}
    except FileNotFoundError as e:
        raise ReferenceStoreError(f"{directory}: not a precomputed reference store ({Path(e.filename).name} "
                                  "missing); compute it again with the reference model") from None
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ReferenceStoreError(f"{directory}: damaged precomputed reference store ({e}); delete it to compute it "
                                  "again") from None
    n = len(arrays["dataset"])
    if any(len(a) != n for a in arrays.values()) or key.get("format") != FORMAT:
        raise ReferenceStoreError(f"{directory}: inconsistent precomputed reference store (array lengths or format "
                                  f"{key.get('format')} != {FORMAT}); delete it to compute it again")
    return ReferenceLogps(key, arrays["dataset"], arrays["line"], arrays["chosen"], arrays["rejected"], directory)


def store_path(cache_dir: str | Path, key: Mapping[str, Any]) -> Path:
    return Path(cache_dir) / STORE_DIR / key_digest(key)


def cached(cache_dir: str | Path, key: Mapping[str, Any]) -> ReferenceLogps | None:
    """The store for `key` under `cache_dir` when one was written, else None (a different key never matches)."""
    path = store_path(cache_dir, key)
    if not (path / "key.json").is_file():
        return None
    store = load(path)
    return store if store.key == json.loads(json.dumps(dict(key))) else None


def from_scores(scores: Mapping[str, np.ndarray], key: dict[str, Any], prefix: str = "") -> ReferenceLogps:
    """A store from `score`'s arrays: the model's log-probs (prefix "") or the reference's ("reference_"). Pairs
    that failed to load (NaN) are left out."""
    ok = ~(np.isnan(scores[f"{prefix}chosen_logp"]) | np.isnan(scores[f"{prefix}rejected_logp"]))
    return ReferenceLogps(key, scores["dataset"][ok], scores["line"][ok], scores[f"{prefix}chosen_logp"][ok],
                          scores[f"{prefix}rejected_logp"][ok])


def stored_everywhere(dataset: Any, weights_dir: str | Path, cache_dir: str | Path, dtype: str,
                      **key_extra: Any) -> ReferenceLogps | None:
    """The store of this key when every rank finds it, else None on every rank (a collective: a rank that saw the
    store while another did not would leave the others waiting in the pass that computes it)."""
    return _found_everywhere(cache_dir, reference_key(weights_dir, dataset, dtype, **key_extra))


def _found_everywhere(cache_dir: str | Path, key: Mapping[str, Any]) -> ReferenceLogps | None:
    found = cached(cache_dir, key)
    group = ranks.process_group()
    have = [found is not None]
    if group is not None:
        seen: list[Any] = [None] * group.get_world_size()
        group.all_gather_object(seen, have[0])
        have = seen
    return found if all(have) else None


def precompute(reference: Any, dataset: Any, weights_dir: str | Path, cache_dir: str | Path, batch_size: int = 4,
               progress: Callable[[int], None] | None = None,
               logps: Callable[[Any, dict[str, Any]], Mapping[str, Any]] | None = None, dtype: str | None = None,
               **key_extra: Any) -> ReferenceLogps:
    """The reference log-probs of every pair of `dataset`: reused from `cache_dir` when the key matches, else
    computed by all ranks (`score_distributed`), written by rank 0 and sent to every rank. Every rank must
    call it (a collective)."""
    dtype = dtype or str(next(reference.parameters()).dtype).removeprefix("torch.")
    key = reference_key(weights_dir, dataset, dtype, **key_extra)
    found = _found_everywhere(cache_dir, key)
    if found is not None:
        return found
    group = ranks.process_group()
    scores = score_distributed(reference, dataset, batch_size, progress=progress, logps=logps)
    store = None
    if scores is not None:  # rank 0
        store = from_scores(scores, key)
        store.save(store_path(cache_dir, key))
    if group is not None:  # sent, not re-read: the cache directory need not be shared between nodes
        box = [store]
        group.broadcast_object_list(box, src=0)
        store = box[0]
    return store
