"""Faults of object storage, injected by a fake fsspec filesystem (``faulty://``): connection
resets, 503s, a slow first byte that times out, truncated range responses, objects changed under
the reader. Reads retry and then give the local bytes, or stop with one clear line naming the
URL; the cache never holds a partial or stale block."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from conftest import write_jsonl
from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError
from mixbatch.io.cache import CacheSettings
from mixbatch.io.fs import RemotePath, read_range
from mixbatch.io.retry import RemoteError, RetryPolicy, with_retries
from mixbatch.prepare import prepare
from mixbatch.store import open_store
from mixbatch.store_remote import publish_store


class FaultyFS(MemoryFileSystem):
    """An in-memory object store whose reads fail on demand.

    ``faults`` is a list of actions taken by the next reads of objects whose path contains
    ``target``: ``reset``, ``503``, ``slow`` (a first byte that never comes in time),
    ``truncate`` (one byte short), ``mutate`` (the object grows before the read); ``rate``
    adds random transient faults."""

    protocol = "faulty"
    store: dict = {}  # noqa: RUF012  (fsspec's own convention: a class-level store)
    pseudo_dirs = [""]  # noqa: RUF012
    faults: list[str] = []  # noqa: RUF012
    target = ""
    rate = 0.0
    rng = np.random.default_rng(0)
    reads = 0

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("faulty://"):
            path = path[len("faulty://"):]
        return super()._strip_protocol(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        cls = type(self)
        if cls.target in path:
            cls.reads += 1
            action = cls.faults.pop(0) if cls.faults else None
            if action is None and cls.rate and cls.rng.random() < cls.rate:
                action = str(cls.rng.choice(["reset", "503", "truncate"]))
            if action == "reset":
                raise ConnectionResetError(104, "Connection reset by peer")
            if action == "503":
                raise OSError("503 Service Unavailable (SlowDown)")
            if action == "slow":
                time.sleep(0.02)
                raise TimeoutError("read timeout: no first byte")
            if action == "mutate":
                p = self._strip_protocol(path)
                MemoryFileSystem.pipe_file(self, p, self.store[p].getvalue() + b'{"text": "late"}\n')
            data = super().cat_file(path, start=start, end=end, **kwargs)
            if action == "truncate":
                return data[:-1]
            return data
        return super().cat_file(path, start=start, end=end, **kwargs)


fsspec.register_implementation("faulty", FaultyFS, clobber=True)
FAST = RetryPolicy(tries=4, base=0.001, cap=0.01)


@pytest.fixture(autouse=True)
def clean_fs(monkeypatch):
    FaultyFS.store.clear()
    FaultyFS.faults, FaultyFS.target, FaultyFS.rate, FaultyFS.reads = [], "", 0.0, 0
    monkeypatch.setattr("mixbatch.io.retry.DEFAULT_RETRY", FAST)
    yield
    FaultyFS.store.clear()


def _local_store(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    texts = [" ".join(["tok"] * int(rng.integers(1, 400))) + f" {i}" for i in range(200)]
    write_jsonl(tmp / "data" / "web.jsonl", texts)
    cfg = config_from_dict({"store": str(tmp / "store"), "sources": {"web": {"path":
                            str(tmp / "data" / "web.jsonl")}}})
    prepare(cfg, workers=1)
    return tmp / "store" / "web"


def _remote(tmp: Path, **cache) -> tuple:
    folder = _local_store(tmp)
    url = RemotePath("faulty://bucket/stores/web")
    publish_store(folder, url, block_bytes=4096)
    settings = CacheSettings(dir=tmp / "cache", **cache)
    return open_store(folder), RemotePath(url.url, settings), settings


def test_transient_faults_are_retried_and_give_the_same_bytes(tmp_path: Path) -> None:
    ref, url, _ = _remote(tmp_path)
    for fault in ("reset", "503", "slow", "truncate"):
        cache = tmp_path / f"cache-{fault}"
        store = open_store(RemotePath(url.url, CacheSettings(dir=cache)))
        FaultyFS.target, FaultyFS.faults = "tokens.bin", [fault, fault]
        docs = np.arange(len(ref))[::7]
        assert np.array_equal(store.gather(docs)[0], ref.gather(docs)[0]), fault
        assert not FaultyFS.faults
        # warm cache afterwards: every block on disk verifies
        for p in (cache / "stores").glob("*/tokens.*"):
            b = int(p.name.split(".")[1])
            assert store.tokens._ok(b, p.read_bytes())


def test_random_faults_never_feed_twice_or_skip(tmp_path: Path, monkeypatch) -> None:
    ref, url, _ = _remote(tmp_path, memory_bytes=8192)
    FaultyFS.target, FaultyFS.rate = "tokens.bin", 0.2
    monkeypatch.setattr("mixbatch.io.retry.DEFAULT_RETRY", RetryPolicy(tries=8, base=0.001, cap=0.01))
    store = open_store(url)
    order = np.random.default_rng(3).permutation(len(ref))
    for chunk in np.array_split(order, 20):
        got, lens = store.gather(chunk)
        want, want_lens = ref.gather(chunk)
        assert np.array_equal(lens, want_lens) and np.array_equal(got, want)
    assert FaultyFS.reads > 0


def test_persistent_faults_stop_with_the_url_and_cache_nothing(tmp_path: Path) -> None:
    ref, url, _ = _remote(tmp_path)
    store = open_store(url)
    for fault in ("reset", "503", "truncate"):
        FaultyFS.target, FaultyFS.faults = "tokens.bin", [fault] * 50
        with pytest.raises(RemoteError, match=r"faulty://bucket/stores/web/tokens.bin: .*failed "
                                               r"after 4 tries") as e:
            store.gather(np.arange(5))
        assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "stores").glob("*/tokens.*"))
    FaultyFS.faults = []
    assert np.array_equal(store.gather(np.arange(5))[0], ref.gather(np.arange(5))[0])


def test_object_changed_after_prepare_is_a_clear_error(tmp_path: Path) -> None:
    _, url, _ = _remote(tmp_path)
    store = open_store(url)
    key = "/bucket/stores/web/tokens.bin"
    raw = bytearray(FaultyFS.store[key].getvalue())
    raw[10] ^= 0xFF  # same size, other bytes
    FaultyFS().pipe_file(key, bytes(raw))
    with pytest.raises(RemoteError, match="do not match the store's checksum twice; the object "
                                          "changed since the store was written"):
        store.gather(np.arange(3))
    assert not list((tmp_path / "cache" / "stores").glob("*/tokens.0"))
    # a different size is seen when the store is opened
    FaultyFS().pipe_file(key, bytes(raw) + b"\0\0")
    with pytest.raises(RemoteError, match=r"tokens.bin: \d+ bytes, the store metadata says"):
        open_store(url)


def test_damaged_cache_file_is_fetched_again(tmp_path: Path) -> None:
    ref, url, _ = _remote(tmp_path)
    docs = np.arange(len(ref))
    open_store(url).gather(docs)
    blocks = sorted((tmp_path / "cache" / "stores").glob("*/tokens.*"))
    blocks[1].write_bytes(blocks[1].read_bytes()[:100])  # a partial file from elsewhere
    fresh = open_store(url)
    assert np.array_equal(fresh.gather(docs)[0], ref.gather(docs)[0])
    assert fresh.tokens.fetched_bytes == 4096
    blocks[0].write_bytes(b"\0" * blocks[0].stat().st_size)  # bit rot: seen with verify_cached
    checked = open_store(RemotePath(url.url, CacheSettings(dir=tmp_path / "cache",
                                                           verify_cached=True)))
    assert np.array_equal(checked.gather(docs)[0], ref.gather(docs)[0])
    assert checked.tokens.fetched_bytes == 4096


def test_remote_inputs_with_faults_prepare_the_local_store(tmp_path: Path) -> None:
    ref = _local_store(tmp_path)
    fs = FaultyFS()
    fs.put_file(str(tmp_path / "data" / "web.jsonl"), "faulty://bucket/raw/web.jsonl")
    cfg = config_from_dict({"store": str(tmp_path / "remote_in"), "sources": {"web": {
        "path": "faulty://bucket/raw/*.jsonl"}}, "cache": {"dir": str(tmp_path / "cache")}})
    FaultyFS.target, FaultyFS.faults = "raw/web.jsonl", ["reset", "503", "slow"]
    prepare(cfg, workers=1)
    assert not FaultyFS.faults
    assert (tmp_path / "remote_in" / "web" / "tokens.bin").read_bytes() == \
        (ref / "tokens.bin").read_bytes()
    meta = json.loads((tmp_path / "remote_in" / "web" / "meta.json").read_text())
    assert meta["files"][0]["path"] == "faulty://bucket/raw/web.jsonl"
    # an input that changes while it is read: stop, keep nothing of it
    FaultyFS.faults = ["mutate"]
    with pytest.raises(RemoteError, match=r"faulty://bucket/raw/web.jsonl: the object changed "
                                          "while it was being read"):
        prepare(cfg, workers=1, force=True)


def test_with_retries_passes_permanent_errors_at_once() -> None:
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(Exception, match="s3://b/k: not found") as e:
        with_retries(missing, "s3://b/k", FAST)
    assert len(calls) == 1 and e.value.exit_code == 2
    with pytest.raises(ConfigError, match="faulty://bucket/none: not found"):
        read_range(RemotePath("faulty://bucket/none"), 0, 3)


def test_prefetch_plan_fetches_a_planned_step(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mixbatch.store import prefetch_plan

    ref, url, _ = _remote(tmp_path)
    store = open_store(url)
    plan = SimpleNamespace(source=np.array([0, 0, 0]), doc=np.array([3, 150, 77]))
    prefetch_plan([store], plan)
    store.tokens.wait_prefetch()
    fetched = store.tokens.fetched_bytes
    assert fetched > 0
    assert np.array_equal(store.gather(plan.doc)[0], ref.gather(plan.doc)[0])
    assert store.tokens.fetched_bytes == fetched  # read from what was prefetched
    prefetch_plan([ref], plan)  # local store: nothing to do


def test_token_data_at_a_url_is_refused(tmp_path: Path) -> None:
    cfg = config_from_dict({"store": str(tmp_path / "s"), "sources": {"old": {
        "path": "s3://bucket/megatron/corpus", "format": "megatron"}}})
    with pytest.raises(ConfigError, match="read in place from local files"):
        prepare(cfg, workers=1)
