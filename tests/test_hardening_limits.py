"""Bounded sizes (issue #12 item 2): a step's memory is checked before anything is allocated,
and `--steps` below 1 is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mixbatch.config import Config, config_from_dict
from mixbatch.errors import ConfigError
from mixbatch.limits import ENV, check_step_memory, default_limit, physical_memory, step_memory


def _cfg(**batch) -> Config:
    return Config.model_validate({"sources": {"web": {"path": "x.jsonl"}}, "batch": batch})


def _with_limit(cfg: Config, limit: object) -> SimpleNamespace:
    """The config with `batch.max_step_bytes` set (a size string too, as the env takes)."""
    fields = {**cfg.batch.__dict__, "max_step_bytes": limit}
    return SimpleNamespace(batch=SimpleNamespace(**fields))


@pytest.mark.parametrize(("batch", "settings"), [
    ({"seq_len": 2_000_000_000}, "batch.seq_len × batch.batch_size"),
    ({"seq_len": 10**12}, "batch.seq_len × batch.batch_size"),
    ({"batch_size": 10**8}, "batch.seq_len × batch.batch_size"),
    ({"seq_len": 4096, "batch_size": 64, "packing": "bfd", "pack_window": 10**7},
     "batch.pack_window"),
    ({"seq_len": 1024, "packing": "buckets", "token_budget": 8192, "window_tokens": 10**13,
      "min_len": 64},
     "batch.window_tokens"),
])
def test_huge_steps_are_refused_with_settings_and_bytes(monkeypatch, batch, settings) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ConfigError) as e:  # refused while the config is validated
        config_from_dict({"sources": {"web": {"path": "x.jsonl"}}, "batch": batch})
    msg = str(e.value)
    assert settings in msg and "one step needs" in msg and "a quarter of physical memory" in msg
    assert "\n" not in msg


def test_default_settings_fit_and_estimate_is_exact(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    need = check_step_memory(_cfg())
    assert need.step_positions == 1024 * 8 and need.window_positions == 64 * 1024 * 8
    assert need.total == 1024 * 8 * 44 + 64 * 1024 * 8 * 12
    pad = step_memory(_cfg(packing="pad").batch)
    assert pad.window_positions == 0
    buckets = step_memory(_cfg(seq_len=64, packing="buckets", token_budget=512).batch)
    assert (buckets.step_positions, buckets.window_positions) == (512, 256 * 512)
    assert default_limit()[0] == physical_memory() // 4
    for cfg in (_cfg(), _cfg(packing="bfd"), _cfg(seq_len=64, packing="buckets", token_budget=512)):
        assert step_memory(cfg.batch).step_positions == cfg.batch.step_positions


def test_limit_from_environment_and_from_config(monkeypatch) -> None:
    cfg = _cfg(seq_len=4096, batch_size=64)  # 12 MiB a step, 192 MiB planned together
    monkeypatch.setenv(ENV, "64MiB")
    with pytest.raises(ConfigError, match=f"over the limit of 64.0 MiB \\({ENV}\\)"):
        check_step_memory(cfg)
    # the config's own limit wins over the environment
    assert check_step_memory(_with_limit(cfg, "1GiB")).total < 1 << 30
    with pytest.raises(ConfigError, match=r"limit of 1.0 MiB \(batch.max_step_bytes\)"):
        check_step_memory(_with_limit(cfg, 1 << 20))
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ConfigError, match=f"{ENV}: expected a size"):
        check_step_memory(cfg)


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_stream_refuses_steps_below_one(tmp_path: Path, steps: str) -> None:
    r = subprocess.run([sys.executable, "-m", "mixbatch", "stream", str(tmp_path / "c.yaml"),
                        "--steps", steps], capture_output=True, text=True)
    assert r.returncode == 2 and "--steps: must be >= 1" in r.stderr
    assert "Traceback" not in r.stderr
