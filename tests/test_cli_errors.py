"""Errors of the `mixbatch` command: one line per problem, no pydantic internals, a URL where a
local path is read is an unsupported scheme (not a missing file), a remote source without its
extra names the extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixbatch.cli import main


def _config(tmp_path: Path, sources: str, batch: str = "{seq_len: 8, batch_size: 2}",
            store: str = "store") -> str:
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "c.yaml"
    path.write_text(f"seed: 1\nstore: {store}\nsources: {sources}\n"
                    f"mixture: {{weights: {{a: 1}}}}\nbatch: {batch}\n")
    return str(path)


def _error_lines(err: str) -> list[str]:
    """The error lines of stderr (notes before them are theirs to print), checked to be all."""
    lines = err.strip().splitlines()
    lines = lines[next((i for i, x in enumerate(lines) if x.startswith("mixbatch: error")), 0):]
    assert lines and all(x.startswith("mixbatch: error: ") for x in lines), err
    return lines


@pytest.mark.parametrize("argv", [
    ["stream", "s3://bucket/c.yaml", "--steps", "1"],
    ["inspect", "gs://bucket/c.yaml"],
    ["audit", "seen", "s3://bucket/audit.jsonl", "--step", "3"],
    ["audit", "report", "LOCAL", "hf://datasets/x/audit.jsonl"],
    ["search", "fit", "s3://bucket/results.csv", "--target", "val/mean", "--out", "m.json"],
    ["search", "design", "LOCAL", "--n", "4", "--out", "az://container/design.csv"],
    ["train", "LOCAL", "--steps", "2", "--proxy", "https://host/proxy.yaml"],
])
def test_a_url_as_a_command_line_path_is_an_unsupported_scheme(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    local = _config(tmp_path, "{a: {path: a.jsonl}}")
    argv = [local if a == "LOCAL" else a for a in argv]
    url = next(a for a in argv if "://" in a)
    assert main(argv) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{url}: unsupported scheme {url.split(':')[0]}://" in line
    assert "not found" not in line and "no such" not in line.lower()


def test_a_ray_address_may_be_a_url() -> None:
    from mixbatch.cli import build_parser
    from mixbatch.cli_common import check_local_paths

    check_local_paths(build_parser().parse_args(
        ["prepare", "c.yaml", "--backend", "ray", "--ray-address", "ray://head:10001"]))


#: runs each command line (JSON) with s3fs unimportable, as without the s3 extra
_NO_S3FS = """
import json, sys
sys.modules["s3fs"] = None
from mixbatch.cli import main
for argv in json.loads(sys.argv[1]):
    print("rc", main(argv), file=sys.stderr)
"""


def test_a_remote_path_without_its_extra_names_the_scheme_and_the_extra(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "sto").mkdir()
    remote_source = _config(tmp_path / "src", '{a: {path: "s3://bucket/data/*.jsonl"}}')
    remote_store = _config(tmp_path / "sto", "{a: {path: a.jsonl}}", store="s3://bucket/store")
    cmds = [["prepare", remote_source], ["prepare", remote_store],
            ["stream", remote_store, "--steps", "1"]]
    r = subprocess.run([sys.executable, "-c", _NO_S3FS, json.dumps(cmds)], capture_output=True,
                       text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 2 * len(cmds), r.stderr
    for error, rc in zip(lines[::2], lines[1::2], strict=True):
        assert rc == "rc 2" and error.startswith("mixbatch: error: "), r.stderr
        assert "reading s3:// needs s3fs" in error and "mixbatch[s3]" in error
        assert "matches no files" not in error


def test_an_unknown_scheme_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, '{a: {path: "foo://bucket/x.jsonl"}}')
    assert main(["prepare", cfg]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "unknown scheme 'foo'" in line


def test_config_problems_one_per_line_in_the_users_words(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "{a: {path: a.jsonl, format: jsnol, on_error: maybe}}",
                  batch="{seq_len: 8, batch_size: 2, packing: conact}")
    assert main(["inspect", cfg]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 3, lines
    assert lines[0] == (f"mixbatch: error: {cfg}: sources.a.format: Input should be 'jsonl', "
                        "'parquet', 'arrow', 'text', 'megatron' or 'tokens' (got 'jsnol')")
    for line in lines:
        assert "str-enum" not in line and "TokenFormat" not in line and "[" not in line


def test_proxy_settings_errors_name_the_key(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "{a: {path: a.jsonl}}")
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text("d_model: 32\nlayers: 2\n")
    for extra, message in ((["--proxy", "depth=3"], "--proxy: depth: unknown key"),
                           (["--proxy", str(proxy)], f"{proxy}: layers: unknown key"),
                           (["--proxy", "schedule=linear"], "--proxy: schedule: Input should be "
                                                            "'constant', 'cosine', 'wsd' or "
                                                            "'power' (got 'linear')")):
        for cmd in (["train", cfg, "--steps", "2"],
                    ["search", "run", cfg, "--design", "d.csv", "--out", "r.csv"]):
            assert main([*cmd, *extra]) == 2
            (line,) = _error_lines(capsys.readouterr().err)
            assert line == f"mixbatch: error: {message}"
