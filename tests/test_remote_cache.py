"""The cache's size cap holds for the node: several processes share one cache folder, each
entry is evicted whole, least recently used first, and never while a process reads it (a pin
that a killed process drops)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from mixbatch.errors import StoreError
from mixbatch.io.cache import CacheSettings, StoreCache, locked_index, open_pinned

BLOCK = 1000
CAP = 12 * BLOCK


def _cache(base: Path, cap: int = CAP, key: str = "k") -> StoreCache:
    return StoreCache(CacheSettings(dir=base, max_bytes=cap), key)


def _writer(args: tuple) -> tuple[int, int, list[str]]:
    """Write blocks into the shared cache, reading some back; after every write, measure the
    folder under the index lock (no write is half done then)."""
    base, key, seed, n = args
    cache = _cache(Path(base), key=key)
    rng = np.random.default_rng(seed)
    worst, hits, bad = 0, 0, []
    for i in range(n):
        name = f"tokens.{seed}-{i}"
        body = bytes([seed % 256]) * BLOCK
        cache.write(name, body)
        back = cache.read(f"tokens.{seed}-{int(rng.integers(0, i + 1))}")
        if back is not None:
            hits += 1
            if back != bytes([seed % 256]) * BLOCK:
                bad.append(name)
        with locked_index(Path(base)):
            worst = max(worst, cache.usage())
    return worst, hits, bad


def test_cap_holds_across_processes(tmp_path: Path) -> None:
    jobs = [(str(tmp_path), f"store{k % 2}", k, 40) for k in range(4)]
    with mp.get_context("spawn").Pool(4) as pool:
        got = pool.map(_writer, jobs)
    assert max(w for w, _, _ in got) <= CAP  # 160 blocks written, never more than 12 held
    assert all(not bad for _, _, bad in got)  # a cached entry is whole and right
    assert sum(h for _, h, _ in got) > 0
    cache = _cache(tmp_path)
    assert cache.usage() <= CAP
    assert cache.counted() == cache.usage()  # the node's count is what the folder holds
    leftovers = [p for p in (tmp_path / "stores").rglob(".*") if ".tmp-" in p.name]
    assert not leftovers


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = _cache(tmp_path, cap=4 * BLOCK)
    for i in range(4):
        cache.write(f"tokens.{i}", b"x" * BLOCK)
        time.sleep(0.01)
    assert cache.read("tokens.0") is not None  # a hit makes it the newest
    cache.write("tokens.4", b"y" * BLOCK)
    held = sorted(p.name for p in cache.root.glob("tokens.*"))
    assert "tokens.0" in held and "tokens.1" not in held and "tokens.4" in held
    assert cache.usage() <= 4 * BLOCK


def _pin_and_wait(path: str, ready: mp.Event) -> None:
    f = open_pinned(Path(path))
    assert f is not None
    ready.set()
    time.sleep(60)


def test_a_pinned_entry_is_not_evicted_and_a_killed_pin_is_dropped(tmp_path: Path) -> None:
    cache = _cache(tmp_path, cap=3 * BLOCK)
    cache.write("tokens.0", b"a" * BLOCK)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    reader = ctx.Process(target=_pin_and_wait, args=(str(cache.path("tokens.0")), ready))
    reader.start()
    try:
        assert ready.wait(60)
        for i in range(1, 8):  # far past the cap: everything else goes, the pinned entry stays
            time.sleep(0.005)
            cache.write(f"tokens.{i}", b"b" * BLOCK)
        assert cache.path("tokens.0").read_bytes() == b"a" * BLOCK
        assert cache.usage() <= 3 * BLOCK
    finally:
        os.kill(reader.pid, signal.SIGKILL)  # a crash: the kernel drops its pin
        reader.join()
    cache.write("tokens.8", b"c" * BLOCK)
    cache.write("tokens.9", b"c" * BLOCK)
    assert not cache.path("tokens.0").exists()  # the oldest, no longer pinned
    assert cache.usage() <= 3 * BLOCK


def test_no_room_when_everything_is_pinned(tmp_path: Path) -> None:
    cache = _cache(tmp_path, cap=2 * BLOCK)
    cache.write("tokens.0", b"a" * BLOCK)
    cache.write("tokens.1", b"a" * BLOCK)
    pins = [open_pinned(cache.path(f"tokens.{i}")) for i in range(2)]  # this process reads both
    try:
        assert cache.write("tokens.2", b"b" * BLOCK) is False  # served, not cached
        assert cache.uncached == 1 and not cache.path("tokens.2").exists()
        with pytest.raises(StoreError, match=r"no room for tokens\.bin"):
            cache.put_file("tokens.bin", BLOCK, lambda p: p.write_bytes(b"z" * BLOCK))
    finally:
        for f in pins:
            assert f is not None
            f.close()
    assert cache.write("tokens.2", b"b" * BLOCK) is True
    assert cache.usage() <= 2 * BLOCK


def test_a_count_left_high_by_a_crash_is_corrected(tmp_path: Path) -> None:
    cache = _cache(tmp_path, cap=5 * BLOCK)
    cache.write("tokens.0", b"a" * BLOCK)
    with locked_index(tmp_path) as idx:  # a process reserved bytes, then died before renaming
        idx.used = 5 * BLOCK
        idx.save()
    stale = cache.root / ".tokens.9.tmp-1-1"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    cache.write("tokens.1", b"b" * BLOCK)  # over by the count: the scan finds the truth
    assert cache.path("tokens.0").exists() and cache.path("tokens.1").exists()
    assert cache.counted() == cache.usage() == 2 * BLOCK
    assert not stale.exists()  # a dead process's temporary file is cleaned by the scan


def test_a_memory_mapped_store_keeps_its_files_pinned(tmp_path: Path) -> None:
    """``cache.whole``: ``tokens.bin`` is memory-mapped, and pinned while the map lives."""
    import gc

    from conftest import write_jsonl
    from mixbatch.config import config_from_dict
    from mixbatch.io.fs import RemotePath
    from mixbatch.prepare import prepare
    from mixbatch.store import open_store
    from mixbatch.store_remote import publish_store

    write_jsonl(tmp_path / "web.jsonl", [f"document {i} " * (i % 50 + 1) for i in range(300)])
    prepare(config_from_dict({"store": str(tmp_path / "store"), "sources": {"web": {
        "path": str(tmp_path / "web.jsonl")}}}), workers=1)
    url = f"memory://pins-{os.getpid()}/web"
    publish_store(tmp_path / "store" / "web", RemotePath(url), block_bytes=4096)
    size = (tmp_path / "store" / "web" / "tokens.bin").stat().st_size
    settings = CacheSettings(dir=tmp_path / "cache", max_bytes=size + 8 * BLOCK, whole=True)
    store = open_store(RemotePath(url, settings))
    local = open_store(tmp_path / "store" / "web")
    cache = StoreCache(settings, "other")
    for i in range(12):  # far past the cap: only unpinned entries can go
        cache.write(f"tokens.{i}", b"x" * BLOCK)
    kept = [p for p in (tmp_path / "cache" / "stores").rglob("tokens.bin")]
    assert len(kept) == 1 and kept[0].stat().st_size == size
    assert np.array_equal(store.tokens[: size // 2], local.tokens[: size // 2])
    del store
    gc.collect()
    for i in range(12, 20):  # the map is gone: tokens.bin is the least recently used entry
        cache.write(f"tokens.{i}", b"x" * BLOCK)
    assert not list((tmp_path / "cache" / "stores").rglob("tokens.bin"))
    assert cache.usage() <= settings.max_bytes
