"""The README documents every command, every key a command requires and every proxy key."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from mixbatch.cli import build_parser
from mixbatch.config import Config, SourceConfig
from mixbatch.proxy.settings import ProxyConfig
from mixbatch.proxy_args import SHORTCUTS
from test_cli_logs import _leaves

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    """The text under the heading ``title`` up to the next heading of the same or a higher
    level."""
    m = re.search(rf"^(#+) {re.escape(title)}\n", README, re.MULTILINE)
    assert m is not None, title
    level = len(m.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(README, m.end())
    return README[m.end():end.start() if end else len(README)]


def _required(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if f.is_required()}


def test_every_command_is_in_the_readme() -> None:
    for path in _leaves(build_parser()):
        assert f"mixbatch {' '.join(path)}" in README, path


def test_the_keys_commands_require_are_documented() -> None:
    needs = _section("Batch size, lengths, command-line habits")
    assert _required(Config) == {"sources"} and _required(SourceConfig) == {"path"}
    for key in ("sources", "path", "holdout"):
        assert f"`{key}`" in needs or f"`{key}:`" in needs, key
    for cmd in ("search run", "search merge", "train"):
        assert f"`{cmd}`" in needs
    assert "`holdout:`" in _section("Offline mixture search (RegMix)")


def test_every_proxy_key_and_flag_is_documented() -> None:
    text = _section("Proxy settings (`search run`, `search merge`, `train`)")
    table = {k for row in re.findall(r"^\| (`[^|]+) \|", text, re.MULTILINE)
             for k in re.findall(r"`(\w+)`", row)}
    assert table == set(ProxyConfig.model_fields)
    for flag in ("--proxy PROXY.yaml", "--proxy KEY=VALUE", "--steps",
                 *(flag for flag, *_ in SHORTCUTS)):
        assert flag in text, flag
