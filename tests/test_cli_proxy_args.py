"""One proxy flag group for `search run`, `search merge` and `train` (mixbatch.proxy_args)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mixbatch.cli import build_parser
from mixbatch.errors import ConfigError
from mixbatch.proxy.settings import Device, ProxyConfig
from mixbatch.proxy_args import DEVICES, SHORTCUTS, add_proxy_arguments, proxy_from_args

COMMANDS = (["search", "run", "c.yaml", "--design", "d.csv", "--out", "r.csv"],
            ["search", "merge", "c.yaml", "--out", "m.json"],
            ["train", "c.yaml"])


def _parse(argv: list[str], steps_required: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_proxy_arguments(p, base="the defaults", steps_required=steps_required)
    return p.parse_args(argv)


def _group(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    g = next(g for g in parser._action_groups if g.title == "proxy model")
    return {a.option_strings[0]: a for a in g._group_actions}


def _sub(argv: list[str]) -> argparse.ArgumentParser:
    p = build_parser()
    for name in argv[:2] if argv[0] == "search" else argv[:1]:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = action.choices[name]
    return p


def test_the_three_commands_take_the_same_flags() -> None:
    groups = [_group(_sub(argv)) for argv in COMMANDS]
    assert groups[0].keys() == groups[1].keys() == groups[2].keys()
    assert {"--proxy", "--steps", *(f for f, *_ in SHORTCUTS)} == set(groups[0])
    for g in groups:
        for flag, a in g.items():
            assert a.help, flag
    assert groups[2]["--steps"].required and not groups[0]["--steps"].required


def test_every_shortcut_names_a_proxy_field_and_the_devices_are_its() -> None:
    fields = set(ProxyConfig.model_fields)
    assert {name for _, name, _, _ in SHORTCUTS} <= fields
    assert tuple(d.value for d in Device) == DEVICES


def test_files_and_settings_apply_in_order_then_the_shortcuts(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("d_model: 64\nn_head: 4\nlr: 0.01\n")
    b = tmp_path / "b.yaml"
    b.write_text("d_model: 96\nwarmup: 5\n")
    args = _parse(["--proxy", str(a), "--proxy", "lr=2e-3", "--proxy", str(b),
                   "--proxy", "n_head=8", "--layers", "3", "--steps", "7"])
    p = proxy_from_args(args, {"seq_len": 256, "n_layer": 9})
    assert (p.d_model, p.n_head, p.lr, p.warmup) == (96, 8, 2e-3, 5)
    assert (p.n_layer, p.steps, p.seq_len) == (3, 7, 256)
    # a file describes a whole proxy: with file_replaces_defaults it starts from the defaults
    p = proxy_from_args(args, {"seq_len": 256}, file_replaces_defaults=True)
    assert p.seq_len is None and p.d_model == 96
    # without a file the command's defaults stay
    args = _parse(["--proxy", "lr=1e-3", "--d-model", "48"])
    p = proxy_from_args(args, {"seq_len": 256}, file_replaces_defaults=True)
    assert (p.seq_len, p.lr, p.d_model) == (256, 1e-3, 48)
    assert proxy_from_args(_parse([]), {}) == ProxyConfig()


def test_values_are_yaml_scalars() -> None:
    p = proxy_from_args(_parse(["--proxy", "grad_clip=null", "--proxy", "bf16=false",
                                "--proxy", "schedule=wsd", "--proxy", " eval_every = 5"]))
    assert p.grad_clip is None and p.bf16 is False and p.schedule.value == "wsd"
    assert p.eval_every == 5


@pytest.mark.parametrize(("argv", "message"), [
    (["--proxy", "depth=3"], "--proxy: depth: unknown key"),
    (["--proxy", "lr=-1"], "--proxy: lr: Input should be greater than 0 (got -1)"),
    (["--proxy", "d_model"], "--proxy: expected KEY=VALUE (e.g. d_model=64) or a PROXY.yaml "
                             "file, got 'd_model' (no such file)"),
    (["--proxy", "lr=[1"], "--proxy: lr: cannot read the value '[1'"),
    (["--proxy", "FILE", "--proxy", "lr=0.1"], "FILE: depth: unknown key"),
    (["--proxy", "LIST"], "LIST: expected a mapping of proxy settings, got list"),
    (["--proxy", "BROKEN"], "BROKEN:2: invalid YAML (mapping values are not allowed here)"),
])
def test_a_wrong_key_or_value_is_one_line_naming_it(tmp_path: Path, argv: list[str],
                                                    message: str) -> None:
    files = {"FILE": "d_model: 32\ndepth: 3\n", "LIST": "- 1\n- 2\n", "BROKEN": "a: 1\nb: c: d\n"}
    for i, item in enumerate(argv):
        if item in files:
            path = tmp_path / f"{item}.yaml"
            path.write_text(files[item])
            argv[i] = str(path)
            message = message.replace(item, str(path))
    with pytest.raises(ConfigError) as e:
        proxy_from_args(_parse(argv))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_shortcuts_are_checked_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--layers", "0"], ["--lr", "-1"], ["--lr", "inf"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as e:
            _parse(argv)
        assert e.value.code == 2
        assert argv[0] in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([], steps_required=True)
