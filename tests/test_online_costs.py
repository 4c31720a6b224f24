"""Energy and gradient noise scale in run results: ProxyResult, the online summary, the run
report; joules from a fake counter (the arithmetic, across a resume) and from none (said
plainly, no number)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixbatch.online import train_online
from mixbatch.online.report import write_report
from mixbatch.online.runfiles import read_csv
from mixbatch.proxy import train_proxy
from mixbatch.training.energy import EnergyMeter
from test_loader import _cfg
from test_online import _tiny
from test_torch import _free_port

JOULES_PER_RUN = 2.5  # what the fake counter adds between a run's start and stop


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    return _cfg(tmp_path_factory.mktemp("costs"), holdout=0.2)


def _fake_rapl(root: Path) -> type[EnergyMeter]:
    """A meter with one RAPL package whose counter grows by 2.5 J at every read."""
    d = root / "intel-rapl:0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "energy_uj").write_text("0\n")
    (d / "max_energy_range_uj").write_text(f"{10**12}\n")

    class Counter(EnergyMeter):
        def __init__(self, nvml: bool = True) -> None:
            super().__init__(root, nvml=False)
            self.reads = 0

        def _counters(self) -> dict[str, int]:
            self.reads += 1
            return {name: self.reads * int(JOULES_PER_RUN * 1e6) for name in self.rapl}

    return Counter


def _no_counter(root: Path) -> type[EnergyMeter]:
    class Nothing(EnergyMeter):
        def __init__(self, nvml: bool = True) -> None:
            super().__init__(root / "absent", nvml=False)

    return Nothing


def test_proxy_result_carries_joules_per_token_and_co2(cfg, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mixbatch.proxy.trainer.EnergyMeter", _fake_rapl(tmp_path))
    r = train_proxy(cfg, _tiny(steps=3, co2_g_per_kwh=400.0))
    e = r.energy
    assert e["joules"] == JOULES_PER_RUN and r.train_tokens == 3 * 4 * 64
    assert e["joules_per_token"] == pytest.approx(JOULES_PER_RUN / r.train_tokens)
    assert e["co2_grams"] == pytest.approx(JOULES_PER_RUN / 3.6e6 * 400.0)
    assert r.noise_scale == {"last": None, "unavailable": "off (proxy.noise_beta)"}
    one = train_proxy(cfg, _tiny(steps=1, noise_beta=0.9))  # one process: no local vs global
    assert "two or more ranks" in one.noise_scale["unavailable"]
    assert one.energy["co2_grams"] is None and "grid intensity" in one.energy["co2_unavailable"]
    json.dumps(r.to_dict())  # JSON-ready


def test_unreadable_energy_is_said_never_invented(cfg, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mixbatch.proxy.trainer.EnergyMeter", _no_counter(tmp_path))
    r = train_proxy(cfg, _tiny(steps=1, co2_g_per_kwh=400.0))
    assert r.energy["joules"] is None and r.energy["joules_per_token"] is None
    assert r.energy["co2_grams"] is None and "does not exist" in r.energy["unavailable"]
    run = tmp_path / "run"
    s = train_online(cfg, _tiny(steps=4, eval_every=2), "none", run_dir=run).summary
    assert s["energy"]["joules"] is None and "RAPL" in s["energy"]["unavailable"]
    page = write_report(run)["html"].read_text()
    assert "not readable: RAPL" in page and "not measured: off" in page


def test_online_joules_add_up_over_a_resume(cfg, tmp_path: Path, monkeypatch) -> None:
    proxy = _tiny(steps=8, eval_every=4, co2_g_per_kwh=100.0)
    monkeypatch.setattr("mixbatch.proxy.trainer.EnergyMeter", _fake_rapl(tmp_path / "rapl"))
    run = tmp_path / "run"
    train_online(cfg, proxy, "odm", target="s2", run_dir=run, stop_at=4)
    s = train_online(cfg, proxy, "odm", target="s2", run_dir=run, resume=True).summary
    assert s["energy"]["joules"] == 2 * JOULES_PER_RUN  # two calls, one run
    assert s["train_tokens"] == 8 * 4 * 64 == sum(s["train_tokens_by_source"].values())
    assert s["energy"]["joules_per_token"] == pytest.approx(2 * JOULES_PER_RUN / (8 * 4 * 64))
    assert "5.0 J" in write_report(run)["html"].read_text()
    # a run whose first part was not read: the total is unknown, and said so
    half = tmp_path / "half"
    monkeypatch.setattr("mixbatch.proxy.trainer.EnergyMeter", _no_counter(tmp_path))
    train_online(cfg, proxy, "odm", target="s2", run_dir=half, stop_at=4)
    monkeypatch.setattr("mixbatch.proxy.trainer.EnergyMeter", _fake_rapl(tmp_path / "rapl2"))
    e = train_online(cfg, proxy, "odm", target="s2", run_dir=half, resume=True).summary["energy"]
    assert e["joules"] is None and "before this state: not read" in e["unavailable"]


def test_two_ranks_log_the_noise_scale_per_step_and_resume_it(cfg, tmp_path: Path) -> None:
    proxy = _tiny(steps=6, eval_every=3, noise_beta=0.5)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2"}
    worker = Path(__file__).with_name("online_noise_worker.py")
    args = [sys.executable, str(worker), str(cfg.base_dir / "c.yaml"),
            json.dumps(proxy.model_dump(mode="json")), str(tmp_path / "done")]
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    header, rows = read_csv(tmp_path / "straight" / "losses.csv")
    assert header[-1] == "noise_scale" and len(rows) == 6
    noise = np.array([float(r[-1]) for r in rows])
    assert np.isfinite(noise).sum() >= 3  # NaN only while the smoothed |G|² is not positive
    # the monitor's state is in the checkpoint: the resumed run logs the same values
    assert (tmp_path / "cut" / "losses.csv").read_text() == (
        tmp_path / "straight" / "losses.csv").read_text()
    s = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["noise_scale"]["last"] == pytest.approx(noise[-1], nan_ok=True)
    assert "rank 0's machine" in s["energy"]["scope"]
    paths = write_report(tmp_path / "straight")
    assert paths["noise_scale"].exists() and "B_simple" in paths["html"].read_text()
