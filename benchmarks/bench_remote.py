"""Token stores on object storage: tokens/s from a local S3 server against local disk.

One corpus of two sources (byte tokenizer) is prepared twice: into a local store and, through
``store: s3://...``, into a store on a moto S3 server started here in its own process (a real
HTTP server on a free local port; the reader and the server share this machine's cores). Runs,
each one pass (one run: ratios, not absolute speeds):

- **read path**: the loader plans ``--steps`` steps (no tokens read), then reads every planned
  span with ``TokenStore.span_source`` and copies the spans back to back (what the loader's
  materialize does; the 2-worker time is the slower worker's read phase, process start-up
  excluded): local disk; S3
  by verified byte ranges with a cold cache, the same with prefetch ``--lookahead`` steps ahead,
  and a warm cache; 0 workers, and 2 worker processes that each read every other step (as
  DataLoader workers do) sharing one cache folder.
- **loader**: ``mixbatch.torch`` DataLoader (0 and 2 workers) over the local store, over the
  S3 store opened with ``cache.whole: true`` (cold: download included; warm), and over the S3
  store read by ranges (the loader prefetches each planned block of steps; cold, warm).
- **LitData** (``StreamingDataset`` + ``TokensLoader``, sequences of ``seq_len``): the same
  tokens optimised once, read from local disk and from the same S3 server (cold, warm cache).
- **MosaicML Streaming** (``StreamingDataset`` over MDS shards of ``seq_len`` rows, written to
  the same server by ``MDSWriter``): local disk, S3 cold and warm; runs under
  ``.venv-streaming`` as a child process, and is reported as not run when that venv is missing.

    .venv-bench/bin/python benchmarks/bench_remote.py [--mb 24] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO,
    background_summary,
    header,
    human,
    log,
    run_in_workdir,
    table,
    wait_until_quiet,
)

PACKAGES = ("mixbatch", "numpy", "fsspec", "s3fs", "moto", "litdata", "torch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=24, help="MB of text per source")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lookahead", type=int, default=8)
    p.add_argument("--block", default="1MiB", help="verified block of the S3 store")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--max-wait", type=float, default=60)
    p.add_argument("--skip-litdata", action="store_true")
    p.add_argument("--skip-streaming", action="store_true")
    p.add_argument("--streaming-python", type=Path, default=REPO / ".venv-streaming/bin/python",
                   help="python of the venv that has mosaicml-streaming")
    p.add_argument("--streaming-child", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the server and the data
# ---------------------------------------------------------------------------------------------
def start_server() -> tuple[subprocess.Popen, dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    return proc, env


def write_corpus(root: Path, mb: float) -> None:
    rng = np.random.default_rng(0)
    words = np.array(["data", "mixture", "token", "store", "batch", "remote", "cache", "range",
                      "block", "shard", "stream", "resume", "exact", "prefix", "the", "of"])
    for name, mu in (("web", 6.0), ("code", 5.0)):
        path = root / "raw" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with open(path, "w") as f:
            while size < mb * 1e6:
                n = int(min(20000, rng.lognormal(mu, 1.0)))
                line = json.dumps({"text": " ".join(rng.choice(words, size=max(1, n // 6)))})
                f.write(line + "\n")
                size += len(line) + 1


def config(root: Path, store: str, cache: Path | None, args, whole: bool = False,
           max_bytes: int | None = None):
    from mixbatch.config import config_from_dict

    data: dict[str, Any] = {
        "seed": 0, "store": store,
        "sources": {"web": {"path": str(root / "raw" / "web.jsonl")},
                    "code": {"path": str(root / "raw" / "code.jsonl")}},
        "mixture": {"unit": "tokens", "weights": {"web": 0.6, "code": 0.4}},
        "batch": {"seq_len": args.seq_len, "batch_size": args.batch, "packing": "concat"},
    }
    if cache is not None:
        data["cache"] = {"dir": str(cache), "block_bytes": args.block, "whole": whole}
        if max_bytes is not None:
            data["cache"]["max_bytes"] = max_bytes
    return config_from_dict(data)


# ---------------------------------------------------------------------------------------------
# the read path
# ---------------------------------------------------------------------------------------------
def plans(cfg, steps: int) -> list[Any]:
    from mixbatch.loader.loader import MixedLoader

    loader = MixedLoader(cfg)
    return [s.plan for s in loader.steps(steps)], loader.stores


def read_steps(cfg, steps: int, lane: int = 0, lanes: int = 1, lookahead: int = 0) -> tuple[int, float]:
    """Plan ``steps`` steps, then read the spans of every ``lanes``-th step from ``lane``;
    return (tokens read, seconds of the read phase)."""
    planned, stores = plans(cfg, steps)
    mine = planned[lane::lanes]

    def by_source(plan):
        for s in np.unique(plan.source).tolist():
            m = plan.source == s
            yield stores[s], plan.doc[m], plan.start[m], plan.end[m]

    t0 = time.perf_counter()
    n = 0
    for k, plan in enumerate(mine):
        if lookahead and k + lookahead < len(mine):
            for store, doc, _, _ in by_source(mine[k + lookahead]):
                store.prefetch(doc)
        for store, doc, start, end in by_source(plan):
            tokens, doc_start, idx = store.span_source(doc, start, end)
            # the copy materialize makes: every span's tokens, back to back
            width = end - start
            first = np.asarray(doc_start)[idx] + start
            offsets = np.repeat(np.cumsum(width) - width, width)
            out = tokens[np.repeat(first, width) + (np.arange(int(width.sum())) - offsets)]
            n += int(out.size)
    return n, time.perf_counter() - t0


def _lane(arg: tuple) -> tuple[int, float]:
    root, store, cache, args, lane, lanes, lookahead, cap = arg
    return read_steps(config(root, store, cache, args, max_bytes=cap), args.steps, lane, lanes,
                      lookahead)


def read_path(root: Path, store: str, cache: Path | None, args, workers: int,
              lookahead: int = 0, max_bytes: int | None = None) -> tuple[int, float]:
    if workers == 0:
        return _lane((root, store, cache, args, 0, 1, lookahead, max_bytes))
    with mp.get_context("spawn").Pool(workers) as pool:
        out = pool.map(_lane, [(root, store, cache, args, w, workers, lookahead, max_bytes)
                               for w in range(workers)])
    # the workers read side by side: the read phase lasts as long as the slower one
    return sum(n for n, _ in out), max(s for _, s in out)


def whole_loader(cfg, steps: int, workers: int) -> tuple[int, float]:
    import torch

    from mixbatch.torch import MixbatchDataset

    t0 = time.perf_counter()
    ds = MixbatchDataset(cfg, rank=0, world_size=1, max_steps=steps)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    n = 0
    for batch in dl:
        n += int(batch["input_ids"].numel())
    return n, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# LitData
# ---------------------------------------------------------------------------------------------
def _lit_item(arg: tuple[str, int, int]) -> np.ndarray:
    path, a, b = arg
    return np.array(np.memmap(path, dtype=np.uint16, mode="r")[a:b])


def litdata_runs(root: Path, args, results: list) -> None:
    import fsspec
    import litdata as ld
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming import downloader
    from litdata.streaming.item_loader import TokensLoader

    # LitData's obstore client refuses a plain-http endpoint unless told otherwise
    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"

    L = args.seq_len
    inputs = []
    for name in ("web", "code"):
        tok = root / "store_local" / name / "tokens.bin"
        n = tok.stat().st_size // 2
        inputs += [(str(tok), a, min(a + L * 256, n)) for a in range(0, n, L * 256)]
    out = root / "lit"
    before = mp.get_start_method(allow_none=True)
    try:
        ld.optimize(fn=_lit_item, inputs=inputs, output_dir=str(out), chunk_size=L * 1024,
                    item_loader=TokensLoader(), num_workers=2, mode="overwrite", verbose=False,
                    start_method="fork")
    finally:
        mp.set_start_method(before, force=True)
    fs = fsspec.filesystem("s3")
    fs.put(str(out) + "/", "bench/lit/", recursive=True)
    n_seq = args.steps * args.batch

    def run(src: str, workers: int, cache: Path | None) -> tuple[int, float]:
        t0 = time.perf_counter()
        kw = {"cache_dir": str(cache)} if cache is not None else {}
        ds = StreamingDataset(src, item_loader=TokensLoader(block_size=L), shuffle=True, seed=0,
                              **kw)
        dl = StreamingDataLoader(ds, batch_size=args.batch, num_workers=workers)
        n = 0
        for b in dl:
            n += int(b.numel())
            if n >= n_seq * L:
                break
        return n, time.perf_counter() - t0

    for w in (0, 2):
        wait_until_quiet()
        results.append(("LitData", "local disk", w, "-", *run(str(out), w, None)))
        cache = root / f"lit-cache-{w}"
        wait_until_quiet()
        results.append(("LitData", "S3", w, "cold", *run("s3://bench/lit", w, cache)))
        wait_until_quiet()
        results.append(("LitData", "S3", w, "warm", *run("s3://bench/lit", w, cache)))


# ---------------------------------------------------------------------------------------------
# MosaicML Streaming (its own venv: it pins numpy<2.2), run as a child process
# ---------------------------------------------------------------------------------------------
def streaming_child(job: Path) -> None:
    """Runs under .venv-streaming: MDS shards of the same tokens, uploaded to the same server,
    read from local disk and from S3 (cold, warm); writes the rows as JSON."""
    spec = json.loads(job.read_text())
    from bench_loader import _stub_torchvision

    _stub_torchvision()
    from streaming import MDSWriter, StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    L, B, steps, root = spec["seq_len"], spec["batch"], spec["steps"], Path(spec["root"])
    local = root / "mds"
    with MDSWriter(out=(str(local), "s3://bench/mds"), columns={"input_ids": f"ndarray:uint16:{L}"},
                   size_limit=1 << 22, keep_local=True) as w:
        for path in spec["tokens"]:
            tok = np.fromfile(path, dtype=np.uint16)
            for row in tok[: len(tok) // L * L].reshape(-1, L):
                w.write({"input_ids": row})
    rows = []

    def run(workers: int, **where: str) -> tuple[int, float]:
        clean_stale_shared_memory()
        t0 = time.perf_counter()
        ds = StreamingDataset(batch_size=B, shuffle=True, shuffle_seed=0, **where)
        n = 0
        for b in StreamingDataLoader(ds, batch_size=B, num_workers=workers):
            n += int(b["input_ids"].numel())
            if n >= steps * B * L:
                break
        return n, time.perf_counter() - t0

    for w in (0, 2):
        wait_until_quiet()
        rows.append(["MosaicML Streaming", "local disk", w, "-", *run(w, local=str(local))])
        cache = root / f"mds-cache-{w}"
        for state in ("cold", "warm"):
            wait_until_quiet()
            rows.append(["MosaicML Streaming", "S3", w, state,
                         *run(w, remote="s3://bench/mds", local=str(cache))])
    (root / "streaming.json").write_text(json.dumps(rows))


def streaming_runs(root: Path, args, results: list) -> str:
    python = args.streaming_python
    if not python.exists():
        return "not run: .venv-streaming is not built on this machine (`make bench-streaming-env`)"
    job = root / "streaming-job.json"
    job.write_text(json.dumps({"seq_len": args.seq_len, "batch": args.batch, "steps": args.steps,
                               "root": str(root), "tokens": [
                                   str(root / "store_local" / k / "tokens.bin")
                                   for k in ("web", "code")]}))
    r = subprocess.run([str(python), __file__, "--streaming-child", str(job)], text=True,
                       capture_output=True, cwd=REPO)
    if r.returncode != 0:
        tail = " ".join(r.stderr.strip().splitlines()[-1:])[:200]
        return f"failed: {tail}"
    results.extend(tuple(row) for row in json.loads((root / "streaming.json").read_text()))
    return "run (MDS shards of 4 MiB, sequences of seq_len, same server)"


# ---------------------------------------------------------------------------------------------
def bench(args: argparse.Namespace, root: Path) -> str:
    from mixbatch.io.fs import reset_filesystems
    from mixbatch.prepare import prepare

    server, _ = start_server()
    try:
        import fsspec

        reset_filesystems()
        fsspec.filesystem("s3").mkdir("bench")
        log("writing corpus")
        write_corpus(root, args.mb)
        local = str(root / "store_local")
        remote = "s3://bench/stores"
        t0 = time.perf_counter()
        prepare(config(root, local, None, args), workers=2)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare(config(root, remote, root / "cache-prep", args), workers=2)
        t_remote = time.perf_counter() - t0
        results: list[tuple] = []
        store_bytes = sum((root / "store_local" / k / "tokens.bin").stat().st_size
                          for k in ("web", "code"))

        def add(system: str, where: str, w: int, cache: str, fn) -> None:
            wait_until_quiet()
            n, s = fn()
            results.append((system, where, w, cache, n, s))
            log(f"{system} {where} w={w} {cache}: {human(n / s, 'tok/s')}")

        for w in (0, 2):
            add("mixbatch read path", "local disk", w, "-",
                lambda w=w: read_path(root, local, None, args, w))
            cache = root / f"cache-ranges-{w}"
            add("mixbatch read path", "S3 ranges", w, "cold",
                lambda w=w, c=cache: read_path(root, remote, c, args, w))
            add("mixbatch read path", "S3 ranges", w, "warm",
                lambda w=w, c=cache: read_path(root, remote, c, args, w))
            add("mixbatch read path", f"S3 ranges + prefetch {args.lookahead}", w, "cold",
                lambda w=w: read_path(root, remote, root / f"cache-pre-{w}", args, w,
                                      args.lookahead))
            # a node-wide cap of a quarter of the store: every fetch past it evicts (the
            # workers share one cache folder and one count)
            add("mixbatch read path", "S3 ranges, cap 1/4 store", w, "cold",
                lambda w=w: read_path(root, remote, root / f"cache-cap-{w}", args, w,
                                      max_bytes=store_bytes // 4))
        for w in (0, 2):
            add("mixbatch loader (torch)", "local disk", w, "-",
                lambda w=w: whole_loader(config(root, local, None, args), args.steps, w))
            cache = root / f"cache-whole-{w}"
            add("mixbatch loader (torch)", "S3 whole store", w, "cold",
                lambda w=w, c=cache: whole_loader(config(root, remote, c, args, whole=True),
                                                  args.steps, w))
            add("mixbatch loader (torch)", "S3 whole store", w, "warm",
                lambda w=w, c=cache: whole_loader(config(root, remote, c, args, whole=True),
                                                  args.steps, w))
            cache = root / f"cache-loader-ranges-{w}"
            add("mixbatch loader (torch)", "S3 ranges", w, "cold",
                lambda w=w, c=cache: whole_loader(config(root, remote, c, args), args.steps, w))
            add("mixbatch loader (torch)", "S3 ranges", w, "warm",
                lambda w=w, c=cache: whole_loader(config(root, remote, c, args), args.steps, w))
        lit_note = "run"
        if args.skip_litdata:
            lit_note = "skipped (--skip-litdata)"
        else:
            try:
                litdata_runs(root, args, results)
            except Exception as e:  # an anchor that cannot read from this server: say so
                lit_note = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                log(f"litdata: {lit_note}")
        mosaic_note = "skipped (--skip-streaming)"
        if not args.skip_streaming:
            mosaic_note = streaming_runs(root, args, results)
            log(f"streaming: {mosaic_note}")
    finally:
        server.terminate()
        server.wait()

    base = {w: next(r for r in results if r[0] == "mixbatch read path" and r[1] == "local disk"
                    and r[2] == w) for w in (0, 2)}
    rows = []
    for system, where, w, cache, n, s in results:
        ref = base[w][4] / base[w][5]
        rows.append((system, where, w, cache, human(n, ""), f"{s:.2f}", human(n / s, "tok/s"),
                     f"{(n / s) / ref:.2f}"))
    size = sum((root / "store_local" / k / "tokens.bin").stat().st_size for k in ("web", "code"))
    head = header("bench_remote: token stores on a local S3 server (moto) against local disk",
                  PACKAGES, {"store": f"{human(size, 'B')} of uint16 tokens in 2 sources; "
                                      f"{args.steps} steps of {args.batch}x{args.seq_len}",
                             "prepare": f"local {t_local:.1f}s, to S3 {t_remote:.1f}s "
                                        "(2 processes)",
                             "LitData": lit_note, "MosaicML Streaming": mosaic_note,
                             "background load": background_summary()})
    return head + "\n\n" + table(
        ("system", "where", "workers", "cache", "tokens", "seconds", "tokens/s",
         "vs local read path (same workers)"), rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.streaming_child is not None:
        streaming_child(args.streaming_child)
        return

    def setup(workdir: Path) -> None:
        for p in workdir.glob("cache-*"):
            shutil.rmtree(p, ignore_errors=True)

    run_in_workdir(bench, args, "remote", setup)


if __name__ == "__main__":
    main()
