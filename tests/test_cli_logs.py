"""The command's conventions: --version, -v/-q logging, help for every argument, --progress."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from mixbatch import __version__
from mixbatch.cli import build_parser, main
from mixbatch.cli_common import progress_enabled
from mixbatch.logs import NOISY, level_of, setup_logging

#: the commands of mixbatch.cli (search, train, audit ... are built by their own modules)
MINE = ("prepare", "inspect", "stream", "demo")
REST = re.compile(r"``|:(func|class|mod|meth|attr):`")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mixbatch {__version__}"


def test_every_argument_has_plain_help() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    parsers = [parser, *(subs[c] for c in MINE), _subparsers(subs["tokenizer"])["train"]]
    for p in parsers:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                continue
            assert a.help, f"{p.prog}: {a.option_strings or a.dest} has no help"
            assert not REST.search(a.help), f"{p.prog}: reStructuredText in {a.help!r}"
    for name, sp in subs.items():  # every command of every module: plain words
        assert sp.description is None or not REST.search(sp.description), name


def test_levels_and_noisy_libraries() -> None:
    assert level_of(0, 0) == logging.WARNING
    assert level_of(1, 0) == logging.INFO and level_of(5, 0) == logging.DEBUG
    assert level_of(0, 1) == logging.ERROR and level_of(0, 9) == logging.CRITICAL
    setup_logging(0, 0)
    assert all(logging.getLogger(n).level == logging.CRITICAL for n in NOISY)
    setup_logging(2, 0)
    assert all(logging.getLogger(n).level == logging.DEBUG for n in NOISY)
    log = setup_logging(0, 0)
    assert sum(getattr(h, "_mixbatch", False) for h in log.handlers) == 1  # replaced, not added


def test_verbose_logs_quiet_does_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\nstore: s\nsources: {a: {path: x.jsonl}}\n"
                   "mixture: {weights: {a: 1}}\nbatch: {seq_len: 8, batch_size: 2}\n")
    cmd = ["inspect", str(cfg)]  # no store there: an error, after the command started
    for argv in (["-v", *cmd], [*cmd, "-v"]):  # before the command or after it
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert "mixbatch: INFO: inspect: started" in err and "mixbatch: error:" in err
    for argv in (cmd, ["-q", *cmd]):
        assert main(argv) != 0
        assert "INFO" not in capsys.readouterr().err


def test_progress_flags_agree_across_commands() -> None:
    parser = build_parser()
    for cmd, extra in (("prepare", []), ("stream", ["--steps", "1"]), ("demo", [])):
        pos = [] if cmd == "demo" else ["c.yaml"]
        on = parser.parse_args([cmd, *pos, *extra, "--progress"])
        off = parser.parse_args([cmd, *pos, *extra, "--no-progress"])
        unset = parser.parse_args([cmd, *pos, *extra])
        assert progress_enabled(on) and not progress_enabled(off)
        assert unset.progress is None  # the default: only when stderr is a terminal
        assert not progress_enabled(parser.parse_args(["-q", cmd, *pos, *extra]))
