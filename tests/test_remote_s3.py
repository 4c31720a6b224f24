"""Sources and token stores on a real S3-compatible server (moto's standalone server, started
here on a free local port); every remote run is compared with the same run on local files."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import write_config, write_jsonl
from mixbatch.config import config_from_dict, load_config
from mixbatch.errors import ConfigError
from mixbatch.io.fs import RemotePath, reset_filesystems
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from mixbatch.store import open_store
from remote_common import CORPUS, batches, cfg, free_port, same, texts

moto_server = pytest.importorskip("moto.server")
fsspec = pytest.importorskip("fsspec")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server for this module; endpoint and credentials in the standard variables."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MIXBATCH_REMOTE_BACKOFF": "0.01"}
    with pytest.MonkeyPatch.context() as mp_:
        for k, v in env.items():
            mp_.setenv(k, v)
        reset_filesystems()
        yield env
        reset_filesystems()
    server.stop()


@pytest.fixture
def corpus(tmp_path: Path, s3_env) -> dict:
    """The same corpus on disk and in a fresh bucket."""
    bucket = f"b{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(bucket)
    for rel, (seed, n) in CORPUS.items():
        local = write_jsonl(tmp_path / "data" / rel, texts(seed, n))
        fs.put_file(str(local), f"{bucket}/raw/{rel}")
    return {"bucket": bucket, "fs": fs, "tmp": tmp_path}


def _cfg(c: dict, *, remote_in: bool, remote_store: bool, **over) -> dict:
    url = f"s3://{c['bucket']}"
    store = over.pop("store", f"{url}/stores" if remote_store else None)
    return cfg(c["tmp"], f"{url}/raw" if remote_in else None, store, **over)


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "ranges"])
def test_s3_sources_and_store_give_the_local_batches_and_resume(corpus: dict, whole: bool) -> None:
    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    data = _cfg(corpus, remote_in=True, remote_store=True)
    data["cache"]["whole"] = whole
    remote = config_from_dict(data)
    prepare(local, workers=1)
    rep = prepare(remote, workers=2)
    assert {s.status for s in rep.sources.values()} == {"built"}
    keys = corpus["fs"].ls(f"{corpus['bucket']}/stores/web")
    assert {k.rsplit("/", 1)[1] for k in keys} == {"meta.json", "tokens.bin", "offsets.npy",
                                                   "blocks.npy"}
    # the same tokens, byte for byte
    for name in ("web", "code"):
        lo = (Path(local.store) / name / "tokens.bin").read_bytes()
        assert corpus["fs"].cat_file(f"{corpus['bucket']}/stores/{name}/tokens.bin") == lo
    straight_local = batches(MixedLoader(local), 30)
    remote_loader = MixedLoader(remote)
    assert isinstance(remote_loader.stores[0].path, RemotePath)
    same(batches(remote_loader, 30), straight_local)
    # resume: a remote run cut at step 12 continues like the local straight run
    first = MixedLoader(remote)
    head = batches(first, 12)
    state = json.loads(json.dumps(first.state_dict()))
    second = MixedLoader(remote)
    second.load_state_dict(state)
    same(head + batches(second, 18), straight_local)
    # ... and the state moves between local and remote runs of the same config
    third = MixedLoader(local)
    third.load_state_dict(state)
    same(batches(third, 18), straight_local[12:])


def test_span_source_reads_the_local_spans(corpus: dict) -> None:
    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    remote = config_from_dict(_cfg(corpus, remote_in=False, remote_store=True))
    prepare(local, workers=1)
    prepare(remote, workers=1)
    ref = open_store(Path(local.store) / "web")
    st = open_store(remote.store_dir / "web")
    rng = np.random.default_rng(2)
    docs = rng.integers(0, len(ref), 50)
    start = (rng.random(50) * ref.lengths[docs]).astype(np.int64)
    end = start + (rng.random(50) * (ref.lengths[docs] - start)).astype(np.int64)

    def spans(store) -> list[np.ndarray]:
        tokens, doc_start, doc = store.span_source(docs, start, end)
        return [np.asarray(tokens[doc_start[d] + a: doc_start[d] + b])
                for d, a, b in zip(doc.tolist(), start.tolist(), end.tolist(), strict=True)]

    got, want = spans(st), spans(ref)
    assert isinstance(st.span_source(docs, start, end)[0], np.ndarray)
    assert all(np.array_equal(x, y) for x, y in zip(got, want, strict=True))
    assert ref.span_source(docs, start, end)[0] is ref.tokens  # local: nothing copied


def test_rerun_is_up_to_date_even_without_the_staging_folder(corpus: dict) -> None:
    cfg = config_from_dict(_cfg(corpus, remote_in=True, remote_store=True))
    prepare(cfg, workers=1)
    meta_before = corpus["fs"].info(f"{corpus['bucket']}/stores/web/meta.json")["ETag"]
    assert {s.status for s in prepare(cfg, workers=1).sources.values()} == {"up to date"}
    import shutil

    shutil.rmtree(corpus["tmp"] / "cache" / "staging")
    rep = prepare(cfg, workers=1)
    assert {s.status for s in rep.sources.values()} == {"up to date"} and rep.units_run == 0
    corpus["fs"].invalidate_cache()
    assert corpus["fs"].info(f"{corpus['bucket']}/stores/web/meta.json")["ETag"] == meta_before
    # a changed input object is noticed by its ETag and rebuilt
    corpus["fs"].pipe(f"{corpus['bucket']}/raw/code/c.jsonl",
                      (json.dumps({"text": "new"}) + "\n").encode())
    reset_filesystems()
    rep = prepare(config_from_dict(_cfg(corpus, remote_in=True, remote_store=True)), workers=1)
    assert rep.sources["code"].status == "built" and rep.sources["code"].documents == 1
    assert rep.sources["web"].status == "up to date"


def test_interrupted_prepare_of_remote_inputs_resumes_without_rereading(corpus: dict,
                                                                       monkeypatch) -> None:
    import mixbatch.prepare as prep

    cfg = config_from_dict(_cfg(corpus, remote_in=True, remote_store=True))
    ran: list[str] = []
    real = prep._run_unit

    def spy(job):
        ran.append(str(job.unit.path))
        return real(job)

    monkeypatch.setattr(prep, "_run_unit", spy)
    prep.prepare(cfg, workers=1, shard=(0, 2))  # half the work, as if killed half way
    first = list(ran)
    assert first and not corpus["fs"].exists(f"{corpus['bucket']}/stores/web/meta.json")
    ran.clear()
    rep = prep.prepare(cfg, workers=1)
    assert set(ran).isdisjoint(first) and len(ran) + len(first) == 3
    assert {s.status for s in rep.sources.values()} == {"built"}
    ref = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(ref, workers=1)
    fs = corpus["fs"]
    for name in ("web", "code"):
        assert fs.cat_file(f"{corpus['bucket']}/stores/{name}/tokens.bin") == \
            (Path(ref.store) / name / "tokens.bin").read_bytes()


def test_cache_warm_reads_fetch_nothing_and_respect_the_cap(corpus: dict) -> None:
    data = _cfg(corpus, remote_in=False, remote_store=True)
    prepare(config_from_dict(data), workers=1)
    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(local, workers=1)
    ref = open_store(Path(local.store) / "web")
    url = f"s3://{corpus['bucket']}/stores/web"
    cold = open_store(config_from_dict(data).store_dir / "web")
    idx = np.random.default_rng(0).integers(0, ref.num_tokens, 6)
    assert np.array_equal(cold.tokens[idx], ref.tokens[idx])
    assert 0 < cold.tokens.fetched_bytes < (Path(local.store) / "web" / "tokens.bin").stat().st_size
    warm = open_store(config_from_dict(data).store_dir / "web")
    assert np.array_equal(warm.tokens[idx], ref.tokens[idx])
    assert warm.tokens.fetched_bytes == 0
    docs = np.arange(len(ref))
    assert np.array_equal(warm.gather(docs)[0], ref.gather(docs)[0])
    # prefetch along a planned order, then read without waiting
    order = np.random.default_rng(1).permutation(len(ref))[:40]
    pre = open_store(config_from_dict(_cfg(corpus, remote_in=False, remote_store=True,
                                           cache={"dir": str(corpus["tmp"] / "c2"),
                                                  "block_bytes": "4KiB"})).store_dir / "web")
    pre.prefetch(order)
    pre.tokens.wait_prefetch()
    fetched = pre.tokens.fetched_bytes
    assert fetched > 0
    assert np.array_equal(pre.gather(order)[0], ref.gather(order)[0])
    assert pre.tokens.fetched_bytes == fetched
    # a cap of a few blocks: reading everything keeps the cache folder under it
    cap = 5 * 4096
    small = config_from_dict(_cfg(corpus, remote_in=False, remote_store=True,
                                  cache={"dir": str(corpus["tmp"] / "c3"), "max_bytes": cap,
                                         "memory_bytes": 8192}))
    capped = open_store(small.store_dir / "web")
    assert np.array_equal(capped.gather(docs)[0], ref.gather(docs)[0])
    blocks = list((corpus["tmp"] / "c3" / "stores").glob("*/tokens.*"))
    assert sum(p.stat().st_size for p in blocks) <= cap
    assert url in str(capped.path)


def _read_worker(args: tuple) -> tuple[bytes, int]:
    data, env, docs = args
    os.environ.update(env)
    from mixbatch.config import config_from_dict as make
    from mixbatch.store import open_store as open_

    store = open_(make(data).store_dir / "web")
    return store.gather(np.asarray(docs))[0].tobytes(), store.tokens.fetched_bytes


def test_processes_share_one_cache(corpus: dict, s3_env: dict) -> None:
    data = _cfg(corpus, remote_in=False, remote_store=True)
    prepare(config_from_dict(data), workers=1)
    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(local, workers=1)
    ref = open_store(Path(local.store) / "web")
    rng = np.random.default_rng(5)
    jobs = [(data, s3_env, rng.permutation(len(ref))[:120].tolist()) for _ in range(4)]
    with mp.get_context("spawn").Pool(4) as pool:
        got = pool.map(_read_worker, jobs)
    for (_, _, docs), (tokens, _) in zip(jobs, got, strict=True):
        assert tokens == ref.gather(np.asarray(docs))[0].tobytes()
    # each block crossed the network once for the whole node, however the processes met
    size = (Path(local.store) / "web" / "tokens.bin").stat().st_size
    assert 0 < sum(fetched for _, fetched in got) <= size
    root = corpus["tmp"] / "cache" / "stores"
    leftovers = [p for p in root.rglob(".*") if p.name != ".lock" and not p.name.endswith(".verified")]
    assert not leftovers  # no temporary files left behind


def test_bad_remote_input_is_one_clear_line(corpus: dict, monkeypatch) -> None:
    tmp, bucket = corpus["tmp"], corpus["bucket"]
    cases = [
        ({"sources": {"web": {"path": "s3://no-such-bucket-mixbatch/x/*.jsonl"}}},
         "bucket 'no-such-bucket-mixbatch' does not exist"),
        ({"sources": {"web": {"path": f"s3://{bucket}/raw/nothing/*.jsonl"}}}, "matches no files"),
        ({"sources": {"web": {"path": f"s3://{bucket}/raw/missing.jsonl"}}}, "does not exist"),
    ]
    for over, message in cases:
        data = _cfg(corpus, remote_in=True, remote_store=False)
        data["sources"]["web"] = over["sources"]["web"]
        cfg = config_from_dict(data)
        with pytest.raises(ConfigError, match=message) as e:
            prepare(cfg, workers=1)
        assert "\n" not in str(e.value)
    prepare(config_from_dict(_cfg(corpus, remote_in=False, remote_store=True)), workers=1)
    blocker = tmp / "a_file"
    blocker.write_text("x")
    for cache, message in [({"dir": str(blocker / "sub")}, "not writable"),
                           ({"dir": str(tmp / "c"), "max_bytes": 1000, "block_bytes": "4KiB"},
                            "smaller than one range"),
                           ({"dir": str(tmp / "c"), "max_bytes": 8192, "whole": True},
                            "which `whole: true` downloads whole")]:
        cfg = config_from_dict(_cfg(corpus, remote_in=False, remote_store=True, cache=cache))
        with pytest.raises(ConfigError, match=message):
            open_store(cfg.store_dir / "web")
    # no credentials anywhere: one line that says where they come from
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    reset_filesystems()
    try:
        cfg = config_from_dict(_cfg(corpus, remote_in=True, remote_store=False))
        with pytest.raises(ConfigError, match=r"no credentials for s3://.*AWS_ACCESS_KEY_ID"):
            prepare(cfg, workers=1)
    finally:
        reset_filesystems()


def test_cli_exit_codes(corpus: dict, s3_env: dict) -> None:
    tmp, bucket = corpus["tmp"], corpus["bucket"]
    env = {**os.environ, **s3_env}
    good = _cfg(corpus, remote_in=True, remote_store=True)
    write_config(tmp / "ok.yaml", good)
    r = subprocess.run([sys.executable, "-m", "mixbatch", "prepare", str(tmp / "ok.yaml")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert load_config(tmp / "ok.yaml").store_dir.url == f"s3://{bucket}/stores"
    r = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(tmp / "ok.yaml"), "--json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["store"] == f"s3://{bucket}/stores" and stats["documents"] == 290
    for over, code, message in [
        ({"store": "ftpx://x/y"}, 2, "unknown scheme 'ftpx'"),
        ({"sources": {"web": {"path": f"s3://{bucket}/raw/zzz/*.jsonl"}}}, 2, "matches no files"),
    ]:
        bad = json.loads(json.dumps(good))
        if "sources" in over:
            bad["sources"]["web"] = over["sources"]["web"]
        else:
            bad.update(over)
        write_config(tmp / "bad.yaml", bad)
        r = subprocess.run([sys.executable, "-m", "mixbatch", "prepare", str(tmp / "bad.yaml")],
                           capture_output=True, text=True, env=env)
        assert r.returncode == code, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0], r.stderr

