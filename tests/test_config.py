from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixbatch.config import Packing, Unit, load_config
from mixbatch.errors import ConfigError
from mixbatch.io import Format


def _cfg(tmp_path: Path, data: dict | str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return p


BASE = {"sources": {"web": {"path": "web.jsonl"}, "code": {"path": "code.jsonl"}}}


def test_valid_config_and_defaults(two_sources: Path) -> None:
    cfg = load_config(two_sources)
    assert cfg.seed == 0 and cfg.tokenizer == "byte"
    assert cfg.sources["web"].format is Format.JSONL
    assert cfg.sources["code"].format is None
    assert cfg.sources["code"].max_epochs == 4
    assert cfg.mixture.unit is Unit.TOKENS
    assert cfg.batch.packing is Packing.CONCAT
    assert cfg.store_dir == two_sources.parent / "store"
    assert cfg.fingerprint("sources") == load_config(two_sources).fingerprint("sources")


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"colour": 1}, "colour: unknown key"),
        ({"sources": {"web": {"path": "w", "fromat": "jsonl"}}}, "sources.web.fromat: unknown key"),
        ({"seed": "zero"}, "seed: Input should be a valid integer"),
        ({"sources": {"web": {"path": "w", "format": "csv"}}}, "sources.web.format"),
        ({"batch": {"seq_len": 1}}, "batch.seq_len: Input should be greater than or equal to 2"),
        ({"batch": {"packing": "zip"}}, "batch.packing: Input should be 'concat', 'pad'"),
        ({"mixture": {"weights": {"web": 1, "books": 1}}},
         "weight for undeclared source 'books'"),
        ({"mixture": {"schedule": [{"until_step": 5, "weights": {"nope": 1}}]}},
         "mixture.schedule.0.weights: weight for undeclared source 'nope'"),
        ({"sources": {}}, "sources: declare at least one source"),
        ({"sources": {"web": {"path": "w", "format": "tokens"}}}, "needs `eod_id`"),
        ({"mixture": {"weights": {"web": 1}, "temperature": 0.5}}, "give only one of"),
    ],
)
def test_bad_config_one_clear_line(tmp_path: Path, change: dict, expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, {**BASE, **change}))
    msg = str(e.value)
    assert expect in msg
    assert msg.startswith(str(tmp_path / "c.yaml"))
    assert "\n" not in msg


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_config(_cfg(tmp_path, "sources:\n  web: {path: [unclosed\n"))


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    evil = "sources: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_cfg(tmp_path, evil))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_exit_code_2_without_traceback(tmp_path: Path) -> None:
    p = _cfg(tmp_path, {**BASE, "mixture": {"weights": {"books": 1.0}}})
    r = subprocess.run([sys.executable, "-m", "mixbatch", "inspect", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "undeclared source 'books'" in lines[0]


def test_cli_path_matching_nothing_exit_2(tmp_path: Path) -> None:
    p = _cfg(tmp_path, {"sources": {"web": {"path": "missing/*.jsonl"}}})
    r = subprocess.run([sys.executable, "-m", "mixbatch", "prepare", str(p), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "missing/*.jsonl" in r.stderr and "Traceback" not in r.stderr
