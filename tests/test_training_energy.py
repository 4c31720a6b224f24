from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from mixbatch.training.energy import EnergyMeter


def _domain(root: Path, name: str, uj: int, top: int = 1000_000_000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{top}\n")
    return d / "energy_uj"


def test_rapl_packages_with_wraparound_and_no_subdomains(tmp_path: Path) -> None:
    a = _domain(tmp_path, "intel-rapl:0", 999_000_000)
    b = _domain(tmp_path, "intel-rapl:1", 5_000_000)
    sub = _domain(tmp_path, "intel-rapl:0:0", 1)  # a sub-domain: inside package 0, not added
    m = EnergyMeter(tmp_path, nvml=False)
    m.start()
    a.write_text("2000000\n")  # wrapped: 1e9 - 999e6 + 2e6 = 3e6 µJ
    b.write_text("9000000\n")
    sub.write_text("999999\n")
    r = m.stop()
    assert r.sources == {"rapl:intel-rapl:0": 3.0, "rapl:intel-rapl:1": 4.0}
    assert r.joules == 7.0 and r.per_token(70) == 0.1
    assert r.co2_grams(360.0) == pytest.approx(7.0 / 3.6e6 * 360.0)


def test_nothing_readable_says_so_and_gives_no_number(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with EnergyMeter(tmp_path / "absent") as m:
        pass
    r = m.reading
    assert r is not None and r.joules is None and r.per_token(10) is None
    d = r.as_dict(tokens=10, grams_per_kwh=400)
    assert d["joules"] is None and d["co2_grams"] is None
    assert "does not exist" in d["unavailable"] and "pynvml is not installed" in d["unavailable"]
    unreadable = _domain(tmp_path, "intel-rapl:0", 5).parent
    (unreadable / "energy_uj").write_text("not a number")
    assert "ValueError" in EnergyMeter(tmp_path, nvml=False).unavailable[0]


def test_nvml_total_energy_in_millijoules(tmp_path: Path, monkeypatch) -> None:
    state = {"mj": 1000}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: state["mj"])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = EnergyMeter(tmp_path / "absent")
    m.start()
    state["mj"] = 251_000
    assert m.stop().sources == {"nvml:0": 250.0}


def test_trainer_reports_joules_or_why_not(tmp_path: Path) -> None:
    from mixbatch.proxy.trainer import Trainer
    from test_loader import _cfg
    from test_online import _tiny

    with Trainer(_cfg(tmp_path), _tiny(steps=2, eval_every=None)) as t:
        t.run()
        if t.meter.rapl:  # a machine whose RAPL counters read
            assert t.joules is not None and t.joules >= 0
        else:
            assert t.joules is None and t.energy_unavailable
