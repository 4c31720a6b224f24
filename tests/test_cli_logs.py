"""The command's conventions: --version, -v/-q logging, help for every argument, --progress."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from mixbatch import __version__
from mixbatch.cli import build_parser, main
from mixbatch.cli_common import progress_enabled, progress_mode
from mixbatch.logs import NOISY, level_of, setup_logging

REST = re.compile(r"``|:(func|class|mod|meth|attr):`")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mixbatch {__version__}"


def _leaves(p: argparse.ArgumentParser, path: tuple[str, ...] = ()
            ) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command that runs something (``("search", "run")``, ...), with its parser."""
    action = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
    if action is None:
        return {path: p}
    return {k: v for name, sp in action.choices.items() for k, v in _leaves(sp, (*path, name)).items()}


#: the commands that run long enough to show progress
LONG = {("prepare",), ("stream",), ("demo",), ("search", "run"), ("search", "merge"), ("train",)}


def test_every_argument_of_every_command_has_plain_help() -> None:
    parser = build_parser()
    leaves = _leaves(parser)
    assert len(leaves) >= 17 and set(leaves) >= LONG
    for p in [parser, *leaves.values()]:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                continue
            assert a.help, f"{p.prog}: {a.option_strings or a.dest} has no help"
            assert not REST.search(a.help), f"{p.prog}: reStructuredText in {a.help!r}"
        for g in p._action_groups:
            assert not REST.search(g.description or ""), f"{p.prog}: {g.title}"
    for name, sp in _subparsers(parser).items():  # every command of every module: plain words
        assert sp.description is None or not REST.search(sp.description), name


def test_every_command_takes_v_and_q_after_its_name() -> None:
    for path, p in _leaves(build_parser()).items():
        flags = {f for a in p._actions for f in a.option_strings}
        assert {"-v", "-q"} <= flags, path
        assert ("--progress" in flags) == (path in LONG), path
        assert ("--no-progress" in flags) == (path in LONG), path


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


#: the required arguments of each long command, to parse it
_ARGS = {("prepare",): ["c.yaml"], ("stream",): ["c.yaml", "--steps", "1"], ("demo",): [],
         ("search", "run"): ["c.yaml", "--design", "d.csv", "--out", "r.csv"],
         ("search", "merge"): ["c.yaml", "--out", "m.json"],
         ("train",): ["c.yaml", "--steps", "2"]}


def test_progress_flags_agree_across_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    assert set(_ARGS) == LONG
    for cmd, extra in _ARGS.items():
        on = parser.parse_args([*cmd, *extra, "--progress"])
        off = parser.parse_args([*cmd, *extra, "--no-progress"])
        unset = parser.parse_args([*cmd, *extra])
        assert progress_enabled(on) and not progress_enabled(off)
        assert unset.progress is None  # the default: only when stderr is a terminal
        assert not progress_enabled(parser.parse_args(["-q", *cmd, *extra]))
        assert not progress_enabled(parser.parse_args([*cmd, *extra, "-q"]))
        assert progress_mode(on) == "lines" and progress_mode(unset) == "off"  # not a terminal
        monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
        assert progress_mode(unset) == "live" and progress_mode(on) == "live"
        assert progress_mode(parser.parse_args([*cmd, *extra, "-q"])) == "off"
        monkeypatch.undo()


def test_train_shows_its_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_config
    from test_loader import _cfg

    cfg = _cfg(tmp_path, holdout=0.2)
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    data["store"] = str(cfg.store_dir)
    data["sources"] = {n: {"path": str(cfg.resolve(s.path))} for n, s in cfg.sources.items()}
    path = str(write_config(tmp_path / "t.yaml", data))
    tiny = ["--layers", "1", "--d-model", "32", "--heads", "2", "--eval-tokens", "256",
            "--threads", "1", "--device", "cpu", "--proxy", "eval_every=3", "--no-audit"]
    argv = ["train", path, "--steps", "6", "--out", str(tmp_path / "run"), *tiny]
    assert main([*argv, "--progress"]) == 0
    captured = capsys.readouterr()
    # the run's energy and noise scale are said, measured or not (never an invented number)
    assert "energy: " in captured.out and "noise scale: not measured" in captured.out
    lines = [x for x in captured.err.splitlines() if x.startswith("train: step")]
    # not a terminal: plain lines, the first step's, each evaluation's and the last
    assert [x.split(" · ")[0] for x in lines] == ["train: step 1/6", "train: step 3/6",
                                                  "train: step 6/6"]
    assert " · val " in lines[1] and " tok/s · loss " in lines[2]
    assert main([*argv, "--out", str(tmp_path / "quiet")]) == 0  # default: off off a terminal
    assert "train: step" not in capsys.readouterr().err
    assert main(["-v", *argv, "--out", str(tmp_path / "logged")]) == 0  # -v: through logging
    assert "mixbatch: INFO: train: step 6/6" in capsys.readouterr().err
