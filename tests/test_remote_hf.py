"""hf:// through ``huggingface_hub``'s ``HfFileSystem`` against a local server speaking the Hub
API subset it uses (:mod:`fake_hub`), found through ``HF_ENDPOINT`` and authorised by
``HF_TOKEN``: raw sources in a dataset repository, and a token store kept in one, give the local
store and batches; bad input is one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write_jsonl
from fake_hub import FakeHub
from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError
from mixbatch.io.fs import RemotePath, reset_filesystems
from mixbatch.loader.loader import MixedLoader
from mixbatch.prepare import prepare
from remote_common import CORPUS, batches, cfg, same, texts

hf_constants = pytest.importorskip("huggingface_hub.constants")
fsspec = pytest.importorskip("fsspec")

REPO = "mixbatch/corpus"
TOKEN = "hf_test_token_for_the_local_server"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Iterator[dict]:
    repo = tmp_path / "hub" / REPO
    for rel, (seed, n) in CORPUS.items():
        write_jsonl(tmp_path / "data" / rel, texts(seed, n))
        write_jsonl(repo / "raw" / rel, texts(seed, n))
    with FakeHub(tmp_path / "hub", token=TOKEN) as server:
        # HF_ENDPOINT is read once, when huggingface_hub is imported: set it there too
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("MIXBATCH_REMOTE_BACKOFF", "0.01")
        reset_filesystems()
        try:
            yield {"tmp": tmp_path, "repo": repo, "server": server}
        finally:
            reset_filesystems()


def _cfg(h: dict, remote_in: bool, store: str | None = None) -> dict:
    tmp = h["tmp"]
    return cfg(tmp, f"hf://datasets/{REPO}/raw" if remote_in else None,
               store or str(tmp / ("hf" if remote_in else "lo")))


def test_hub_sources_and_a_store_in_a_repo_give_the_local_store_and_batches(hub: dict) -> None:
    from mixbatch.store_remote import publish_store

    local = config_from_dict(_cfg(hub, remote_in=False))
    prepare(local, workers=1)
    from_hub = config_from_dict(_cfg(hub, remote_in=True))
    prepare(from_hub, workers=2)
    for source in ("web", "code"):
        assert (Path(from_hub.store) / source / "tokens.bin").read_bytes() == \
            (Path(local.store) / source / "tokens.bin").read_bytes()
    # a store kept in a dataset repository (uploaded by the repository's owner), read by ranges
    mem = fsspec.filesystem("memory")
    for source in ("web", "code"):
        publish_store(Path(local.store) / source, RemotePath(f"memory://hfstore/{source}"),
                      block_bytes=4096)
        for name in mem.ls(f"/hfstore/{source}", detail=False):
            dest = hub["repo"] / "stores" / source / name.rsplit("/", 1)[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(mem.cat_file(name))
    mem.rm("/hfstore", recursive=True)
    remote = config_from_dict(_cfg(hub, remote_in=False, store=f"hf://datasets/{REPO}/stores"))
    loader = MixedLoader(remote)
    assert str(loader.stores[0].path).startswith("hf://datasets/")
    same(batches(loader, 20), batches(MixedLoader(local), 20))
    assert any("/resolve/" in r for r in hub["server"].requests)


def test_hub_bad_input_is_one_clear_line(hub: dict, monkeypatch) -> None:
    for path, message in [(f"hf://datasets/{REPO}/raw/nothing/*.jsonl", "matches no files"),
                          (f"hf://datasets/{REPO}/raw/missing.jsonl", "does not exist"),
                          ("hf://datasets/mixbatch/no-such-repo/raw/*.jsonl", "does not exist")]:
        data = _cfg(hub, remote_in=True)
        data["sources"]["web"]["path"] = path
        with pytest.raises(ConfigError, match=message) as e:
            prepare(config_from_dict(data), workers=1)
        assert "\n" not in str(e.value) and path in str(e.value)
    # no token: the server answers as the Hub does for a private repository
    monkeypatch.delenv("HF_TOKEN")
    reset_filesystems()
    with pytest.raises(ConfigError, match="HF_TOKEN") as e:
        prepare(config_from_dict(_cfg(hub, remote_in=True)), workers=1)
    assert "\n" not in str(e.value)
