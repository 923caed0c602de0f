"""Do two versions of clrctl write the same results? (issue 18: the core's reorganisation)

Runs a fixed set of CPU runs with the code in one directory, then compares every
``metrics.csv``, ``epochs.csv`` and ``summary.json`` of two such output trees byte for byte,
timing fields aside. Standard library only: clrctl runs in subprocesses
(``sys.executable -m clrctl``, ``PYTHONPATH=DIR``, cwd ``DIR`` so ``configs/`` resolves).

Check a refactor against an earlier commit (the python must have clrctl's dependencies,
e.g. ``.venv/bin/python``)::

    git worktree add /tmp/base <commit>                 # the reference code, e.g. main
    python benchmarks/identical_outputs.py run --code /tmp/base --out /tmp/bytes-base
    python benchmarks/identical_outputs.py run --code .         --out /tmp/bytes-new
    python benchmarks/identical_outputs.py diff /tmp/bytes-base /tmp/bytes-new   # exit 0: identical
    git worktree remove /tmp/base

What ``run`` does (every command with ``device=cpu``, ``-q``, ``--run-dir`` under OUT, and
``OMP_NUM_THREADS=1`` unless ``--threads`` says otherwise, since results depend on the
thread count):

- ``train`` on every ``configs/digits-*.yaml`` that is a training config
  (``OUT/train/<stem>``); ``digits-finetune.yaml`` is the two-stage fine-tune, started from
  ``model.weights=OUT/train/digits-pretrain`` (a config whose ``model.weights`` names
  ``runs/X`` gets ``OUT/train/X``, trained before it);
- a seed group: ``train configs/digits-triangular2.yaml --seeds 0..2`` (``OUT/seeds/…``);
- a range test: ``range-test configs/digits-range-test.yaml`` (``OUT/range-test/…``);
- two ranks: ``train configs/digits-triangular2.yaml --nproc 2`` (gloo; ``OUT/nproc2/…``);
- the stepsize sweep as bundled, ``sweep configs/digits-stepsize-sweep.yaml -j 2``
  (30 runs of 688 steps; ``--no-sweep`` skips it).

Measured on the shared 2-core machine (b0fd3b1): 111-143 s for the whole ``run``, of which
the sweep 74-101 s and the other eleven commands 3-8 s each; 128 result files.

Each command's output goes to ``OUT/logs/<run>.log``; ``OUT/manifest.json`` records the code
directory, its git commit, the commands and their wall times. ``run`` stops at the first
command that fails.

``diff A B`` prints one line per file (``same``, ``DIFFERENT`` with the first differing line,
or ``only in A/B``) and exits 1 if anything differs. Masked before comparing, and only these:
the values (not the names) of CSV columns and JSON keys that ``TIMING`` matches, and each
tree's own OUT and code paths, in case a file records them (none does today: only run.json,
which is not compared). Two runs of the same code (b0fd3b1) differ in ``elapsed_s`` alone, the
loop's wall time (epochs.csv and summary.json); every metrics.csv is byte-identical as it is.
Everything else must be the same bytes: floats as written, key order, line ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

RESULT_FILES = ("metrics.csv", "epochs.csv", "summary.json")
# Timing fields. elapsed_s is what clrctl writes today (epochs.csv column; summary.json of a
# train run, a range test and each range-test seed); the rest are names a refactor might use
# for a wall time or timestamp, masked so that adding one is not reported as a difference
# of results. A renamed result field is still reported.
TIMING = re.compile(r"^(elapsed(_s)?|.*_seconds|.*_secs|wall(_s|_time)?|duration(_s)?|time(stamp)?"
                    r"|started(_at)?|ended(_at)?|created(_at)?|updated(_at)?|start_time|end_time)$")
MASK = "<timing>"
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- run
def top_level(text: str, key: str) -> str | None:
    """The value of a top-level ``key:`` line of a YAML file ('' for a block), else None."""
    match = re.search(rf"^{re.escape(key)}:[ \t]*([^#\n]*)", text, re.M)
    return match.group(1).strip() if match else None


def weights_run(text: str) -> str | None:
    """``X`` when the config's ``model.weights`` is ``runs/X`` (a run of another config)."""
    match = re.search(r"^model:\s*\n(?:[ \t]+.*\n|\s*\n)*?[ \t]+weights:[ \t]*runs/([\w.-]+)", text, re.M)
    return match.group(1) if match else None


def plan(code: Path, out: Path, sweep: bool) -> list[tuple[str, list[str]]]:
    """(name, clrctl arguments) of every run, in order (a pretrained run before its fine-tune)."""
    common = ["device=cpu", "-q"]
    train: dict[str, list[str]] = {}
    needs: dict[str, str] = {}
    sweeps: list[str] = []
    for path in sorted((code / "configs").glob("digits-*.yaml")):
        rel, text = f"configs/{path.name}", path.read_text()
        name = (top_level(text, "name") or "").strip("'\"")
        if top_level(text, "sweep") is not None:
            sweeps.append(rel)
        elif name.endswith("range-test"):
            continue  # a range-test config: run below with range-test
        else:
            extra = []
            if (pre := weights_run(text)) is not None:
                needs[path.stem] = pre
                extra = [f"model.weights={out / 'train' / pre}"]
            train[path.stem] = ["train", rel, *common, *extra, "--run-dir", str(out / "train" / path.stem)]
    missing = {stem: pre for stem, pre in needs.items() if pre not in train}
    if missing:
        sys.exit(f"error: no config trains the weights of {missing} (configs/<X>.yaml for runs/X)")
    order = [s for s in train if s not in needs] + [s for s in train if s in needs]
    runs = [(f"train/{stem}", train[stem]) for stem in order]
    t2 = "configs/digits-triangular2.yaml"
    runs += [
        ("seeds/digits-triangular2", ["train", t2, *common, "--seeds", "0..2",
                                      "--run-dir", str(out / "seeds" / "digits-triangular2")]),
        ("range-test/digits-range-test", ["range-test", "configs/digits-range-test.yaml", *common,
                                          "--run-dir", str(out / "range-test" / "digits-range-test")]),
        ("nproc2/digits-triangular2", ["train", t2, *common, "--nproc", "2",
                                       "--run-dir", str(out / "nproc2" / "digits-triangular2")]),
    ]
    if sweep:
        for rel in sweeps:
            stem = Path(rel).stem
            runs.append((f"sweep/{stem}", ["sweep", rel, *common, "-j", "2", "--run-dir", str(out / "sweep" / stem)]))
    return runs


def git_commit(code: Path) -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run(code: Path, out: Path, threads: int, sweep: bool) -> int:
    code, out = code.resolve(), out.resolve()
    if not (code / "clrctl" / "__init__.py").is_file():
        sys.exit(f"error: {code} holds no clrctl/ package")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} is not empty; give a new --out")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0"}
    manifest = {"code": str(code), "out": str(out), "commit": git_commit(code), "python": sys.executable,
                "threads": threads, "runs": []}
    start = time.perf_counter()
    status = 0
    for name, args in plan(code, out, sweep):
        log = out / "logs" / (name.replace("/", "__") + ".log")
        print(f"{name}: clrctl {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        with log.open("w") as fh:
            rc = subprocess.run([sys.executable, "-m", "clrctl", *args], cwd=code, env=env,
                                stdout=fh, stderr=subprocess.STDOUT).returncode
        wall = round(time.perf_counter() - t0, 1)
        manifest["runs"].append({"name": name, "argv": ["clrctl", *args], "rc": rc, "wall_s": wall})
        print(f"  rc {rc}, {wall} s", flush=True)
        if rc != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            print(f"error: {name} exited {rc}; the last lines of {log}:\n{tail}", file=sys.stderr)
            status = 1
            break
    manifest["wall_s"] = round(time.perf_counter() - start, 1)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{'failed' if status else 'done'}: {len(manifest['runs'])} commands in {manifest['wall_s']} s -> {out}")
    return status


# --------------------------------------------------------------------------- diff
def roots(tree: Path) -> list[str]:
    """The paths a file of this tree may contain that another tree's files spell otherwise."""
    found = [str(tree.resolve())]
    try:
        found.append(json.loads((tree / MANIFEST).read_text())["code"])
    except (OSError, ValueError, KeyError):
        pass
    return sorted(set(found), key=len, reverse=True)  # the longer first: one may contain the other


def unroot(data: bytes, tree_roots: list[str]) -> bytes:
    for i, root in enumerate(tree_roots):
        data = data.replace(root.encode(), f"<root{i}>".encode())
    return data


def mask_csv(lines: list[bytes]) -> tuple[list[bytes], list[str]]:
    """Each line with the values of the timing columns (named in the header) replaced by MASK.
    clrctl's CSVs hold numbers and plain names, never quoted fields: a quote is left as it is."""
    if not lines:
        return lines, []
    header = lines[0].rstrip(b"\r\n").split(b",")
    cols = [i for i, name in enumerate(header) if TIMING.match(name.decode(errors="replace"))]
    if not cols:
        return lines, []
    masked = [lines[0]]
    for line in lines[1:]:
        body = line.rstrip(b"\r\n")
        end, fields = line[len(body):], body.split(b",")
        for i in cols:
            if i < len(fields) and fields[i] != b"":
                fields[i] = MASK.encode()
        masked.append(b",".join(fields) + end)
    return masked, [header[i].decode() for i in cols]


JSON_SCALAR = rb'(-?[0-9][0-9.eE+-]*|null|true|false|"(?:[^"\\]|\\.)*")'


def mask_json(lines: list[bytes]) -> tuple[list[bytes], list[str]]:
    """Each ``"key": scalar`` whose key is a timing name with the scalar replaced by MASK, in
    place (the rest of the line, its indentation and trailing comma untouched)."""
    seen: set[str] = set()

    def repl(match: re.Match) -> bytes:
        key = match.group(2).decode(errors="replace")
        if not TIMING.match(key):
            return match.group(0)
        seen.add(key)
        return match.group(1) + b'"' + MASK.encode() + b'"'

    pattern = re.compile(rb'("((?:[^"\\]|\\.)*)"\s*:\s*)' + JSON_SCALAR)
    return [pattern.sub(repl, line) for line in lines], sorted(seen)


def result_files(tree: Path) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*")
            if p.name in RESULT_FILES and p.is_file() and p.relative_to(tree).parts[0] != "logs"}


def compare(a: Path, b: Path, rel: str, roots_a: list[str], roots_b: list[str]) -> tuple[bool, str]:
    """(same, what to print after the file's name)."""
    raw_a, raw_b = (a / rel).read_bytes(), (b / rel).read_bytes()
    if raw_a == raw_b:
        return True, "same (byte-identical)"
    lines_a = unroot(raw_a, roots_a).splitlines(keepends=True)
    lines_b = unroot(raw_b, roots_b).splitlines(keepends=True)
    mask = mask_json if rel.endswith(".json") else mask_csv
    (lines_a, fields_a), (lines_b, fields_b) = mask(lines_a), mask(lines_b)
    for n, (la, lb) in enumerate(zip(lines_a, lines_b), start=1):
        if la != lb:
            return False, f"DIFFERENT at line {n}:\n    A: {la!r}\n    B: {lb!r}"
    if len(lines_a) != len(lines_b):
        n = min(len(lines_a), len(lines_b)) + 1
        longer, side = (lines_a, "A") if len(lines_a) > len(lines_b) else (lines_b, "B")
        return False, f"DIFFERENT: {len(lines_a)} vs {len(lines_b)} lines; line {n} only in {side}: {longer[n - 1]!r}"
    masked = sorted(set(fields_a) | set(fields_b))
    return True, f"same ({', '.join(masked)} masked)" if masked else "same (paths masked)"


def diff(a: Path, b: Path) -> int:
    files_a, files_b = result_files(a), result_files(b)
    if not files_a and not files_b:
        sys.exit(f"error: neither {a} nor {b} holds any of {', '.join(RESULT_FILES)}")
    roots_a, roots_b = roots(a), roots(b)
    bad = 0
    for rel in sorted(files_a | files_b):
        if rel not in files_b:
            same, what = False, f"only in A ({a})"
        elif rel not in files_a:
            same, what = False, f"only in B ({b})"
        else:
            same, what = compare(a, b, rel, roots_a, roots_b)
        bad += not same
        print(f"{rel}: {what}")
    total = len(files_a | files_b)
    print(f"{total - bad} of {total} files the same" + (f", {bad} DIFFERENT" if bad else ""))
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every case with the code in --code, into --out")
    r.add_argument("--code", type=Path, required=True, help="a checkout of clrctl (its root)")
    r.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    r.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (default 1)")
    r.add_argument("--no-sweep", action="store_true", help="skip the stepsize sweep (30 of the runs)")
    d = sub.add_parser("diff", help="compare the result files of two --out trees")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        sys.exit(run(args.code, args.out, args.threads, not args.no_sweep))
    sys.exit(diff(args.a, args.b))


if __name__ == "__main__":
    main()
