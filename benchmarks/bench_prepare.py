"""Tokenisation throughput: ``mixbatch.prepare`` against Hugging Face ``datasets``.

The corpus is the built-in demo corpus (``mixbatch.demo.build_corpus``: Python sources, C
headers, English/German/French manual pages), dealt round-robin into a few plain JSONL shards of
about equal size, so that two processes have work to share. Each pipeline turns every shard into
uint16 token ids on disk:

- mixbatch: ``prepare(cfg, workers=N, force=True)``, end to end (read and parse JSONL, tokenise,
  write parts, merge into ``tokens.bin`` + ``offsets.npy``, checksums, ``meta.json``);
- datasets: ``load_dataset("json", data_files=..., split="train", num_proc=N)`` (JSON -> Arrow
  cache), then ``.map(batched=True, num_proc=N, remove_columns=..., features=uint16 ids)``
  calling the same ``tokenizers`` model (for the byte tokeniser: ``text.encode()``), which writes
  its Arrow cache files. Load and map are timed apart and together; every run starts from an
  empty cache folder inside the work folder, with ``HF_DATASETS_OFFLINE=1``.

Both runs are checked to produce the very same token stream. The byte-level BPE is trained with
``mixbatch.tokenizer_training.train_bpe`` on a sample of the corpus (timed on its own).

Run ``make bench`` or ``.venv-bench/bin/python benchmarks/bench_prepare.py --help``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    Timing,
    background_summary,
    header,
    human,
    log,
    set_wait_budget,
    table,
    timed,
    timed_cpu,
    wait_until_quiet,
    warm_page_cache,
)

PACKAGES = ("mixbatch", "numpy", "pyarrow", "tokenizers", "datasets", "multiprocess")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where corpus, stores and caches go (default: a temp folder, removed)")
    p.add_argument("--mb-per-domain", type=int, default=16,
                   help="cap on the text of each demo-corpus domain, in MiB")
    p.add_argument("--shards", type=int, default=8, help="JSONL files the corpus is dealt into")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to time")
    p.add_argument("--max-wait", type=float, default=120.0,
                   help="seconds the script may spend, in all, waiting for other processes to "
                        "leave the CPUs idle before timed runs")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (byte tokeniser)")
    p.add_argument("--repeat-bpe", type=int, default=2, help="runs per measurement (BPE)")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size")
    p.add_argument("--train-docs", type=int, default=1000, help="documents the BPE is trained on")
    p.add_argument("--tokenizers-parallelism", choices=["off", "on"], default="off",
                   help="off: TOKENIZERS_PARALLELISM=false, so the process count is the only "
                        "parallelism; on: let the Rust tokenizer use its own threads too")
    p.add_argument("--hf-call", choices=["encode_batch_fast", "encode_batch"],
                   default="encode_batch_fast",
                   help="Tokenizer method the datasets map calls (mixbatch uses encode_batch_fast; "
                        "encode_batch also computes offsets and is slower)")
    p.add_argument("--skip-bpe", action="store_true", help="time the byte tokeniser only")
    p.add_argument("--skip-datasets", action="store_true", help="time mixbatch only")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------
def build_shards(workdir: Path, mb_per_domain: int, n_shards: int) -> tuple[list[Path], dict[str, Any]]:
    """The demo corpus, its documents dealt round-robin into ``n_shards`` plain JSONL files."""
    from mixbatch.demo import build_corpus

    domains = build_corpus(workdir / "demo", max_bytes=mb_per_domain << 20)
    shard_dir = workdir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = [shard_dir / f"part-{i:02d}.jsonl" for i in range(n_shards)]
    outs = [open(p, "w", encoding="utf-8") for p in paths]  # noqa: SIM115 - closed below
    n = text_bytes = 0
    try:
        for d in domains:
            opener = gzip.open if d.path.name.endswith(".gz") else open
            with opener(d.path, "rt", encoding="utf-8") as f:
                for line in f:
                    outs[n % n_shards].write(line)
                    text_bytes += len(json.loads(line)["text"].encode("utf-8"))
                    n += 1
    finally:
        for o in outs:
            o.close()
    info = {
        "documents": n, "text_bytes": text_bytes, "file_bytes": sum(p.stat().st_size for p in paths),
        "domains": ", ".join(f"{d.name} {d.bytes / 1e6:.1f} MB ({d.origin})" for d in domains),
    }
    return paths, info


def make_config(files: list[Path], tokenizer: str, store: Path):
    from mixbatch.config import config_from_dict

    return config_from_dict({
        "tokenizer": tokenizer, "store": str(store),
        "sources": {"corpus": {"path": [str(p) for p in files], "format": "jsonl"}},
        "mixture": {"unit": "tokens", "weights": {"corpus": 1.0}},
        "batch": {"seq_len": 1024, "batch_size": 8, "packing": "concat"},
    })


# ---------------------------------------------------------------------------------------------
# the two pipelines
# ---------------------------------------------------------------------------------------------
def run_mixbatch(cfg, procs: int) -> tuple[dict[str, float], dict[str, int]]:
    from mixbatch.prepare import prepare

    seconds, cpu, report = timed_cpu(lambda: prepare(cfg, workers=procs, force=True, progress=False))
    return {"total": seconds, "cpu": cpu}, {"documents": report.documents, "tokens": report.tokens}


def hf_tokenize_fn(tokenizer_json: Path | None, call: str):
    """The batched map function: same ``tokenizers`` model as mixbatch, or UTF-8 bytes."""
    import numpy as np

    if tokenizer_json is None:
        def encode_bytes(batch: dict[str, list]) -> dict[str, list]:
            return {"input_ids": [np.frombuffer(t.encode("utf-8"), np.uint8) for t in batch["text"]]}
        return encode_bytes

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    encode = getattr(tok, call)

    def encode_bpe(batch: dict[str, list]) -> dict[str, list]:
        return {"input_ids": [e.ids for e in encode(batch["text"], add_special_tokens=False)]}
    return encode_bpe


def run_datasets(files: list[Path], fn, procs: int, cache_dir: Path):
    import datasets

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("uint16"))})
    nproc = procs if procs > 1 else None
    load_s, load_cpu, ds = timed_cpu(lambda: datasets.load_dataset(
        "json", data_files=[str(p) for p in files], split="train", cache_dir=str(cache_dir),
        num_proc=nproc))
    map_s, map_cpu, out = timed_cpu(lambda: ds.map(
        fn, batched=True, num_proc=nproc, remove_columns=ds.column_names, features=features,
        load_from_cache_file=False))
    if not out.cache_files:
        raise RuntimeError("datasets kept the mapped dataset in memory; expected cache files")
    return {"load": load_s, "map": map_s, "total": load_s + map_s, "cpu": load_cpu + map_cpu}, out


def same_tokens(out, store_dir: Path) -> tuple[bool, int, int]:
    """Whether the datasets output holds exactly the tokens and documents of the mixbatch store."""
    import numpy as np
    import pyarrow.compute as pc

    from mixbatch.store import open_store

    store = open_store(store_dir)
    col = out.with_format("arrow")[:]["input_ids"]
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    ok = (len(lengths) == len(store) and np.array_equal(lengths, store.lengths)
          and np.array_equal(flat, store.tokens))
    return ok, len(lengths), len(flat)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    set_wait_budget(args.max_wait)
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="mixbatch-bench-prepare-")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    # before datasets or tokenizers are imported: caches in the work folder, no network
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(workdir / "hf")
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf" / "datasets")
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if args.tokenizers_parallelism == "off" else "true"
    if not args.skip_datasets:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    try:
        report = bench(args, workdir)
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report)


def bench(args: argparse.Namespace, workdir: Path) -> str:
    log(f"building the corpus in {workdir} ...")
    files, corpus = build_shards(workdir, args.mb_per_domain, args.shards)
    warm_page_cache(files)
    text_mb = corpus["text_bytes"] / 1e6
    log(f"corpus: {corpus['documents']} documents, {text_mb:.1f} MB of text in {len(files)} files")

    tokenizers: list[tuple[str, str, Path | None, int]] = [("byte", "byte", None, args.repeat)]
    train_row = None
    if not args.skip_bpe:
        from mixbatch.tokenizer_training import iter_config_texts, train_bpe

        sample = [t for b in iter_config_texts(make_config(files, "byte", workdir / "unused"),
                                               args.train_docs) for t in b]
        tok_path = workdir / "bpe" / "tokenizer.json"
        wait_until_quiet()
        train_s, _ = timed(lambda: train_bpe([sample], args.vocab_size, tok_path))
        sample_mb = sum(len(t.encode("utf-8")) for t in sample) / 1e6
        train_row = [f"byte-level BPE, vocab {args.vocab_size}", len(sample), f"{sample_mb:.1f}",
                     f"{train_s:.2f}", f"{sample_mb / train_s:.2f}"]
        log(f"BPE trained in {train_s:.1f}s on {len(sample)} documents ({sample_mb:.1f} MB)")
        tokenizers.append((f"BPE {args.vocab_size}", str(tok_path), tok_path, args.repeat_bpe))

    rows = []
    checks = []
    for label, spec, tok_json, repeat in tokenizers:
        cfg = make_config(files, spec, workdir / "store")
        fn = None if args.skip_datasets else hf_tokenize_fn(tok_json, args.hf_call)
        timings: dict[tuple[str, int], Timing] = {}
        counts: dict[str, int] = {}
        last_out = None
        for r in range(repeat):
            for procs in args.procs:
                bg = wait_until_quiet()
                parts, counts = run_mixbatch(cfg, procs)
                timings.setdefault(("mixbatch", procs), Timing()).add(parts, bg)
                log(f"  {label} mixbatch   procs={procs} run {r + 1}: {parts['total']:.2f}s "
                    f"(CPU {parts['cpu']:.2f}s)")
                if fn is None:
                    continue
                bg = wait_until_quiet()
                cache = workdir / "hf" / f"run-{label}-{procs}-{r}"
                parts, out = run_datasets(files, fn, procs, cache)
                timings.setdefault(("datasets", procs), Timing()).add(parts, bg)
                log(f"  {label} datasets   procs={procs} run {r + 1}: load {parts['load']:.2f}s "
                    f"+ map {parts['map']:.2f}s (CPU {parts['cpu']:.2f}s)")
                if last_out is not None:
                    shutil.rmtree(last_out[1], ignore_errors=True)
                last_out = (out, cache)
        if last_out is not None:
            ok, n_docs, n_tok = same_tokens(last_out[0], workdir / "store" / "corpus")
            checks.append(f"{label}: datasets output {'==' if ok else '!='} mixbatch store "
                          f"({n_docs} documents, {n_tok} tokens)")
            if not ok:
                log(f"WARNING: {checks[-1]}")
            del last_out
        for (system, procs), t in timings.items():
            best = t.best
            total = best["total"]
            ratio = ""
            if system == "mixbatch" and ("datasets", procs) in timings:
                ratio = f"{timings['datasets', procs].best['total'] / total:.2f}x"
            rows.append([
                label, system, procs,
                f"{best['load']:.2f}" if "load" in best else "-",
                f"{best.get('map', total):.2f}", f"{total:.2f}",
                human(counts["documents"] / total), human(counts["tokens"] / total),
                f"{text_mb / total:.1f}", ratio, f"{min(r['cpu'] for r in t.runs):.2f}",
                human(counts["tokens"] / min(r["cpu"] for r in t.runs)),
                t.spread() + (" *" if t.noisy() else ""),
            ])

    extra = {
        "background load": background_summary(),
        "corpus": f"{corpus['documents']} documents, {text_mb:.1f} MB of text "
                  f"({corpus['file_bytes'] / 1e6:.1f} MB JSONL) in {len(files)} shards; "
                  f"domains: {corpus['domains']}",
        "tokens": "uint16 ids on disk in both pipelines; page cache warm",
        "TOKENIZERS_PARALLELISM": os.environ["TOKENIZERS_PARALLELISM"],
        "datasets map calls": f"Tokenizer.{args.hf_call}(texts, add_special_tokens=False) "
                              "(BPE), text.encode() (byte)",
    }
    out = [header("bench_prepare: tokenisation throughput", PACKAGES, extra), ""]
    if train_row:
        out += ["## BPE training (`train_bpe`)", "",
                table(["tokenizer", "sample docs", "sample MB", "seconds", "MB/s"], [train_row]), ""]
    out += [
        "## Tokenise the corpus into uint16 ids on disk (best of the runs)", "",
        table(["tokenizer", "pipeline", "procs", "load s", "tokenise s", "total s", "docs/s",
               "tokens/s", "text MB/s", "speed vs datasets", "CPU s", "tokens/CPU-s",
               "runs: total s"],
              rows, align="lllrrrrrrrrrl"),
        "",
        "load s: `load_dataset` (JSON to Arrow cache); tokenise s: `.map` for datasets, the whole "
        "`prepare` for mixbatch; total s = load + tokenise. Speed vs datasets: datasets' total / "
        "mixbatch's total at the same process count. CPU s: user + system seconds of the whole "
        "process tree (workers included), the least of the runs; it shows the work done, "
        "whatever else the machine was running. mixbatch's first 2-process run also starts the "
        "multiprocessing forkserver, once per Python process (as every `mixbatch prepare` command "
        "does); the runs column shows that first run. A * marks a measurement where another "
        "process kept more than 0.3 of a core busy just before one of its runs.",
    ]
    if checks:
        out += ["", "Checks: " + "; ".join(checks) + "."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
