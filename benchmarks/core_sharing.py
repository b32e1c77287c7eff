"""Trainings side by side: a grid in DVC's experiment queue run one at a time against two at once.

    python -m benchmarks.core_sharing [--steps 300] [--grid 'model.dropout=0.1,0.2,0.3,0.4'] [--alone 3] [--repo .]

Each part works in fresh clones of the last commit of --repo (this repository by default) in a
temporary folder, the novel beside them as ../shared/data/anna.txt (where the corpus stage of a
queued experiment must find it), with the repo's params but train.max_steps:
1. alone: the train stage (`python -m pipeline.train`, tracking off) with train.num_threads 0
   (torch's default, every core) and auto, alternately, --alone times each; the median training
   times. auto must keep the speed of a training alone.
2. grid: `dvc exp run --queue -S <grid>` (four experiments), then `dvc queue start -j 1` in one
   clone and `-j 2` in another; the wall time from the start until the last experiment is done,
   and each experiment's losses (metrics/train.json, metrics/eval.json), which must be identical
   between the two. Tracking is on, as in the pipeline: each experiment is one MLflow run, named
   after it, in its clone's mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import yaml

from benchmarks.common import REPO, machine, novel_path

BIN = Path(sys.executable).parent


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed in {cwd} ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def clone(source: Path, root: Path, name: str, steps: int, **train) -> Path:
    """A clone of the last commit of `source` with its split made (not timed), max_steps and `train` set."""
    repo = root / name
    sh(root, "git", "clone", "-q", str(source), name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(max_steps=steps, **train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "dvc", "repro", "-q", "split")
    sh(repo, "git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "benchmark")
    return repo


def train_seconds(repo: Path, num_threads) -> float:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["num_threads"] = num_threads
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(repo, sys.executable, "-m", "pipeline.train")
    return float(re.search(r"steps in (\d+(?:\.\d+)?) s", out).group(1))


def alone(source: Path, root: Path, steps: int, repeats: int) -> dict:
    repo = clone(source, root, "alone", steps, resume="never")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    times: dict = {0: [], "auto": []}
    for i in range(repeats):
        for threads in (0, "auto") if i % 2 == 0 else ("auto", 0):
            times[threads].append(train_seconds(repo, threads))
    return {str(k): statistics.median(v) for k, v in times.items()} | {"runs": {str(k): v for k, v in times.items()}}


def grid(source: Path, root: Path, name: str, steps: int, values: str, jobs: int) -> dict:
    repo = clone(source, root, name, steps)
    sh(repo, "dvc", "exp", "run", "--queue", "-S", values)
    start = time.perf_counter()
    sh(repo, "dvc", "queue", "start", "-j", str(jobs))
    while re.search(r"\b(Queued|Running)\b", sh(repo, "dvc", "queue", "status")):
        time.sleep(2)
    seconds = time.perf_counter() - start
    status = sh(repo, "dvc", "queue", "status")
    if "Failed" in status:
        sys.exit(f"an experiment failed in {repo}:\n{status}")
    names = [
        exp["name"]
        for base in json.loads(sh(repo, "dvc", "exp", "show", "--json"))
        for exp in base.get("experiments") or []
    ]
    return {
        "seconds": seconds,
        "experiments": experiments(repo, values.split("=")[0]),
        "names": sorted(names),
        "mlflow_runs": mlflow_runs(repo / "mlflow.db"),
    }


def mlflow_runs(store: Path) -> list[str]:
    """The names of the training runs in a clone's tracking store (one per experiment is the promise)."""
    with closing(sqlite3.connect(store)) as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM runs WHERE lifecycle_stage = 'active'"))


def experiments(repo: Path, key: str) -> dict:
    """{grid value: its losses} of every experiment in the clone: the training's best and final
    losses (metrics/train.json) and the evaluate stage's score (metrics/eval.json)."""
    found = {}
    for base in json.loads(sh(repo, "dvc", "exp", "show", "--json")):
        for exp in base.get("experiments") or []:
            data = exp["revs"][0]["data"]
            section, name = key.split(".")
            value = data["params"]["params.yaml"]["data"][section][name]
            train = data["metrics"]["metrics/train.json"]["data"]
            evaluated = data["metrics"]["metrics/eval.json"]["data"]
            found[str(value)] = {
                "best_val_loss": train["best_val_loss"],
                "final_train_loss": train["final_train_loss"],
                "eval_loss": evaluated["val"]["loss"],
            }
    return found


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="train.max_steps of every training (default: %(default)s)")
    p.add_argument("--grid", default="model.dropout=0.1,0.2,0.3,0.4", help="the -S grid (default: %(default)s)")
    p.add_argument("--alone", type=int, default=3, help="trainings alone per setting; 0 skips (default: %(default)s)")
    p.add_argument("--repo", type=Path, default=REPO, help="the repository to clone (default: this one)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if novel_path() is None:
        sys.exit("no novel beside the checkout (../shared/data/anna.txt)")
    print(machine(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="karnna-bench-") as tmp:
        root = Path(tmp)
        (root / "shared" / "data").mkdir(parents=True)
        shutil.copy(novel_path(), root / "shared" / "data" / "anna.txt")
        figures = {"steps": args.steps, "grid": args.grid}
        if args.alone:
            figures["alone"] = alone(args.repo, root, args.steps, args.alone)
            a = figures["alone"]
            print(f"alone, {args.steps} steps: num_threads 0 {a['0']:.1f} s, auto {a['auto']:.1f} s (medians)")
        for jobs in (1, 2):
            figures[f"j{jobs}"] = run = grid(args.repo, root, f"grid-j{jobs}", args.steps, args.grid, jobs)
            print(f"dvc queue start -j {jobs}: {run['seconds']:.0f} s")
            for value, metrics in sorted(run["experiments"].items()):
                print(f"  {args.grid.split('=')[0]}={value}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    same = figures["j1"]["experiments"] == figures["j2"]["experiments"]
    ratio = figures["j2"]["seconds"] / figures["j1"]["seconds"]
    print(f"-j 2 / -j 1 wall time: {ratio:.2f}; every experiment's losses identical: {same}")
    if args.json:
        args.json.write_text(json.dumps(figures | {"ratio": ratio, "identical": same}, indent=2) + "\n")


if __name__ == "__main__":
    main()
