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


def _spy_submitted(monkeypatch) -> list[str]:
    """The keys of the units the Ray backend submits as tasks (not those it finds finished)."""
    import mixbatch.prepare_ray as pr

    submitted: list[str] = []
    real = pr.run_jobs_ray

    def spy(jobs, *args, **kwargs):
        for j in jobs:
            parts = pr.parts_url(args[2], j.source)
            if parts is None or not pr.fetch_part(j, parts):
                submitted.append(j.key)
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(pr, "run_jobs_ray", spy)
    return submitted


def test_ray_backend_builds_the_local_store_and_resumes(corpus: dict, local_ray,  # noqa: F811
                                                        monkeypatch) -> None:

    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(local, workers=1)
    remote = config_from_dict(_cfg(corpus, remote_in=True, remote_store=True))
    fs, bucket = corpus["fs"], corpus["bucket"]

    submitted = _spy_submitted(monkeypatch)
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


def _assert_same_store(c: dict, local_store: Path) -> None:
    c["fs"].invalidate_cache()
    for name in ("web", "code"):
        for file in ("tokens.bin", "offsets.npy"):
            got = c["fs"].cat_file(f"{c['bucket']}/stores/{name}/{file}")
            assert got == (local_store / name / file).read_bytes()


def test_ray_backend_survives_a_killed_task(corpus: dict, local_ray,  # noqa: F811
                                            monkeypatch) -> None:
    """The first try of one unit writes half a part, then its worker process is killed
    (SIGKILL): Ray runs the task again, the half part is overwritten, the store is the local
    one byte for byte."""
    import mixbatch.prepare_ray as pr

    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(local, workers=1)
    remote = config_from_dict(_cfg(corpus, remote_in=True, remote_store=True))
    marks = corpus["tmp"] / "tries"
    marks.mkdir()
    real = pr.run_unit_task

    def dies_once(job, parts):
        import os
        import signal

        from mixbatch.io.fs import RemotePath, write_bytes

        tries = len(list(marks.iterdir()))
        (marks / f"{job.key}-{os.getpid()}-{tries}").write_text("")
        if tries == 0 and parts is not None:
            write_bytes(RemotePath(parts) / f"{job.key}.tokens", b"half a part")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job, parts)

    monkeypatch.setattr(pr, "run_unit_task", dies_once)
    rep = prepare(remote, backend="ray")
    assert {s.status for s in rep.sources.values()} == {"built"}
    tries = [p.name.rsplit("-", 2) for p in marks.iterdir()]
    killed = next(key for key, _, n in tries if n == "0")
    assert sum(key == killed for key, _, _ in tries) == 2  # killed, then run again
    _assert_same_store(corpus, Path(local.store))


def _driver_killed_after_one_part(data: dict, address: str) -> None:
    """A driver that dies (SIGKILL) as soon as the first finished part reaches it."""
    import os
    import signal

    import mixbatch.prepare_ray as pr
    from mixbatch.config import config_from_dict as make
    from mixbatch.prepare import prepare as run

    real = pr.fetch_part

    def fetch_then_die(job, parts):
        done = real(job, parts)
        if done:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    pr.fetch_part = fetch_then_die
    run(make(data), backend="ray", ray_address=address)


def test_ray_backend_resumes_after_a_killed_driver(corpus: dict, local_ray,  # noqa: F811
                                                   monkeypatch) -> None:
    import multiprocessing as mp


    local = config_from_dict(_cfg(corpus, remote_in=False, remote_store=False))
    prepare(local, workers=1)
    data = _cfg(corpus, remote_in=True, remote_store=True)
    address = ray.get_runtime_context().gcs_address
    driver = mp.get_context("spawn").Process(target=_driver_killed_after_one_part,
                                             args=(data, address))
    driver.start()
    driver.join(120)
    assert driver.exitcode == -9  # killed mid-run
    fs, bucket = corpus["fs"], corpus["bucket"]
    fs.invalidate_cache()
    found = fs.find(f"{bucket}/stores")
    done = {p.rsplit("/", 1)[1][:-5] for p in found if "/.parts/" in p and p.endswith(".json")}
    assert done and not [p for p in found if p.endswith("/meta.json")]  # parts, no store
    submitted = _spy_submitted(monkeypatch)
    rep = prepare(config_from_dict(data), backend="ray")
    assert {s.status for s in rep.sources.values()} == {"built"}
    # finished parts were not run again (tasks of the dead driver that were still running may
    # have finished since: their parts are fetched too, so what is left to run may be nothing)
    assert done.isdisjoint(submitted)
    _assert_same_store(corpus, Path(local.store))
