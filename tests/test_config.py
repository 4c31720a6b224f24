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
        ({"batch": {"pack_window": 8}},
         "batch.pack_window: not a setting of packing 'concat' (only of 'bfd')"),
        ({"batch": {"packing": "buckets", "token_budget": 512, "batch_size": 4}},
         "batch.batch_size: not a setting of packing 'buckets' (only of 'concat', 'pad', 'bfd')"),
        ({"batch": {"packing": "pad_buckets"}}, "batch.token_budget: Field required"),
        ({"batch": {"packing": "bfd", "pack_window": 0}},
         "batch.pack_window: Input should be greater than or equal to 1"),
        ({"batch": {"packing": "pad", "colour": 1}}, "batch.colour: unknown key"),
        ({"batch": {"seq_len": 2_000_000_000}}, "batch.seq_len × batch.batch_size: one step needs"),
        ({"batch": {"max_step_bytes": "1KiB"}}, "over the limit of 1.0 KiB (batch.max_step_bytes)"),
        ({"batch": {"max_step_bytes": "lots"}}, "batch.max_step_bytes: expected a size"),
        ({"sources": {"a\0b": {"path": "w"}}}, "must be a plain folder name"),
        ({"sources": {"x" * 256: {"path": "w"}}}, "a folder name holds at most 255"),
        ({"sources": {"web": {"path": "w", "follow_symlinks": "yes please"}}},
         "sources.web.follow_symlinks"),
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


@pytest.mark.parametrize("packing", [p.value for p in Packing])
def test_each_packing_mode_takes_its_own_settings(tmp_path: Path, packing: str) -> None:
    from mixbatch.config import BATCH_CLASSES

    budget = {"token_budget": 1024} if packing in ("buckets", "pad_buckets") else {}
    cfg = load_config(_cfg(tmp_path, {**BASE, "batch": {"packing": packing, **budget}}))
    assert type(cfg.batch) is BATCH_CLASSES[Packing(packing)]
    assert cfg.batch.packing is Packing(packing)
    assert cfg.batch.variable_rows == (packing in ("buckets", "pad_buckets"))
    assert cfg.batch.step_positions == (1024 if budget else 8 * cfg.batch.seq_len)
    # every key of every other mode that this mode lacks is refused, naming the mode
    own = set(type(cfg.batch).model_fields)
    for other in BATCH_CLASSES.values():
        for key in set(other.model_fields) - own:
            with pytest.raises(ConfigError, match=f"batch.{key}: not a setting of packing"):
                load_config(_cfg(tmp_path, {**BASE, "batch": {"packing": packing, **budget,
                                                              key: 1}}))
    # the settings round-trip through the dump a state or a search records
    again = load_config(_cfg(tmp_path, {**BASE, "batch": cfg.batch.model_dump(mode="json")}))
    assert again.batch == cfg.batch
