"""Energy per run from the hardware's own counters, and the CO2 it implies at a given grid
intensity (the accounting of "Improve Machine Learning carbon footprint using Nvidia GPU and
Mixed Precision training for classification models": energy = ∫ power dt read from the
device, CO2 = kWh × grid intensity).

Counters: RAPL package domains on CPUs (``/sys/class/powercap/intel-rapl:N/energy_uj``,
wrap-around at ``max_energy_range_uj`` handled) and NVML's total energy on GPUs
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules, through ``pynvml`` when installed).
Where neither is readable the reading says so and why; it never estimates a number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EnergyMeter", "EnergyReading"]

POWERCAP = Path("/sys/class/powercap")


@dataclass
class EnergyReading:
    """Joules spent between start and stop, per counter; ``joules`` is None when no counter
    was readable (``unavailable`` says why)."""

    joules: float | None
    seconds: float
    sources: dict[str, float] = field(default_factory=dict)  # counter -> joules
    unavailable: list[str] = field(default_factory=list)

    def per_token(self, tokens: int) -> float | None:
        return None if self.joules is None or tokens <= 0 else self.joules / tokens

    def co2_grams(self, grams_per_kwh: float) -> float | None:
        """CO2 at the given grid intensity (g/kWh; the caller's figure for where it ran)."""
        return None if self.joules is None else self.joules / 3.6e6 * grams_per_kwh

    def as_dict(self, tokens: int | None = None, grams_per_kwh: float | None = None
                ) -> dict[str, Any]:
        out: dict[str, Any] = {"joules": self.joules, "seconds": self.seconds,
                               "sources": self.sources}
        if self.joules is None:
            out["unavailable"] = "; ".join(self.unavailable)
        if tokens is not None:
            out["joules_per_token"] = self.per_token(tokens)
        if grams_per_kwh is not None:
            out["co2_grams"] = self.co2_grams(grams_per_kwh)
        return out


def _rapl_domains(root: Path) -> tuple[dict[str, tuple[Path, int]], list[str]]:
    """Top-level RAPL domains (``intel-rapl:N``, not sub-domains) whose counter reads."""
    found: dict[str, tuple[Path, int]] = {}
    if not root.is_dir():
        return found, [f"RAPL: {root} does not exist"]
    why: list[str] = []
    for d in sorted(root.glob("intel-rapl:*")):
        if d.name.count(":") != 1:
            continue
        try:
            int((d / "energy_uj").read_text())
            top = int((d / "max_energy_range_uj").read_text())
        except (OSError, ValueError) as e:
            why.append(f"RAPL {d.name}: {e.__class__.__name__}: {e}")
            continue
        found[f"rapl:{d.name}"] = (d / "energy_uj", top)
    if not found and not why:
        why.append(f"RAPL: no intel-rapl domain under {root}")
    return found, why


def _nvml() -> tuple[Any, list[Any], list[str]]:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None, [], ["NVML: pynvml is not installed (pip install nvidia-ml-py)"]
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
        for h in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    except Exception as e:  # NVMLError: no driver, no GPU, counter unsupported (pre-Volta)
        return None, [], [f"NVML: {e.__class__.__name__}: {e}"]
    return pynvml, handles, [] if handles else ["NVML: no GPU"]


class EnergyMeter:
    """Reads every counter it can at :meth:`start` and :meth:`stop` (or as a ``with`` block:
    :attr:`reading` after it).

    Args:
        powercap: the powercap root (tests point it at a fake tree).
        nvml: try NVML (GPUs).
    """

    def __init__(self, powercap: Path = POWERCAP, nvml: bool = True) -> None:
        self.rapl, self.unavailable = _rapl_domains(Path(powercap))
        self.pynvml, self.handles = None, []
        if nvml:
            self.pynvml, self.handles, why = _nvml()
            self.unavailable += why
        self._start: dict[str, int] = {}
        self._t0 = 0.0
        self.reading: EnergyReading | None = None

    def _counters(self) -> dict[str, int]:
        out = {name: int(path.read_text()) for name, (path, _) in self.rapl.items()}
        for i, h in enumerate(self.handles):
            out[f"nvml:{i}"] = int(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(h))
        return out

    def start(self) -> None:
        self._start, self._t0 = self._counters(), time.perf_counter()

    def stop(self) -> EnergyReading:
        end, seconds = self._counters(), time.perf_counter() - self._t0
        joules: dict[str, float] = {}
        for name, value in end.items():
            delta = value - self._start[name]
            if name.startswith("rapl:"):
                if delta < 0:  # the counter wrapped (once, at most, between reads)
                    delta += self.rapl[name][1]
                joules[name] = delta / 1e6  # microjoules
            else:
                joules[name] = delta / 1e3  # millijoules
        total = sum(joules.values()) if joules else None
        self.reading = EnergyReading(total, seconds, joules, list(self.unavailable))
        return self.reading

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
