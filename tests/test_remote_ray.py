"""``prepare --backend ray`` on a local Ray instance: reading from and writing to a local S3
server, byte-identical to the local process pool, resumable after the driver is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mixbatch.config import config_from_dict
from mixbatch.prepare import prepare
from test_remote_s3 import _cfg, corpus, s3_env  # noqa: F401  (fixtures)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray(s3_env):  # noqa: F811
    """One local Ray instance for the module, started after the S3 variables are set so that
    its workers inherit them (as a cluster's nodes would have their own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_builds_the_local_store_and_resumes(corpus: dict, local_ray,  # noqa: F811
                                                        monkeypatch) -> None:
    import mixbatch.prepare_ray as pr

    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(local, workers=1)
    remote = config_from_dict(_cfg(corpus, remote_in=True, remote_store=True))
    fs, bucket = corpus["fs"], corpus["bucket"]

    submitted: list[str] = []
    real = pr.run_jobs_ray

    def spy(jobs, *args, **kwargs):
        for j in jobs:
            parts = pr.parts_url(args[2], j.source)
            if parts is None or not pr.fetch_part(j, parts):
                submitted.append(j.key)
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(pr, "run_jobs_ray", spy)
    # half the units, then the driver's machine is lost (its staging folder with it)
    rep = prepare(remote, backend="ray", shard=(0, 2))
    first = list(submitted)
    assert first and {s.status for s in rep.sources.values()} == {"partial"}
    uploaded = fs.find(f"{bucket}/stores")
    assert any(p.endswith(".json") and "/.parts/" in p for p in uploaded)
    shutil.rmtree(corpus["tmp"] / "cache" / "staging")
    submitted.clear()
    rep = prepare(remote, backend="ray")
    assert {s.status for s in rep.sources.values()} == {"built"}
    assert submitted and set(submitted).isdisjoint(first)  # finished parts were not run again
    fs.invalidate_cache()
    for name in ("web", "code"):
        got = fs.cat_file(f"{bucket}/stores/{name}/tokens.bin")
        assert got == (Path(local.store) / name / "tokens.bin").read_bytes()
        assert fs.cat_file(f"{bucket}/stores/{name}/offsets.npy") == \
            (Path(local.store) / name / "offsets.npy").read_bytes()
    assert not [p for p in fs.find(f"{bucket}/stores") if "/.parts/" in p]  # cleaned up
    # a local store through Ray tasks: the same bytes as the process pool
    on_disk = config_from_dict(_cfg(corpus, remote_in=True, remote_store=False,
                                    store=str(corpus["tmp"] / "ray_local")))
    prepare(on_disk, backend="ray")
    for name in ("web", "code"):
        assert (corpus["tmp"] / "ray_local" / name / "tokens.bin").read_bytes() == \
            (Path(local.store) / name / "tokens.bin").read_bytes()
