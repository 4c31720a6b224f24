from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_config
from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.policies import PolicyName
from mixbatch.online import EvalGroups, parse_policy, train_online
from mixbatch.online.cli import main
from mixbatch.online.report import write_report
from mixbatch.online.runfiles import read_csv
from mixbatch.proxy import ProxyConfig, train_proxy
from test_loader import _cfg

POLICIES = ["doremi", "odm", "skillit", "dga", "exp3-flad", "ucb1-flad", "ado"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    return _cfg(tmp_path_factory.mktemp("online"), holdout=0.2)


def _tiny(**kw) -> ProxyConfig:
    base = {"n_layer": 1, "d_model": 32, "n_head": 2, "seq_len": 64, "batch_size": 4,
            "steps": 30, "lr": 1e-2, "warmup": 3, "eval_tokens": 512, "eval_every": 10,
            "device": "cpu", "threads": 1}
    return ProxyConfig.from_dict({**base, **kw})


def _weights(run: Path) -> np.ndarray:
    header, rows = read_csv(run / "weights.csv")
    cols = [i for i, h in enumerate(header) if h.startswith("weight_")]
    return np.array([[float(r[i]) for i in cols] for r in rows])


# ---- every policy, end to end ----------------------------------------------------------------
@pytest.mark.parametrize("name", POLICIES)
def test_policy_runs_end_to_end_with_defaults(cfg, tmp_path: Path, name: str) -> None:
    run = tmp_path / "run"
    r = train_online(cfg, _tiny(), {"name": name}, target="s2", run_dir=run)
    s = json.loads((run / "summary.json").read_text())
    assert s["policy"] == name and s["steps"] == 30 and s["updates"] >= 3
    w = _weights(run)
    assert w.shape == (30, 3)
    assert np.allclose(w.sum(axis=1), 1.0) and (w >= 0).all()  # on the simplex at every step
    assert not np.allclose(w, w[0])  # the policy moved the mixture
    assert np.array_equal(w, r.weights)
    assert [u[0] for u in r.updates] == sorted({u[0] for u in r.updates})
    assert np.allclose(w[r.updates[0][0]], r.updates[0][1])  # an update steers the next step
    header, rows = read_csv(run / "losses.csv")
    assert len(rows) == 30 and header[:3] == ["step", "tokens", "train_loss"]
    assert [h["step"] for h in s["history"]] == [10, 20, 30]
    assert s["target_val_loss"] == s["history"][-1]["val_loss"]["s2"] < np.log(258)
    audit = [json.loads(a) for a in (run / "audit.jsonl").read_text().splitlines()]
    assert audit[0]["audit_log"] and len(audit[0]["sources"]) == 3  # the header line
    assert {a["step"] for a in audit[1:]} == set(range(30))
    if name == "doremi":
        assert (run / "reference.pt").exists() and s["overhead_tokens"]["reference"] > 0
    if name == "skillit":
        graph = json.loads((run / "skillit_graph.json").read_text())
        assert np.array(graph["graph"]).shape == (3, 1)  # targeted: one evaluation group
        assert s["settings"]["every"] == 3 and s["overhead_tokens"]["probes"] > 0


def test_static_run_is_a_train_proxy_run(cfg) -> None:
    a = train_online(cfg, _tiny(steps=12), "none", audit=False)
    b = train_proxy(cfg, _tiny(steps=12))
    assert a.updates == [] and set(a.state) == set(b.state)
    for k in a.state:
        assert torch.equal(a.state[k], b.state[k]), k


def test_reference_is_cached_and_can_be_loaded(cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train_online(cfg, _tiny(steps=10), "doremi", run_dir=run)
    assert first.summary["overhead_tokens"]["reference"] > 0
    (run / "checkpoint.pt").unlink()
    again = train_online(cfg, _tiny(steps=10), "doremi", run_dir=run)
    assert again.summary["overhead_tokens"]["reference"] == 0  # read from the cache
    assert again.updates == first.updates
    given = train_online(cfg, _tiny(steps=10), {"name": "doremi", "reference": str(run / "reference.pt")})
    assert given.updates == first.updates


# ---- resume -------------------------------------------------------------------------------------
RUN_FILES = ("weights.csv", "losses.csv", "updates.csv", "audit.jsonl")


def _final_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", POLICIES)
def test_resume_is_identical_to_a_straight_run(cfg, tmp_path: Path, name: str) -> None:
    proxy = _tiny(steps=20, eval_every=5)
    straight = train_online(cfg, proxy, name, target="s2", run_dir=tmp_path / "a")
    cut = tmp_path / "b"
    train_online(cfg, proxy, name, target="s2", run_dir=cut, stop_at=10)
    saved = (cut / "checkpoint.pt").read_bytes()
    # run on to 15, then lose that progress: the checkpoint is still the one at step 10
    train_online(cfg, proxy, name, target="s2", run_dir=cut, resume=True, stop_at=15)
    (cut / "checkpoint.pt").write_bytes(saved)
    resumed = train_online(cfg, proxy, name, target="s2", run_dir=cut, resume=True)
    for f in RUN_FILES:
        assert (cut / f).read_text() == (tmp_path / "a" / f).read_text(), f
    assert resumed.history == straight.history
    assert resumed.updates == straight.updates[-len(resumed.updates):] and resumed.updates
    for k in straight.state:
        assert torch.equal(resumed.state[k], straight.state[k]), k
    a, b = _final_checkpoint(tmp_path / "a"), _final_checkpoint(cut)
    # the loader (counts, weights override), the policy and the tokens trained end alike
    assert a["loader"] == b["loader"] and a["policy"] == b["policy"]
    assert a["trained_tokens"] == b["trained_tokens"] and a["step"] == b["step"] == 20
    for k, v in a["optimizer"]["state"].items():
        for field_name, x in v.items():
            assert torch.equal(x, b["optimizer"]["state"][k][field_name]), (k, field_name)


def test_resume_drops_torn_last_lines(cfg, tmp_path: Path) -> None:
    """A run killed while writing a row: the torn tail is dropped (counted), never glued onto
    the next row, and the folder ends as an uninterrupted run's."""
    proxy = _tiny(steps=12, eval_every=4)
    train_online(cfg, proxy, "odm", target="s2", run_dir=tmp_path / "a")
    cut = tmp_path / "b"
    train_online(cfg, proxy, "odm", target="s2", run_dir=cut, stop_at=6)
    with open(cut / "losses.csv", "a") as f:
        f.write("1")  # the start of the next row: "1" + "6,..." would read as step 16
    with open(cut / "audit.jsonl", "a") as f:
        f.write('{"step": 6, "ra')
    with pytest.warns(UserWarning, match="losses.csv: left out a torn last line"):
        _, rows = read_csv(cut / "losses.csv")
    assert [int(r[0]) for r in rows] == list(range(6))
    lines: list[str] = []
    r = train_online(cfg, proxy, "odm", target="s2", run_dir=cut, resume=True, log=lines.append)
    for f in RUN_FILES:
        assert (cut / f).read_text() == (tmp_path / "a" / f).read_text(), f
    assert r.summary["torn_lines"] == {"losses.csv": 1, "audit.jsonl": 1}
    assert any("torn" in ln and "losses.csv 1" in ln for ln in lines)


def test_resume_under_other_settings_is_refused(cfg, tmp_path: Path) -> None:
    train_online(cfg, _tiny(steps=6), {"name": "odm", "smoothing": 0.5}, run_dir=tmp_path,
                 stop_at=3)
    with pytest.raises(StateError, match=r"settings\.smoothing"):
        train_online(cfg, _tiny(steps=6), {"name": "odm", "smoothing": 0.8}, run_dir=tmp_path,
                     resume=True)


def test_a_second_run_on_a_held_run_folder_is_refused(cfg, tmp_path: Path) -> None:
    from mixbatch.lock import FolderLock, LockedError

    # another `train --out` holds it
    with FolderLock(tmp_path, "run folder"), pytest.raises(
            LockedError, match=r"process \d+ .* is writing this run folder"):
        train_online(cfg, _tiny(steps=2), None, run_dir=tmp_path)
    r = train_online(cfg, _tiny(steps=2), None, run_dir=tmp_path)  # released: it runs
    assert (tmp_path / "losses.csv").exists() and r.summary["steps"] == 2


# ---- report and CLI -----------------------------------------------------------------------------
def test_report_writes_pngs_and_html(cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_online(cfg, _tiny(steps=12, eval_every=4), "odm", target="s1", run_dir=run)
    paths = write_report(run)
    for key in ("weights", "val_loss", "train_loss"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "s1 (target)" in page


def _config_file(cfg, tmp_path: Path, policy) -> str:
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    data["store"] = str(cfg.store_dir)
    data["sources"] = {n: {"path": str(cfg.resolve(s.path))} for n, s in cfg.sources.items()}
    data["mixture"]["policy"] = policy
    return str(write_config(tmp_path / "online.yaml", data))


def test_cli_train_then_report(cfg, tmp_path: Path, capsys) -> None:
    path = _config_file(cfg, tmp_path, {"name": "exp3-flad", "target": "s2"})
    run = tmp_path / "run"
    tiny = ["--proxy", "n_layer=1", "--proxy", "d_model=32", "--proxy", "n_head=2",
            "--proxy", "eval_tokens=512", "--proxy", "threads=1"]
    assert main(["train", path, "--steps", "8", "--out", str(run), "--seed", "5", *tiny]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["policy"] == "exp3-flad" and s["target"] == "s2" and s["seed"] == 5
    assert s["proxy"]["seed"] == 5 and s["updates"] == 8
    assert main(["train", path, "--steps", "8", "--out", str(tmp_path / "static"),
                 "--policy", "none", *tiny]) == 0
    assert json.loads((tmp_path / "static" / "summary.json").read_text())["updates"] == 0
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists()
    assert "exp3-flad" in capsys.readouterr().out


BAD = [
    ({"name": "doremix"}, [], "mixture.policy.name: unknown policy 'doremix' (choices: doremi, "
                              "odm, skillit, dga, exp3-flad, ucb1-flad, ado)"),
    ({"name": "odm", "eta": 1.0}, [], "mixture.policy.eta: unknown key for policy 'odm' (keys: "
                                      "every, initial, min_weight, name, smoothing, target, "
                                      "variant, warmup)"),
    ({"name": "doremi", "eta": -1}, [], "mixture.policy.eta: must be > 0.0, got -1"),
    ({"eta": 1}, [], "mixture.policy.name: missing"),
    ({"name": "dga"}, [], "policy 'dga' steers towards a target"),
    ({"name": "dga", "target": "web"}, [], "mixture.policy.target: unknown source 'web'"),
    (None, ["--policy", "exp4-flad"], "--policy: unknown policy 'exp4-flad'"),
    (None, ["--policy", "odm", "--target", "s9"], "target: unknown source 's9'"),
    (None, ["--policy", "odm", "--proxy", "d_model"], "--proxy: expected KEY=VALUE"),
    (None, ["--policy", "odm", "--proxy", "depth=3"], "--proxy: depth: unknown key"),
]


@pytest.mark.parametrize(("policy", "args", "message"), BAD)
def test_bad_policy_config_exits_2_with_one_line(cfg, tmp_path: Path, capsys, policy, args,
                                                 message) -> None:
    path = _config_file(cfg, tmp_path, policy)
    rc = main(["train", path, "--steps", "3", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("mixbatch: error: ") and err.strip().count("\n") == 0, err
    assert message in err
    assert not (tmp_path / "run" / "weights.csv").exists()  # nothing ran


# ---- the policy spec ----------------------------------------------------------------------------
def test_parse_policy_names_keys_and_defaults() -> None:
    names = ["a", "b", "c"]
    assert parse_policy(None) is None
    assert parse_policy("exp3-flad").name is PolicyName.EXP3_FLAD
    assert parse_policy({"name": "UCB1_FLAD"}).name is PolicyName.UCB1_FLAD
    spec = parse_policy({"name": "skillit", "eta": 0.2, "probe_steps": 7, "eval": "all",
                         "target": "b"}, names)
    assert spec.settings == {"eta": 0.2} and spec.probe_steps == 7
    assert spec.eval_groups() is EvalGroups.ALL and spec.target == "b"
    assert spec.policy_settings(300) == {"eta": 0.2, "every": 30}
    assert parse_policy({"name": "skillit", "target": "a"}).eval_groups() is EvalGroups.TARGET
    assert parse_policy("odm").policy_settings(100_000)["warmup"] == 2000  # the authors' value
    assert parse_policy("odm").policy_settings(500)["warmup"] == 20
    assert parse_policy({"name": "odm", "warmup": 7}).policy_settings(500)["warmup"] == 7
    assert parse_policy("dga").policy_settings(30)["every"] == 3
    assert parse_policy("doremi").loop_options(40)["reference_steps"] == 40
    with pytest.raises(ConfigError, match=r"^mixture.policy.reference: unknown key for policy 'odm'"):
        parse_policy({"name": "odm", "reference": "x.pt"})
    with pytest.raises(ConfigError, match=r"^mixture.policy.initial: expected 3 weights"):
        parse_policy({"name": "doremi", "initial": [1, 2]}, names)
    with pytest.raises(ConfigError, match=r"^mixture.policy.eval: got 'some'"):
        parse_policy({"name": "skillit", "eval": "some"})
    with pytest.raises(ConfigError, match=r"^mixture.policy.probe_steps: expected an integer"):
        parse_policy({"name": "skillit", "probe_steps": 0})


def test_skillit_with_a_given_graph_runs_no_probes(cfg, tmp_path: Path) -> None:
    graph = [[0.1], [0.5], [0.9]]
    r = train_online(cfg, _tiny(steps=12), {"name": "skillit", "graph": graph, "every": 4},
                     target="s2", run_dir=tmp_path)
    assert r.summary["overhead_tokens"]["probes"] == 0 and len(r.updates) == 3
    assert not (tmp_path / "skillit_graph.json").exists()
    assert np.argmax(r.updates[-1][1]) == 2  # the source with the strongest edge to the target
    with pytest.raises(ConfigError, match="graph: has 1 columns"):
        train_online(cfg, _tiny(steps=4), {"name": "skillit", "graph": graph, "eval": "all"})


def test_holdout_is_required(cfg) -> None:
    with pytest.raises(ConfigError, match="holdout"):
        train_online(cfg.model_copy(update={"holdout": 0.0}), _tiny(steps=2), "odm")


def test_run_dir_copy_resumes_elsewhere(cfg, tmp_path: Path) -> None:
    """The run folder is self-contained: copied elsewhere, it resumes the same."""
    proxy = _tiny(steps=8, eval_every=4)
    straight = train_online(cfg, proxy, "odm", run_dir=tmp_path / "a")
    train_online(cfg, proxy, "odm", run_dir=tmp_path / "b", stop_at=4)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    moved = train_online(cfg, proxy, "odm", run_dir=tmp_path / "c", resume=True)
    assert moved.history == straight.history


def test_stream_end_stops_the_run_and_scores_it(cfg) -> None:
    from mixbatch.config import OnExhausted

    # the config's static mixture (0.5, 0.3, 0.2): the loader hangs at the stream's end with
    # some other weights (e.g. uniform) under `on_exhausted: stop`, a planner issue
    capped = cfg.model_copy(update={
        "mixture": cfg.mixture.model_copy(update={"on_exhausted": OnExhausted.STOP}),
        "sources": {n: s.model_copy(update={"max_epochs": 0.2}) for n, s in cfg.sources.items()}})
    r = train_online(capped, _tiny(steps=200, eval_every=100), "none", audit=False)
    assert r.summary["stream_ended"] and 0 < r.summary["steps"] < 100
    assert r.history[-1]["step"] == r.summary["steps"]


def test_cli_policy_flag_keeps_the_configured_settings_of_the_same_policy(cfg, tmp_path: Path
                                                                          ) -> None:
    path = _config_file(cfg, tmp_path, {"name": "odm", "smoothing": 0.5, "target": "s1"})
    tiny = ["--proxy", "n_layer=1", "--proxy", "d_model=32", "--proxy", "n_head=2",
            "--proxy", "eval_tokens=256", "--proxy", "threads=1", "--no-audit"]
    assert main(["train", path, "--steps", "3", "--out", str(tmp_path / "a"), "--policy", "odm",
                 *tiny]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert a["settings"]["smoothing"] == 0.5 and a["target"] == "s1"
    assert main(["train", path, "--steps", "3", "--out", str(tmp_path / "b"), "--policy",
                 "skillit", "--target", "s0", *tiny]) == 0
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["policy"] == "skillit" and b["target"] == "s0" and b["loop"]["eval"] == "target"


def test_cli_trains_with_ado_and_its_run_length_settings(cfg, tmp_path: Path) -> None:
    path = _config_file(cfg, tmp_path, None)
    tiny = ["--proxy", "n_layer=1", "--proxy", "d_model=32", "--proxy", "n_head=2",
            "--proxy", "eval_tokens=256", "--proxy", "threads=1", "--no-audit"]
    assert main(["train", path, "--steps", "3", "--out", str(tmp_path / "a"), "--policy", "ado",
                 *tiny]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["policy"] == "ado"
    assert (s["settings"]["refit_every"], s["settings"]["start"], s["settings"]["ignore"]) == (
        1, 0, 0)


def test_doremi_mean_excess_uses_train_and_reference_losses(cfg) -> None:
    r = train_online(cfg, _tiny(steps=8), {"name": "doremi", "excess": "mean"}, audit=False)
    assert len(r.updates) == 8 and r.summary["averaged_weights"] is not None


# ---- DGA: the paper's full-model inner product ------------------------------------------------
def test_dga_full_model_gradients_run_and_are_recorded(cfg) -> None:
    spec = {"name": "dga", "grads": "full", "normalize_grads": False, "every": 2}
    r = train_online(cfg, _tiny(steps=8), spec, target="s2", audit=False)
    assert r.summary["loop"]["grads"] == "full" and not r.summary["loop"]["normalize_grads"]
    assert len(r.updates) == 4
    head = train_online(cfg, _tiny(steps=8), {**spec, "grads": "head"}, target="s2", audit=False)
    assert head.summary["loop"]["grads"] == "head"
    assert r.updates != head.updates  # other gradients, other weights
    with pytest.raises(ConfigError, match=r"^mixture.policy.grads: got 'all'"):
        parse_policy({"name": "dga", "grads": "all"})


def test_full_gradients_sum_to_the_batch_gradient(cfg) -> None:
    """Per-source full-model gradients, weighted by their token counts, are the gradient of the
    batch's token-mean loss; the target gradient of rows is the gradient of their mean loss."""
    from mixbatch.loader.loader import MixedLoader
    from mixbatch.online.feedback import full_grad_sums, target_grad_sums
    from mixbatch.proxy.evaluate import build_eval_rows
    from mixbatch.proxy.model import ProxyLM

    proxy = _tiny()
    loader = MixedLoader(cfg.model_copy(update={"batch": cfg.batch}), rank=0, world_size=1)
    torch.manual_seed(0)
    model = ProxyLM(proxy.model_for(loader.stores[0].vocab_size, 64))
    params = list(model.parameters())
    batch = loader.batch_of(loader.next_step())
    ids, lab, pos, src = (torch.from_numpy(batch[k]) for k in
                          ("input_ids", "labels", "position_ids", "source_ids"))
    out = model(ids, lab, pos)
    sums, counts = full_grad_sums(model, out.losses, out.mask, src, 3)
    assert counts.sum() == out.mask.sum()
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out.loss, params)]).double()
    assert torch.allclose(sums.sum(0) / counts.sum(), want, atol=1e-6)

    rows = build_eval_rows(loader.stores[2], loader.heldout()["s2"], 64, 512, loader.eod_id,
                           loader.pad_id)
    total, n = target_grad_sums(model, rows, torch.device("cpu"), 4, None, full=True)
    ev = model(torch.from_numpy(rows.input_ids), torch.from_numpy(rows.labels),
               torch.from_numpy(rows.position_ids))
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ev.loss, params)]).double()
    assert int(n) == rows.tokens and torch.allclose(total / n, want, atol=1e-6)


# ---- `mixbatch train` without holdout ---------------------------------------------------------
def test_cli_train_holds_out_a_default_fraction(cfg, tmp_path: Path, capsys) -> None:
    from mixbatch.online.cli import DEFAULT_HOLDOUT

    path = _config_file(cfg.model_copy(update={"holdout": 0.0}), tmp_path, None)
    tiny = ["--proxy", "n_layer=1", "--proxy", "d_model=32", "--proxy", "n_head=2",
            "--proxy", "eval_tokens=256", "--proxy", "threads=1", "--no-audit"]
    assert main(["train", path, "--steps", "3", "--out", str(tmp_path / "run"), *tiny]) == 0
    err = capsys.readouterr().err
    assert f"holding out {DEFAULT_HOLDOUT:.0%} of each source's documents" in err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["holdout"] == DEFAULT_HOLDOUT and s["val_loss"] is not None
