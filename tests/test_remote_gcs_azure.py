"""gs:// and az:// against real local servers started here on free ports: a Google Cloud
Storage emulator (``gcp-storage-emulator``, pure Python) for gcsfs, and Azurite (npm) for adlfs.
Sources read from the bucket and a store written to it give the local store and batches; bad
input is one clear line."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write_jsonl
from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError
from mixbatch.io.fs import RemotePath, reset_filesystems
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from remote_common import CORPUS, batches, cfg, free_port, same, texts, wait_for_port

fsspec = pytest.importorskip("fsspec")

# gcsfs asks a bucket's layout over gRPC first, which an emulator does not serve (each call
# then waits for a timeout); the plain JSON API is what the emulator speaks
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    pytest.importorskip("gcsfs")
    server_mod = pytest.importorskip("gcp_storage_emulator.server")
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    port = free_port()
    server = server_mod.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        mp_.setenv("NO_GCE_CHECK", "true")
        mp_.setenv("MIXBATCH_REMOTE_BACKOFF", "0.01")
        reset_filesystems()
        yield "gs"
        reset_filesystems()
    server.stop()


def _azurite() -> str | None:
    found = os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")
    return found if found and os.access(found, os.X_OK) else None


@pytest.fixture(scope="module")
def azure(tmp_path_factory) -> Iterator[str]:
    pytest.importorskip("adlfs")
    exe = _azurite()
    if exe is None:
        pytest.skip("azurite-blob is not installed (npm install -g azurite)")
    port = free_port()
    # an account made for this run: Azurite takes its name and key from AZURITE_ACCOUNTS
    key = base64.b64encode(os.urandom(32)).decode()
    env = {**os.environ, "AZURITE_ACCOUNTS": f"mixbatchtest:{key}"}
    proc = subprocess.Popen([exe, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent",
                             "--skipApiVersionCheck", "--loose", "--inMemoryPersistence"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        conn = (f"DefaultEndpointsProtocol=http;AccountName=mixbatchtest;AccountKey={key};"
                f"BlobEndpoint=http://127.0.0.1:{port}/mixbatchtest;")
        with pytest.MonkeyPatch.context() as mp_:
            mp_.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
            mp_.setenv("MIXBATCH_REMOTE_BACKOFF", "0.01")
            reset_filesystems()
            yield "az"
            reset_filesystems()
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(params=["gcs", "azure"])
def bucket(request, tmp_path: Path) -> dict:
    """The corpus on disk and in a fresh bucket (container) of the scheme's server."""
    scheme = request.getfixturevalue(request.param)
    name = f"b{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem(scheme, skip_instance_cache=True)
    fs.mkdir(name)
    for rel, (seed, n) in CORPUS.items():
        local = write_jsonl(tmp_path / "data" / rel, texts(seed, n))
        fs.put_file(str(local), f"{name}/raw/{rel}")
    return {"scheme": scheme, "name": name, "fs": fs, "tmp": tmp_path}


def _cfg(b: dict, remote: bool) -> dict:
    url = f"{b['scheme']}://{b['name']}"
    return cfg(b["tmp"], f"{url}/raw" if remote else None, f"{url}/stores" if remote else None)


def test_bucket_sources_and_store_give_the_local_store_and_batches(bucket: dict) -> None:
    local = config_from_dict(_cfg(bucket, remote=False))
    remote = config_from_dict(_cfg(bucket, remote=True))
    prepare(local, workers=1)
    rep = prepare(remote, workers=2)
    assert {s.status for s in rep.sources.values()} == {"built"}
    fs, name = bucket["fs"], bucket["name"]
    fs.invalidate_cache()
    for source in ("web", "code"):
        assert fs.cat_file(f"{name}/stores/{source}/tokens.bin") == \
            (Path(local.store) / source / "tokens.bin").read_bytes()
    loader = MixedLoader(remote)
    assert isinstance(loader.stores[0].path, RemotePath)
    assert str(loader.stores[0].path).startswith(f"{bucket['scheme']}://")
    same(batches(loader, 20), batches(MixedLoader(local), 20))
    assert prepare(remote, workers=1).sources["web"].status != "built"  # up to date


def test_bucket_bad_input_is_one_clear_line(bucket: dict) -> None:
    scheme, name = bucket["scheme"], bucket["name"]
    for path, message in [(f"{scheme}://{name}/raw/nothing/*.jsonl", "matches no files"),
                          (f"{scheme}://{name}/raw/missing.jsonl", "does not exist"),
                          (f"{scheme}://nobucket{name}/raw/*.jsonl", "does not exist")]:
        data = _cfg(bucket, remote=True)
        data["sources"]["web"]["path"] = path
        with pytest.raises(ConfigError, match=message) as e:
            prepare(config_from_dict(data), workers=1)
        assert "\n" not in str(e.value) and path in str(e.value)


def test_azure_without_credentials_says_where_they_come_from(bucket: dict, monkeypatch) -> None:
    if bucket["scheme"] != "az":
        pytest.skip("the GCS emulator serves anonymous callers")
    for k in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(k)
    reset_filesystems()
    try:
        with pytest.raises(ConfigError, match=r"AZURE_STORAGE_ACCOUNT_NAME") as e:
            prepare(config_from_dict(_cfg(bucket, remote=True)), workers=1)
        assert "\n" not in str(e.value)
    finally:
        reset_filesystems()
