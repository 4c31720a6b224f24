"""The training step line (progress.StepProgress) and the hooks that feed it from the trainer."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from mixbatch.progress import StepProgress
from mixbatch.proxy.hooks import ChainedHooks, chain_hooks
from mixbatch.proxy.progress import ProgressHooks
from mixbatch.proxy.trainer import Hooks, Trainer

LINE = re.compile(r"train: step ([\d,]+)/([\d,]+) · ETA (\S+) · (\S+) tokens · (\S+) tok/s"
                  r"(?: · loss (\S+))?(?: · val (\S+))?$")


class Lazy:
    """A loss that counts how often it is read (a device sync each time for a tensor)."""

    def __init__(self, value: float) -> None:
        self.value, self.reads = value, 0

    def __float__(self) -> float:
        self.reads += 1
        return self.value


def test_plain_lines_at_most_every_period_and_always_the_last() -> None:
    buf = io.StringIO()
    loss = Lazy(2.5)
    with StepProgress(1000, "lines", every=3600, stream=buf) as p:
        for k in range(1000):
            p.update(k + 1, (k + 1) * 100, loss)
    lines = buf.getvalue().splitlines()
    # the first update draws (nothing drawn for an hour before it), then only the last step
    assert [LINE.match(x).group(1) for x in lines] == ["1", "1,000"]
    assert loss.reads == 2  # read when drawn, not at every step
    m = LINE.match(lines[-1])
    assert m.group(4) == "100.00k" and m.group(6) == "2.5000" and m.group(7) is None


def test_an_evaluation_is_drawn_at_once_and_kept() -> None:
    buf = io.StringIO()
    with StepProgress(10, "lines", every=3600, stream=buf) as p:
        p.begin(4)  # resumed at step 4
        for k in range(4, 10):
            p.update(k + 1, (k - 3) * 10, 1.0, 0.75 if k + 1 == 6 else None)
    steps = [(LINE.match(x).group(1), LINE.match(x).group(7)) for x in buf.getvalue().splitlines()]
    assert steps == [("5", None), ("6", "0.7500"), ("10", "0.7500")]


def test_eta_counts_from_the_start_of_this_call(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 100.0, 110.0])  # made at 0 s, begun at 100 s, step 60 done at 110 s
    monkeypatch.setattr("mixbatch.progress.time.perf_counter", lambda: next(clock))
    p = StepProgress(100, "lines", every=0, stream=io.StringIO())
    p.begin(50)  # resumed: 10 steps in 10 s, 40 to go
    p.update(60, 40_000)
    assert p.line(110.0) == "step 60/100 · ETA 0:00:40 · 40.00k tokens · 4.00k tok/s"


def test_off_logs_at_info_and_live_updates_the_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mixbatch.progress"), \
            StepProgress(3, "off", every=0) as p:
        for k in range(3):
            p.update(k + 1, 10 * (k + 1), 1.5)
    assert [r.getMessage().split(" · ")[0] for r in caplog.records] == [
        f"train: step {k}/3" for k in (1, 2, 3)]
    live = StepProgress(3, "live", stream=io.StringIO())
    with live:
        live.update(2, 20, 1.25)
    task = live._bar.tasks[0]
    assert task.completed == 2 and task.fields["line"].startswith("train step 2/3 · ETA")
    assert "loss 1.2500" in task.fields["line"]
    with pytest.raises(ValueError, match="mode"):
        StepProgress(3, "bar")


def test_chain_calls_each_hook_in_order() -> None:
    calls: list[str] = []

    class Rec(Hooks):
        def __init__(self, name: str) -> None:
            self.name = name

        def before_forward(self, step) -> None:
            calls.append(f"{self.name}.fwd")

        def after_update(self, step, record) -> None:
            calls.append(f"{self.name}.upd")

    a, b = Rec("a"), Rec("b")
    assert chain_hooks(a, None) is a
    chained = chain_hooks(a, b)
    assert isinstance(chained, ChainedHooks)
    chained.before_forward(None)
    chained.before_backward(None)
    chained.after_update(None, None)
    assert calls == ["a.fwd", "b.fwd", "a.upd", "b.upd"]


def test_the_trainer_feeds_the_line(tmp_path: Path) -> None:
    from conftest import TINY_PROXY
    from mixbatch.proxy import ProxyConfig
    from test_loader import _cfg

    cfg = _cfg(tmp_path, holdout=0.2)
    proxy = ProxyConfig.from_dict({**TINY_PROXY, "steps": 6, "eval_every": 3})
    buf = io.StringIO()
    with Trainer(cfg, proxy) as t, StepProgress(6, "lines", every=0, stream=buf) as line:
        t.eval_rows = t.heldout_rows()
        t.run(hooks=ProgressHooks(line), eval_every=3)
        fed = int(t.loader.fed_tokens.sum())
        losses = t.losses()
        history = t.history
    rows = [LINE.match(x) for x in buf.getvalue().splitlines()]
    assert [int(m.group(1)) for m in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[-1].group(6)) == pytest.approx(losses[-1], abs=5e-5)
    assert float(rows[2].group(7)) == pytest.approx(history[0]["val_loss_mean"], abs=5e-5)
    assert rows[1].group(7) is None
    assert line.tokens == fed


def test_bars_print_plain_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from mixbatch.progress import RateProgress, RunProgress

    with RunProgress(2, True) as r:
        r.advance("#1 val/mean 2.0")
        r.say("run 3 failed: boom")
        r.advance("#2 val/mean 1.5")
    err = capsys.readouterr().err.splitlines()
    assert [x.split(" · ")[0] for x in err] == ["proxy runs: 1/2", "run 3 failed: boom",
                                                "proxy runs: 2/2"]
    assert err[2].endswith(" · #2 val/mean 1.5") and " · ETA " in err[2]
    with RateProgress("tokenising", total=3) as b:  # at most every 10 s, and the last
        for _ in range(3):
            b.add(1, 10)
            b.advance()
    err = capsys.readouterr().err.splitlines()
    assert [x.split(" · ")[0] for x in err] == ["tokenising: 0/3", "tokenising: 3/3"]
    assert "docs/s" in err[-1]
    with RunProgress(2, False) as r, RateProgress("tokenising", 1, enabled=False) as b:
        r.advance("#1")
        b.advance()
    assert capsys.readouterr().err == ""


def test_plain_eta_is_the_mean_rate_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    from mixbatch.progress import RunProgress

    with RunProgress(3, True) as r:
        r.bar.tasks[0].start_time -= 100.0  # the first run took 100 s
        r.advance("#1")
    line = capsys.readouterr().err.strip()
    assert line.startswith("proxy runs: 1/3 · elapsed 0:01:40 · ETA 0:03:20 · #1"), line
