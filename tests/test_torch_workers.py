"""MixbatchDataLoader's token-reading workers: same batches as in-process, compact batches derived
on a device, failures named, nothing left behind."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mixbatch.errors import ConfigError, MixbatchError
from mixbatch.loader.loader import MixedLoader
from mixbatch.shape.materialize import DEFAULT_FIELDS
from mixbatch.torch import MixbatchDataLoader, to_device
from test_loader import _cfg


def _np(batch: dict) -> dict:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.parametrize("packing", ["concat", "bfd", "pad_buckets"])
def test_workers_give_the_in_process_batches(tmp_path: Path, packing: str) -> None:
    extra = {"token_budget": 1024, "window_tokens": 4096} if packing == "pad_buckets" else {}
    cfg = _cfg(tmp_path, batch={"packing": packing, **extra})
    ref = MixedLoader(cfg)
    want = [ref.batch_of(s) for s in ref.steps(23)]
    for workers, adaptive in ((0, True), (1, False), (3, False), (3, True)):
        got = [_np(b) for b in MixbatchDataLoader(cfg, num_workers=workers, max_steps=23,
                                                  fields="all", adaptive=adaptive)]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            for k in w:
                assert np.array_equal(np.asarray(g[k]), np.asarray(w[k])), (workers, k)


def test_default_fields_and_transform_in_workers(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    seen = []

    def mark(batch: dict) -> dict:  # runs in the worker, on the compact batch
        batch["worker_pid"] = os.getpid()
        seen.append(batch["input_ids"].dtype)
        return batch

    batches = list(MixbatchDataLoader(cfg, num_workers=2, max_steps=6, transform=mark,
                                      adaptive=False))
    assert len(batches) == 6
    assert set(batches[0]) == {*DEFAULT_FIELDS, "step"}
    assert all(b["input_ids"].dtype == torch.int64 for b in batches)
    assert [b["step"] for b in batches] == list(range(6))
    # the transform ran in two worker processes, not here
    assert not seen


def test_state_after_each_batch_resumes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    straight = [b["input_ids"] for b in MixbatchDataLoader(cfg, num_workers=0, max_steps=30)]
    dl = MixbatchDataLoader(cfg, num_workers=2, max_steps=30, adaptive=False)
    it = iter(dl)
    head = [next(it)["input_ids"] for _ in range(13)]
    state = json.loads(json.dumps(dl.state_dict()))
    assert state["step"] == 13
    it.close()
    tail = [b["input_ids"] for b in MixbatchDataLoader(cfg, num_workers=1, state=state,
                                                       max_steps=17)]
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight, strict=True))


def test_to_device_derives_the_numpy_fields(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch={"packing": "bfd", "pack_window": 8})
    loader = MixedLoader(cfg)
    for step in loader.steps(5):
        compact = loader.compact_of(step)
        want = loader.batch_of(step)
        got = to_device(compact, "cpu", "all")
        for k in ("input_ids", "labels", "position_ids", "source_ids", "doc_ids", "cu_seqlens"):
            assert got[k].dtype == (torch.int32 if k == "cu_seqlens" else torch.int64)
            assert np.array_equal(got[k].numpy(), want[k]), k
        assert got["max_seqlen"] == want["max_seqlen"]


def test_loader_on_a_device(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    plain = list(MixbatchDataLoader(cfg, max_steps=9))
    for workers in (0, 2):  # workers send compact batches (tokens through their slots)
        on_cpu = list(MixbatchDataLoader(cfg, num_workers=workers, max_steps=9, device="cpu",
                                         adaptive=False))
        assert len(on_cpu) == len(plain)
        for a, b in zip(on_cpu, plain, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "position_ids"))


def test_bad_options_are_named(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="unknown field"):
        MixbatchDataLoader(cfg, fields=["input_ids", "token_type_ids"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            MixbatchDataLoader(cfg, device="cuda")
    with pytest.raises(ConfigError, match="not a device"):
        MixbatchDataLoader(cfg, device="warp-drive")
    with pytest.raises(ConfigError, match=r"unknown option.*shuffle"):
        MixbatchDataLoader(cfg, shuffle=True)
    with pytest.raises(ConfigError, match="num_workers"):
        MixbatchDataLoader(cfg, num_workers=-1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _shm() -> set[str]:
    """Named shared-memory segments (not the transient, already unlinked semaphores that
    multiprocessing in other processes on the machine makes)."""
    names = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    return {n for n in names if not n.startswith("sem.")}


def _named_shared(pid: int | str) -> list[str]:
    """Mappings of a process backed by a named file in /dev/shm (the ring is anonymous).

    POSIX semaphores (``/dev/shm/sem.*``: multiprocessing's locks, which other libraries in the
    test process create) are not data segments and are left out."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return [line for line in text.splitlines()
            if "/dev/shm/" in line and "/dev/shm/sem." not in line]


def test_a_killed_worker_is_an_error_not_a_hang(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    before = _shm()
    dl = MixbatchDataLoader(cfg, num_workers=2, adaptive=False)  # an endless stream
    it = iter(dl)
    next(it)
    pids = list(dl.worker_pids)
    if Path("/proc/self/maps").exists():  # Linux
        assert not _named_shared("self") and not any(_named_shared(p) for p in pids)
        assert any("/dev/zero" in line for line in Path(f"/proc/{pids[0]}/maps").read_text()
                   .splitlines())  # the ring: an anonymous shared mapping
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(MixbatchError, match=r"worker 1 \(pid \d+\) died with exit code -9"):
        for _ in range(10_000):
            next(it)
    assert time.monotonic() - t0 < 30
    for pid in pids:  # the other worker was stopped too
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    assert _shm() <= before  # no shared-memory segment left behind


def test_an_error_in_a_worker_names_it(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)

    def broken(batch: dict) -> dict:
        raise ValueError("augmentation failed on purpose")

    with pytest.raises(MixbatchError, match="worker 0 failed: ValueError: augmentation failed"):
        list(MixbatchDataLoader(cfg, num_workers=2, max_steps=4, transform=broken,
                                adaptive=False))
    # read by the main process (the pacer's first tasks): the error as it was raised
    with pytest.raises(ValueError, match="augmentation failed"):
        list(MixbatchDataLoader(cfg, num_workers=2, max_steps=4, transform=broken))


def test_workers_stop_when_iteration_stops(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    dl = MixbatchDataLoader(cfg, num_workers=2, adaptive=False)
    it = iter(dl)
    next(it)
    pids = list(dl.worker_pids)
    it.close()
    assert not any(_alive(p) for p in pids)


def test_mixup_section_adds_the_record_per_step(tmp_path: Path) -> None:
    """A `mixup:` section (embedding level for token batches): every batch carries the mixing
    record of its step, the same with workers and after a resume."""
    cfg = _cfg(tmp_path, mixup={"mixup_alpha": 0.4, "level": "embedding", "mode": "elem"})
    plain = list(MixbatchDataLoader(cfg, max_steps=6))
    keys = sorted(k for k in plain[0] if k.startswith("mix_"))
    assert keys and "mix_lam" in keys
    assert not torch.equal(plain[0]["mix_lam"], plain[1]["mix_lam"])  # a new draw every step
    workers = list(MixbatchDataLoader(cfg, num_workers=2, max_steps=6))
    dl = MixbatchDataLoader(cfg, max_steps=3)
    head = list(dl)
    tail = list(MixbatchDataLoader(cfg, state=dl.state_dict(), max_steps=3))
    for a, b, c in zip(plain, workers, head + tail, strict=True):
        for k in keys:
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k


def test_slots_are_reused_and_a_kept_batch_is_never_overwritten(tmp_path: Path) -> None:
    """Batches view shared slots without a copy: a trainer that drops each batch lets every
    task use a slot; batches it keeps stay intact (their slots wait, later tasks use the pipe)."""
    cfg = _cfg(tmp_path)
    ref = MixedLoader(cfg)
    want = [ref.batch_of(s, fields=DEFAULT_FIELDS) for s in ref.steps(60)]
    dl = MixbatchDataLoader(cfg, num_workers=2, max_steps=60, adaptive=False)
    it = iter(dl)
    kept = []
    for i, b in enumerate(it):
        if i == 0:
            readers = dl._readers
            assert readers is not None and readers.ring is not None
        assert np.array_equal(b["labels"].numpy(), want[i]["labels"]), i
        if i % 3 == 0:
            kept.append((i, b))
        del b
    assert readers.piped == 0  # the dropped batches freed their slots
    for i, b in kept:  # still what they were when handed out
        for k in ("input_ids", "labels", "position_ids"):
            assert np.array_equal(b[k].numpy(), want[i][k]), (i, k)
    everything = list(MixbatchDataLoader(cfg, num_workers=2, max_steps=60,
                                         adaptive=False))  # all kept
    for g, w in zip(everything, want, strict=True):
        assert np.array_equal(g["input_ids"].numpy(), w["input_ids"])


def test_workers_with_fields_that_need_no_slot(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ref = MixedLoader(cfg)
    want = [ref.batch_of(s, fields=["cu_seqlens", "max_seqlen"]) for s in ref.steps(20)]
    got = list(MixbatchDataLoader(cfg, num_workers=2, max_steps=20,
                                  fields=["cu_seqlens", "max_seqlen"], adaptive=False))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == {"cu_seqlens", "max_seqlen", "step"}
        assert np.array_equal(g["cu_seqlens"].numpy(), w["cu_seqlens"])
        assert g["max_seqlen"] == w["max_seqlen"]


_ORPHAN = """
import sys, time
sys.path.insert(0, {tests!r})
from mixbatch.config import load_config
from mixbatch.torch import MixbatchDataLoader
dl = MixbatchDataLoader(load_config({cfg!r}), num_workers=2, adaptive=False)
it = iter(dl)
next(it)
print(" ".join(map(str, dl.worker_pids)), flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_workers_exit_when_the_main_process_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys

    _cfg(tmp_path)  # prepares the store and writes c.yaml
    before = _shm()
    script = _ORPHAN.format(tests=str(Path(__file__).parent), cfg=str(tmp_path / "c.yaml"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2, line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for pid in pids:
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _shm() <= before  # no named segment left behind


# ------------------------------------------------------------------------ the pacer


def _alternating(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pacer that changes mode after every period of its smallest length (no wall time)."""
    from mixbatch.torch import pacing, workers

    def make(depth: int, enabled: bool = True) -> pacing.Pacer:
        return pacing.Pacer(depth, enabled, period_seconds=0.0)

    monkeypatch.setattr(workers, "Pacer", make)
    monkeypatch.setattr(pacing.Pacer, "_next", lambda self, busy=False: not self.mode)


@pytest.mark.parametrize("fields", [None, "all"])
def test_mode_changes_keep_the_batches_and_the_states(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     fields: str | None) -> None:
    """Tasks read by the main process and by the workers, the mode changing every few tasks
    (held tasks sent to the workers when it changes): the in-process batches, in order, and
    a state after every batch that resumes exactly."""
    _alternating(monkeypatch)
    cfg = _cfg(tmp_path, batch={"batch_size": 2})
    ref = MixedLoader(cfg)
    names = DEFAULT_FIELDS if fields is None else "all"
    want = [ref.batch_of(s, fields=names) for s in ref.steps(150)]
    dl = MixbatchDataLoader(cfg, num_workers=2, max_steps=150, fields=fields,
                            prefetch_factor=1)
    states = []
    for i, b in enumerate(dl):
        assert set(b) == set(want[i]), i
        for k, v in want[i].items():
            assert np.array_equal(np.asarray(_np(b)[k]), np.asarray(v)), (i, k)
        states.append(dl.state_dict())
        if i == 0:
            readers = dl._readers
    assert len(states) == 150
    assert readers is not None and readers.inline > 0 and readers.sent > 0
    tail = next(iter(MixbatchDataLoader(cfg, state=states[76], max_steps=1, fields=fields)))
    assert np.array_equal(tail["input_ids"].numpy(), want[77]["input_ids"])


def test_heavy_work_goes_to_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ms of CPU per batch in the transform: after a few batches of the first task every
    task goes to the workers (the first task is the main process's). The test box may be busy:
    the run-queue gate is off here (its own test is below)."""
    from mixbatch.torch import pacing

    monkeypatch.setattr(pacing, "BUSY_SHARE", float("inf"))
    cfg = _cfg(tmp_path)
    log = tmp_path / "pids.txt"

    def burn(batch: dict) -> dict:
        t = time.process_time()
        while time.process_time() - t < 0.002:
            pass
        with log.open("a") as f:  # one short line per batch: appends do not interleave
            f.write(f"{batch['step']} {os.getpid()}\n")
        return batch

    dl = MixbatchDataLoader(cfg, num_workers=2, max_steps=80, transform=burn)
    it = iter(dl)
    assert next(it)["step"] == 0 and dl.worker_pids == []  # started when first needed
    assert len(list(it)) == 79
    by_step = dict(map(int, line.split()) for line in log.read_text().splitlines())
    pids = [by_step[i] for i in range(80)]
    here = [i for i, p in enumerate(pids) if p == os.getpid()]
    assert here and max(here) < 16  # the first task at most
    assert len(set(pids) - {os.getpid()}) == 2


@pytest.mark.parametrize(("fields", "workers"), [(None, 2), ("all", 2), (None, 1), ("all", 1)])
def test_heavy_work_hands_over_mid_task_with_the_same_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: str | None,
        workers: int) -> None:
    """Heavy work found in the first batches: the rest of the main process's first task and the
    held tasks go to the workers, cut into small tasks (about TASK_SECONDS of work each); the
    batches are the in-process ones, in order, and the state after each resumes exactly. With
    fewer workers than cores the main process also reads tasks of its own while it waits for a
    worker (handed out in their turn)."""
    from mixbatch.torch import pacing

    monkeypatch.setattr(pacing, "BUSY_SHARE", float("inf"))  # the test box may be busy
    monkeypatch.setattr(pacing, "TASK_SECONDS", 0.005)  # 2 ms a batch: tasks of 2 steps
    cfg = _cfg(tmp_path, batch={"batch_size": 2})
    ref = MixedLoader(cfg)
    names = DEFAULT_FIELDS if fields is None else "all"
    want = [ref.batch_of(s, fields=names) for s in ref.steps(70)]
    log = tmp_path / "pids.txt"

    def burn(batch: dict) -> dict:
        t = time.process_time()
        while time.process_time() - t < 0.002:
            pass
        with log.open("a") as f:
            f.write(f"{batch['step']} {os.getpid()}\n")
        return batch

    dl = MixbatchDataLoader(cfg, num_workers=workers, max_steps=70, fields=fields,
                            transform=burn)
    states = []
    for i, b in enumerate(dl):
        assert int(b["step"]) == i
        for k, v in want[i].items():
            assert np.array_equal(np.asarray(_np(b)[k]), np.asarray(v)), (i, k)
        states.append(dl.state_dict())
    assert len(states) == 70
    pids = dict(map(int, line.split()) for line in log.read_text().splitlines())
    here = [i for i in range(70) if pids[i] == os.getpid()]
    readers = dl._readers
    assert readers is not None and readers.sent > 70 // 16 + 4
    assert len(set(pids.values()) - {os.getpid()}) == workers
    if not readers.can_help:  # the samples only; the rest went over at once
        assert here == list(range(pacing.SAMPLES)) and readers.inline == 1
    else:  # 2 ms a batch: the main process always waits for the worker, and reads meanwhile
        assert here[:pacing.SAMPLES] == list(range(pacing.SAMPLES))
        assert readers.helped > 0 and len(here) >= pacing.SAMPLES + readers.helped
    tail = next(iter(MixbatchDataLoader(cfg, state=states[40], max_steps=1, fields=fields)))
    assert np.array_equal(tail["input_ids"].numpy(), want[41]["input_ids"])


def test_pacer_follows_the_faster_mode() -> None:
    """Synthetic wall times: where the main process is faster the pacer stays with it, probing
    the workers at growing gaps; where the workers are faster it moves to them and stays."""
    from mixbatch.torch.pacing import MAX_GAP, Pacer

    def run(inline_cost: float, worker_cost: float, tasks: int = 3000) -> list[bool]:
        p = Pacer(depth=2, period_seconds=0.0)
        modes = []
        for _ in range(tasks):
            mode = p.mode
            modes.append(mode)
            p.measured(mode, 16 * (inline_cost if mode else worker_cost), 16, counts=True)
        return modes

    modes = run(1.0, 1.6)  # periods of 4 tasks; the workers probed after 4 periods, ...
    assert all(modes[:20]) and not any(modes[20:24]) and all(modes[24:56])
    assert sum(modes) / len(modes) > 0.95  # ... then at gaps doubling up to MAX_GAP
    switches = sum(a != b for a, b in itertools.pairwise(modes))
    assert 6 <= switches <= 2 * (len(modes) // 4 // (MAX_GAP + 1) + 4)
    modes = run(1.0, 0.5)
    assert modes[0] and sum(modes) / len(modes) < 0.05
    p = Pacer(depth=2, enabled=False)
    assert not p.mode
    p.measured(False, 1.0, 16, counts=True)
    assert not p.mode and p.gap <= MAX_GAP


def test_pacer_sends_heavy_work_to_the_workers() -> None:
    """SAMPLES heavy compute times in a row send every task to the workers; one heavy sample
    (a one-time cost: the first read of a store block) does not."""
    from mixbatch.torch.pacing import SAMPLES, Pacer

    p = Pacer(depth=4)
    assert p.mode and p.sampling  # the main process reads first, timing every batch
    assert not p.computed(0.05, 1) and p.mode  # a spike
    for _ in range(SAMPLES - 1):
        assert not p.computed(1e-4, 1) and p.mode
    assert not p.sampling
    for _ in range(SAMPLES - 1):
        assert not p.computed(0.05, 1) and p.mode
    assert p.computed(0.05, 1)  # heavy: the workers take over at once
    assert not p.mode
    for _ in range(100):  # and keep every task, whatever the wall times say
        p.measured(False, 100.0, 16, counts=True)
        assert not p.mode
    # heavy, but the main process waited for a CPU half the time: no core is free, it keeps
    # reading; once the waits stop, the workers take over
    p = Pacer(depth=4)
    for _ in range(3 * SAMPLES):
        assert not p.computed(0.05, 1, waited=0.04, wall=0.06) and p.mode
    assert not p.computed(0.05, 1, waited=0.0, wall=0.06) and p.mode  # 1/3 of the window
    assert p.computed(0.05, 1, waited=0.0, wall=0.06) and not p.mode
    assert p.task_steps(16) == 1  # 50 ms a batch: one step per task (TASK_SECONDS = 10 ms)
    p = Pacer(depth=4)
    for _ in range(SAMPLES):
        p.computed(0.002, 1)
    assert not p.mode and p.task_steps(16) == 5 and p.task_steps(3) == 3
    assert Pacer(depth=4).task_steps(16) == 16  # light (or not yet known): the most


def test_pacer_does_not_probe_the_workers_when_no_core_is_free() -> None:
    """The main process waited for a CPU for half of each period: the workers are never
    probed (each probe left out doubles the gap); with no wait they are."""
    from mixbatch.torch.pacing import MAX_GAP, Pacer, RunQueueClock

    def run(wait_share: float) -> tuple[list[bool], Pacer]:
        p = Pacer(depth=2, period_seconds=0.0)
        modes = []
        for _ in range(400):
            modes.append(p.mode)
            p.waited_for_cpu(wait_share * 16.0)
            p.measured(p.mode, 16.0 if p.mode else 16.0 * 1.6, 16, counts=True)
        return modes, p

    modes, p = run(0.5)
    assert all(modes) and p.skipped >= 3 and p.gap == MAX_GAP
    modes, p = run(0.0)
    assert not all(modes) and p.skipped == 0
    clock = RunQueueClock()
    assert clock.waited() >= 0.0
    if Path("/proc/thread-self/schedstat").exists():
        assert clock.fd is not None
    clock.close()
    assert clock.fd is None and clock.waited() == 0.0


def test_light_work_starts_no_worker_process(tmp_path: Path) -> None:
    """With pacing and light work the main process reads every task of a short run: no worker
    process is started (idle ones cost the main process CPU time on a busy box); a worker that
    dies meanwhile cannot exist, and the batches are the in-process ones."""
    cfg = _cfg(tmp_path)
    ref = MixedLoader(cfg)
    want = [ref.batch_of(s, fields=DEFAULT_FIELDS) for s in ref.steps(40)]
    dl = MixbatchDataLoader(cfg, num_workers=2, max_steps=40)
    for i, b in enumerate(dl):
        assert dl.worker_pids == []
        assert np.array_equal(b["labels"].numpy(), want[i]["labels"]), i
    assert dl._readers is not None and dl._readers.sent == 0 and not dl._readers.started
