"""The pre-flight plan at scale: first scan (1 worker and all workers), cached load, memory, time to first step.

    python bench/data_scale.py                       # 100k and 1M lines, print the table
    python bench/data_scale.py --write-docs          # and update the "## Data plan at scale" section of docs/benchmarks.md
    python bench/data_scale.py --sizes 20000         # a quick run

Data: InternVL-format jsonl files of N lines. Each line is a multi-turn conversation (1 to 4 human/gpt pairs
of generated English-like text, about 1.3 KB per line), 85% single-image, 5% multi-image (2-3 images),
10% text-only, the images drawn from a pool of real-size JPEGs (640x480 to 1920x1080). InternVL's 448-px
tiles, 256 tokens per tile, max_dynamic_patch 12, the `internvl2_5` template, the tiny tokenizer shipped with
the package, max_seq_length 8192.

Per size, each measurement in a fresh subprocess (so peak RSS is that step's own):
  scan, 1 worker     the first scan (no cache) with one process, on the first `--single-lines` lines
                     (a full 1M-line single-process scan would take most of an hour)
  scan, all workers  the first scan of the whole file with every core (data.scan_workers=null), writing the cache
  cached load        build_dataset again: the plan loaded from the cache (fingerprint check included)
  RSS per sample     (peak RSS of the cached load - RSS of the same process before it) / samples
  first step         cached load + a DataLoader (batch 4, 2 workers) delivering its first batch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POOL_SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 720), (1920, 1080), (480, 640), (1080, 1920), (1200, 1200)]
WORDS = ("the a an this that image picture photo shows person man woman child dog cat car bus street road building "
         "tree sky cloud water river table chair window door light sign text red blue green white black yellow large "
         "small left right front behind near top bottom middle side two three several many standing sitting walking "
         "holding looking wearing parked open closed bright dark old new wooden metal glass stone").split()
# Chinese: common words written without spaces, commas and full stops, as Chinese captions are.
ZH_WORDS = ("图片 照片 一个 两个 三个 男人 女人 孩子 小狗 小猫 汽车 公共汽车 街道 马路 建筑 大楼 树木 天空 白云 河流 桌子 椅子 "
            "窗户 大门 灯光 标志 文字 红色 蓝色 绿色 白色 黑色 黄色 很大 很小 左边 右边 前面 后面 附近 上面 下面 中间 旁边 站着 "
            "坐着 走路 拿着 看着 穿着 停着 打开 关闭 明亮 黑暗 旧的 新的 木头 金属 玻璃 石头 的 了 在 是 有 和 也 都 这 那 正在 "
            "非常 可以 我们 他们 显示 描述 详细").split()
ZH_QUESTIONS = ["详细描述这张图片。", "图片里发生了什么？", "图中有几个人？", "最大的物体是什么颜色？", "图片里有文字吗？请读出来。",
                "这张照片是在哪里拍的？"]
QUESTIONS = ["Describe the image in detail.", "What is happening in this picture?", "How many people are visible?",
             "What colour is the largest object?", "Is there any text in the image? Read it.", "Where was this photo taken?"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _answer(rng: random.Random) -> str:
    return " ".join(_sentence(rng, rng.randint(10, 26)) for _ in range(rng.randint(1, 5)))


def _zh_sentence(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ZH_WORDS) + ("，" if rng.random() < 0.12 else "") for _ in range(n)) + "。"


def chinese_text(rng: random.Random) -> str:
    """A Chinese answer: 1 to 5 sentences of 10 to 26 words, as `_answer` writes English ones."""
    return "".join(_zh_sentence(rng, rng.randint(10, 26)) for _ in range(rng.randint(1, 5)))


def generate(directory: Path, n: int, seed: int = 0, lang: str = "en") -> Path:
    """The image pool and an n-line jsonl (deterministic); reused when already there. `lang`: "en", or "zh"
    (the same shapes with Chinese questions and answers)."""
    import numpy as np
    from PIL import Image

    images = directory / "images"
    if not (images / f"pool_{len(POOL_SIZES) * 4 - 1:02d}.jpg").exists():
        images.mkdir(parents=True, exist_ok=True)
        g = np.random.default_rng(seed)
        for i in range(len(POOL_SIZES) * 4):
            w, h = POOL_SIZES[i % len(POOL_SIZES)]
            small = g.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(images / f"pool_{i:02d}.jpg", quality=90)
    pool = [f"images/pool_{i:02d}.jpg" for i in range(len(POOL_SIZES) * 4)]
    ann = directory / (f"scale_{n}.jsonl" if lang == "en" else f"scale_{n}_{lang}.jsonl")
    if ann.exists():
        return ann
    rng = random.Random(seed)
    tmp = ann.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for i in range(n):
            kind = rng.random()
            n_img = 0 if kind < 0.10 else (rng.randint(2, 3) if kind < 0.15 else 1)
            turns = []
            questions = QUESTIONS if lang == "en" else ZH_QUESTIONS
            for t in range(rng.randint(1, 4)):
                if lang == "en":
                    q, a = rng.choice(QUESTIONS) + " " + _sentence(rng, rng.randint(4, 12)), _answer(rng)
                else:
                    q, a = rng.choice(ZH_QUESTIONS) + _zh_sentence(rng, rng.randint(4, 12)), chinese_text(rng)
                if t == 0 and n_img:
                    q = "".join(f"Image-{k + 1}: <image>\n" for k in range(n_img)) if n_img > 1 else "<image>\n" + q
                    q += rng.choice(questions) if n_img > 1 else ""
                turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            row: dict = {"id": i, "conversations": turns}
            if n_img:
                picks = [rng.choice(pool) for _ in range(n_img)]
                row["image"] = picks[0] if n_img == 1 else picks
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, ann)
    return ann


# The tokenizer families of the language table: (template, how the tokenizer is made).
FAMILIES = {
    "byte-level BPE": "internvl2_5",  # the tiny tokenizer shipped with the package (GPT-2/Qwen2 layout)
    "InternLM2 sentencepiece": "internlm2-chat",  # a sentencepiece BPE model trained here, converted as InternVL2/2.5's
    "Llama/Phi-3 sentencepiece": "internlm2-chat",  # the same vocabulary, laid out as transformers converts Llama
}


def sentencepiece_checkpoint(directory: Path, vocab_size: int = 4000) -> Path:
    """An InternLM2-style tokenizer folder (tokenizer.model + tokenizer_config.json with its added tokens), the
    model a sentencepiece BPE (byte fallback, as InternLM2's) trained on this generator's English and Chinese."""
    import io

    import sentencepiece as spm

    out = directory / f"spm_{vocab_size}"
    if (out / "tokenizer_config.json").exists():
        return out
    rng = random.Random(1)
    corpus = [_answer(rng) for _ in range(3000)] + [chinese_text(rng) for _ in range(3000)] + QUESTIONS + ZH_QUESTIONS
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, model_type="bpe", vocab_size=vocab_size, byte_fallback=True,
        character_coverage=0.9995, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True, hard_vocab_limit=False, minloglevel=2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    from internvl_exp.data.templates import IMG_CONTEXT, IMG_END, IMG_START

    n = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    added = ["<|im_start|>", "<|im_end|>", IMG_START, IMG_END, IMG_CONTEXT, "<ref>", "</ref>", "<box>", "</box>"]
    decoder = {str(i): {"content": c, "special": True} for i, c in [(0, "<unk>"), (1, "<s>"), (2, "</s>")]}
    decoder.update({str(n + k): {"content": c, "special": True} for k, c in enumerate(added)})
    config = {"added_tokens_decoder": decoder, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
              "unk_token": "<unk>", "add_bos_token": True}
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return out


def load_tokenizer(family: str, spm_dir: Path | None):
    """The bench's tokenizer of `family` (FAMILIES)."""
    if family == "byte-level BPE":
        from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

        return load_tiny_tokenizer()
    from tokenizers import pre_tokenizers

    from internvl_exp.models.convert.sentencepiece import sentencepiece_to_fast

    tok = sentencepiece_to_fast(spm_dir)
    if family.startswith("Llama"):  # transformers' LlamaConverter (legacy=False): Metaspace(first, split=False)
        tok.backend_tokenizer.normalizer = None
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    return tok


def _rss_now_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from internvl_exp.data.dataset import ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries

    if args.rust_count:  # the counting before per-word memos covered this row: the Rust encode of every text
        from internvl_exp.data import token_count

        token_count.WordCounter.count = lambda self, text: len(self._backend.encode(text, add_special_tokens=False))
    ann = Path(args.ann)
    if args.lines:  # a prefix of the file, for the single-process scan
        part = ann.with_name(f"{ann.stem}_first{args.lines}.jsonl")
        if not part.exists():
            with open(ann) as src, open(part, "w") as dst:
                for _, line in zip(range(args.lines), src):
                    dst.write(line)
        ann = part
    tokenizer = load_tokenizer(args.family, Path(args.spm) if args.spm else None)
    template = FAMILIES[args.family]
    entries = load_entries(None, {"scale": {"annotation": str(ann), "root": str(ann.parent)}})
    settings = ImageSettings(tile_size=448, tokens_per_tile=256, max_dynamic_patch=12)
    before = _rss_now_kb()
    cpu0 = os.times()
    start = time.perf_counter()
    ds, report = build_dataset(entries, tokenizer, template, settings, 8192, scan_workers=args.workers,
                               cache_dir=args.cache)
    seconds = time.perf_counter() - start
    cpu1 = os.times()  # this process and its (joined) scan workers
    cpu_s = sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("user", "system", "children_user", "children_system"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    out = {"seconds": seconds, "cpu_s": cpu_s, "samples": len(ds), "lines": len(ds.plan) + len(report.problems), "plan": report.plan_source,
           "rss_before_kb": before, "rss_peak_kb": peak, "rss_after_kb": _rss_now_kb(), "plan_bytes": ds.plan.nbytes()}
    if args.first_step:
        import torch

        from internvl_exp.data.collator import Collator

        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=True, collate_fn=Collator(tokenizer.pad_token_id))
        next(iter(loader))
        out["first_step_s"] = time.perf_counter() - start
        # What keeping the tokens would save: load-time tokenisation against the whole item, same samples.
        from internvl_exp.data.templates import tokenize_turns

        picks = range(0, len(ds), max(1, len(ds) // 64))[:64]
        samples = [ds.samples[i] for i in picks]
        t = time.perf_counter()
        for s in samples:
            tokenize_turns(s.conversations, tokenizer, template, [n * 256 for n in s.num_tiles])
        out["tokenize_ms"] = (time.perf_counter() - t) / len(samples) * 1e3
        t = time.perf_counter()
        for i in picks:
            ds[i]
        out["item_ms"] = (time.perf_counter() - t) / len(samples) * 1e3
    print(json.dumps(out), flush=True)


def measure(ann: Path, cache: Path, workers: int | None, lines: int = 0, first_step: bool = False,
            family: str = "byte-level BPE", spm: Path | None = None, rust_count: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--ann", str(ann), "--cache", str(cache), "--family", family]
    cmd += ["--spm", str(spm)] if spm else []
    cmd += ["--rust-count"] if rust_count else []
    cmd += ["--workers", str(workers)] if workers else []
    cmd += ["--lines", str(lines)] if lines else []
    cmd += ["--first-step"] if first_step else []
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"measurement failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def languages(args: argparse.Namespace) -> None:
    """The first scan of the same lines in English and Chinese with each tokenizer family, all workers."""
    import shutil

    import tokenizers

    from internvl_exp.data.prescan import available_cores

    cores, n = available_cores(), args.lang_lines
    load = os.getloadavg()
    spm = sentencepiece_checkpoint(args.data_dir)
    files = {lang: generate(args.data_dir, n, lang=lang) for lang in ("en", "zh")}
    rows = [{"family": family, "lang": lang} for family in FAMILIES for lang in files]
    # Every row once per round, the rounds one after another: on a shared machine each row then sees the same
    # spread of load, and each keeps its best round (the fewest seconds and, apart, the fewest CPU-seconds).
    for round_ in range(args.repeats):
        for row in rows:
            family, lang = row["family"], row["lang"]
            for key, rust in (("fast", False),) + ((("rust", True),) if args.with_rust else ()):
                cache = args.data_dir / "cache_lang"
                shutil.rmtree(cache, ignore_errors=True)
                r = measure(files[lang], cache, None, family=family, spm=spm, rust_count=rust)
                shutil.rmtree(cache, ignore_errors=True)
                best = row.setdefault(key, dict(r))
                best["seconds"], best["cpu_s"] = min(best["seconds"], r["seconds"]), min(best["cpu_s"], r["cpu_s"])
            print(f"  round {round_ + 1}: {lang} {family}: {r['lines'] / r['seconds']:,.0f} lines/s, "
                  f"{r['lines'] / r['cpu_s']:,.0f} lines per CPU-s", flush=True)
    base = rows[0]["fast"]  # English, byte-level BPE: the fast path this table is measured against

    def rate(r: dict) -> float:
        return r["lines"] / r["seconds"]

    def per_cpu(r: dict) -> float:
        return r["lines"] / r["cpu_s"]

    head = ("| language | tokenizer | lines/s, {c} workers | lines per CPU-second | vs English byte-level, lines/s | "
            "vs English byte-level, per CPU-second |").format(c=cores)
    sep = "|---|---|---|---|---|---|"
    if args.with_rust:
        head += " Rust `encode` of every text (lines per CPU-second) |"
        sep += "---|"
    lines = []
    for row in rows:
        r = row["fast"]
        cell = (f"| {'English' if row['lang'] == 'en' else 'Chinese'} | {row['family']} | {rate(r):,.0f} | "
                f"{per_cpu(r):,.0f} | {rate(r) / rate(base):.2f} | {per_cpu(r) / per_cpu(base):.2f} |")
        if args.with_rust:
            cell += f" {row['rust']['lines'] / row['rust']['cpu_s']:,.0f} |"
        lines.append(cell)
    sizes = {lang: ann.stat().st_size / 1e6 for lang, ann in files.items()}
    import platform as _platform

    cmd = "python bench/data_scale.py --languages --write-docs" + (" --with-rust" if args.with_rust else "")
    cmd += f" --lang-lines {n}" if n != 100_000 else ""
    cmd += f" --repeats {args.repeats}" if args.repeats != 1 else ""
    cmd += f' --note "{args.note}"' if args.note else ""
    rust_note = ("" if not args.with_rust else "\nThe last column is the same scan with every text counted by the "
                 "Rust `encode`, as every row but the first was before\nthe per-word counting covered it.")
    rounds = (f"\nEach row is its best of {args.repeats} rounds (every row once per round, in the order of the table), "
              "by seconds and, apart,\nby CPU-seconds." if args.repeats > 1 else "")
    section = f"""## Token counting by language and tokenizer

The first scan (all {cores} workers, no cache) of {n:,} generated lines per language (`bench/data_scale.py
--languages`): the shapes of the table above (1 to 4 turn pairs, 90% with images), English ({sizes['en']:.0f} MB) or
Chinese ({sizes['zh']:.0f} MB: the same number of words per sentence, written without spaces). Tokenizers:
**byte-level BPE** is the tiny tokenizer (GPT-2/Qwen2 layout, 671 tokens, a few Chinese merges) with the
`internvl2_5` template; **InternLM2 sentencepiece** is a sentencepiece BPE model trained on this generator's
English and Chinese (4,000 pieces, byte fallback) and converted as InternVL2/2.5's InternLM2 tokenizer is
(`models/convert/sentencepiece.py`: no pre-tokenizer, the whole text one BPE word), with the `internlm2-chat`
template; **Llama/Phi-3 sentencepiece** is the same vocabulary laid out as transformers converts Llama
(Metaspace(prepend_scheme=first, split=false)). Every row counts tokens exactly (docs/data.md, "Fast and
exact"; byte-level text outside ASCII: one token per UTF-8 byte plus a remembered correction for each run of
characters a merge may join); the ratio columns compare each row with the first (English, byte-level: the fast
path) in the same run, by lines/s and by lines per CPU-second. On a machine shared with other jobs only the
second is meaningful: lines/s then depends on what else ran during that row.{rounds}{rust_note}

{head}
{sep}
""" + "\n".join(lines) + f"""

**Machine**: {_platform.machine()}, {cores} CPU cores, load average {load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at
the end (other jobs share the cores: lines per CPU-second is the comparable number, and rows compare within one
run only). {args.note + " " if args.note else ""}{time.strftime("%Y-%m-%d")}. Python {_platform.python_version()}, tokenizers {tokenizers.__version__}.
"""
    from docs_section import publish

    publish(section, args.write_docs, cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--single-lines", type=int, default=20_000, help="lines for the 1-worker scan")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".cache" / "internvl_exp" / "bench_scale")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--note", default="", help="a note on the machine's load, for the docs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ann", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lines", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first-step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="byte-level BPE", help=argparse.SUPPRESS)
    parser.add_argument("--spm", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rust-count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--languages", action="store_true",
                        help="instead: the first scan per language x tokenizer family (the '## Token counting' section)")
    parser.add_argument("--lang-lines", type=int, default=100_000, help="lines per file for --languages")
    parser.add_argument("--with-rust", action="store_true", help="--languages: also each row with the Rust encode")
    parser.add_argument("--repeats", type=int, default=1, help="--languages: rounds over all rows; each keeps its best")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.languages:
        return languages(args)

    import shutil

    from internvl_exp.data.prescan import available_cores

    cores = available_cores()
    load = os.getloadavg()
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        ann = generate(args.data_dir, n)
        print(f"{n} lines: {ann} ({ann.stat().st_size / 1e6:.0f} MB, ready in {time.perf_counter() - t:.0f} s)", flush=True)
        cache = args.data_dir / f"cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)
        single_lines = min(n, args.single_lines)
        one = measure(ann, args.data_dir / f"cache_{n}_single", 1, lines=single_lines)
        shutil.rmtree(args.data_dir / f"cache_{n}_single", ignore_errors=True)
        print(f"  scan, 1 worker: {one['lines']} lines in {one['seconds']:.1f} s", flush=True)
        full = measure(ann, cache, None)
        print(f"  scan, {cores} workers: {full['lines']} lines in {full['seconds']:.1f} s "
              f"({full['cpu_s'] / full['lines'] * 1e3:.2f} ms of CPU per line)", flush=True)
        hit = measure(ann, cache, None)
        assert hit["plan"] == "cache-hit", hit
        print(f"  cached load: {hit['seconds']:.2f} s", flush=True)
        step = measure(ann, cache, None, first_step=True)
        per_sample = (hit["rss_peak_kb"] - hit["rss_before_kb"]) * 1024 / hit["samples"]
        rows.append({"n": n, "mb": ann.stat().st_size / 1e6, "one": one, "full": full, "hit": hit, "step": step,
                     "per_sample": per_sample})
        print(f"  RSS per sample {per_sample:.0f} B (plan arrays {hit['plan_bytes'] / hit['samples']:.0f} B/sample); "
              f"first step {step['first_step_s']:.2f} s; load-time tokenisation {step['tokenize_ms']:.2f} ms of "
              f"{step['item_ms']:.1f} ms per item", flush=True)

    def cell(r):
        return (f"| {r['n']:,} ({r['mb']:.0f} MB) | {r['one']['lines'] / r['one']['seconds']:,.0f} | "
                f"{r['full']['lines'] / r['full']['seconds']:,.0f} ({r['full']['seconds']:.0f} s) | "
                f"{r['full']['lines'] / r['full']['cpu_s']:,.0f} | {r['hit']['seconds']:.2f} | "
                f"{r['hit']['rss_peak_kb'] / 1024:.0f} MB | {r['per_sample']:.0f} B | {r['step']['first_step_s']:.2f} |")

    import numpy as np
    import tokenizers
    import torch

    table = "\n".join(cell(r) for r in rows)
    sizes = " ".join(str(n) for n in args.sizes)
    cmd = "python bench/data_scale.py --write-docs" + (f" --sizes {sizes}" if args.sizes != [100_000, 1_000_000] else "")
    section = f"""## Data plan at scale

The pre-flight plan on InternVL-format jsonl files of 100k and 1M lines (`bench/data_scale.py`): multi-turn
conversations of about 1.3 KB per line (1 to 4 turn pairs), 85% single-image, 5% multi-image, 10% text-only,
images from a pool of 32 real-size JPEGs (640x480 to 1920x1080), 448-px tiles at 256 tokens, max_dynamic_patch
12, the `internvl2_5` template, the tiny tokenizer, max_seq_length 8192. Every number comes from a fresh process.

| lines (file) | first scan, 1 worker (lines/s) | first scan, {cores} workers (lines/s) | lines per CPU-second | cached load (s) | peak RSS, cached load | RSS per sample | first batch (s) |
|---|---|---|---|---|---|---|---|
{table}

- **first scan, 1 worker**: the first {args.single_lines:,} lines, one process, no cache.
- **first scan, {cores} workers**: the whole file, `data.scan_workers` = every core, writing the cache. Each
  line is parsed, its conversation checked, its image sizes read (from the header; a per-worker cache keyed
  by path, size and mtime serves images seen before) and its tokens counted exactly (the length policy needs
  exact lengths) in Python, memoised per word or per run of characters that may join (byte-level BPE and
  sentencepiece tokenizers, any script; token_count.py), else by the tokenizer (docs/data.md). A cProfile of 20k lines before this counting: 65-77% of the time in the Rust `encode`
  (~0.6 us per token building offsets and alignments the scan never uses); after it, the word split
  (`re.findall`) is ~15%, JSON parsing ~5%, the rest the Python of the checks and of the counting.
- **lines per CPU-second**: the all-workers scan's lines over the CPU time it used (the process and its
  workers). Unlike lines/s it does not depend on what else runs on the machine: on {cores} idle cores the scan
  would reach about {cores} times this.
- **cached load**: `build_dataset` again in a new process: the key (tokenizer, settings, code), the annotation
  files' stat checked against the manifest, the arrays memory-mapped.
- **RSS per sample**: (peak RSS during the cached load - RSS before it) / samples. The plan arrays themselves
  take {rows[-1]['hit']['plan_bytes'] / rows[-1]['hit']['samples']:.0f} bytes per sample, memory-mapped, so the ranks of a node and
  the data-loader workers share one copy in the page cache.
- **first batch**: the cached load plus a DataLoader (batch 4, 2 workers, shuffled) delivering its first batch.
- **tokens at load**: loading an item (read the line, parse, tokenise, decode and tile its images) took
  {rows[-1]['step']['item_ms']:.1f} ms on average, of which tokenising {rows[-1]['step']['tokenize_ms']:.2f} ms ({100 * rows[-1]['step']['tokenize_ms'] / rows[-1]['step']['item_ms']:.0f}%). Keeping
  the scan's tokens would save that share at ~4 bytes per token of cache ({rows[-1]['mb'] * 2:.0f}+ MB for the largest file
  here), so the scan counts tokens and loading tokenises again (docs/data.md).

**Machine**: {platform.machine()}, {cores} CPU cores, load average {load[0]:.1f} at the start and {os.getloadavg()[0]:.1f}
at the end of the run (other jobs share the cores: lines per CPU-second is the comparable number).
{args.note + " " if args.note else ""}{time.strftime("%Y-%m-%d")}. Python {platform.python_version()}, torch {torch.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}.
"""
    from docs_section import publish

    publish(section, args.write_docs, cmd)


if __name__ == "__main__":
    main()
