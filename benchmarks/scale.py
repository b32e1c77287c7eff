"""How the pipeline scales with the corpus: each stage's wall time and peak memory at 1M to 1G characters.

    python -m benchmarks.scale [--sizes 1M,10M,100M,1G] [--train-up-to 100M] [--steps 50] [--repeats 1] [--tmp /tmp]

For each size a corpus is made on the fly from the novel (its CRLF lines, one line in 7 written
in Cyrillic and one in 13 with accented Latin letters, so that an eighth of the characters take 2
bytes in UTF-8; repeated to the size), in a temporary copy of the repository with a params.yaml
pointing at it. Each stage then runs as the pipeline runs it, `python -m pipeline.<stage>`, in a
process of its own, and the table gives its wall time (interpreter and imports included) and peak
resident memory (the process's ru_maxrss), per million characters and per character. The net
columns take off what the stage costs on 20K characters (its start-up: the interpreter and the
imports, about 2 s and 250 MB), so they show how its own work grows with the corpus. The training
is a fixed small one (1x128 LSTM, --steps steps, one validation: the last, on the whole split),
so the time of train and evaluate grows with the validation split only. Sizes above --train-up-to
run corpus, encode and split only. With --repeats N each size's stages run N times in turn and the
table gives the median time and the largest peak: at 10M a stage's own work (a fraction of a
second) is smaller than the jitter of one start-up. The temporary folder (corpus, its copy and the ids: about 4.5
bytes per character) is deleted after each size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

from benchmarks.common import REPO, machine, novel_path, table

STAGES = ("corpus", "encode", "split", "train", "evaluate", "sample")
DATA_STAGES = STAGES[:3]
STARTUP_CHARS = 20_000
UNITS = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
CYRILLIC = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "абцдефгхийклмнопярстуввхызАБЦДЕФГХИЙКЛМНОПЯРСТУВВХЫЗ",
)
ACCENTS = str.maketrans("aeiouc", "àéîöüç")
# Disk per character: the corpus made here, its copy in data/, the ids and their split (uint8).
DISK_PER_CHAR = 4.5


def parse_size(text: str) -> int:
    text = text.strip().upper()
    try:
        return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)
    except (ValueError, IndexError):
        raise SystemExit(f"--sizes: {text!r} is not a size such as 1M, 100M or 1G") from None


def mixed_text(novel: str) -> str:
    """The novel's lines, one in 7 in Cyrillic letters and one in 13 with accents (CRLF kept)."""
    lines = novel.split("\n")
    for i in range(0, len(lines), 7):
        lines[i] = lines[i].translate(CYRILLIC)
    for i in range(3, len(lines), 13):
        lines[i] = lines[i].translate(ACCENTS)
    return "\n".join(lines)


def make_corpus(path: Path, chars: int, base: str) -> int:
    """Write `chars` characters of `base` repeated to `path`; -> its size in bytes."""
    block = base.encode("utf-8")
    with open(path, "wb") as f:
        for _ in range(chars // len(base)):
            f.write(block)
        f.write(base[: chars % len(base)].encode("utf-8"))
    return path.stat().st_size


def workspace(root: Path, corpus: Path, steps: int) -> Path:
    """A copy of the code and a params.yaml for a small, fixed training on `corpus`."""
    repo = root / "repo"
    repo.mkdir()
    for name in ("src", "pipeline"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = {
        "data": {"path": str(corpus)},
        "model": {"embedding_dim": 16, "lstm_size": 128, "num_layers": 1, "dropout": 0.0},
        "train": {"max_steps": steps, "eval_interval": steps, "checkpoint_interval": steps, "resume": "never"},
        "sample": {"length": 200, "prime": "The"},
        "tracking": {"enabled": False},
    }
    for section, values in overrides.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def run_stage(repo: Path, stage: str) -> tuple[float, int]:
    """Run one stage in its own process; -> (wall seconds, peak resident bytes: its ru_maxrss)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": (repo / "mlruns").as_uri()}
    log = repo / f"{stage}.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", f"pipeline.{stage}"], cwd=repo, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, so its rusage is this process's alone
    seconds = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{stage} failed ({code}): {log.read_text(errors='replace').strip()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024  # KiB on Linux


def measure(
    chars: int, stages: tuple[str, ...], steps: int, base: str, tmp: Optional[str], repeats: int = 1
) -> list[tuple]:
    """Rows (stage, median seconds, largest peak bytes) for one corpus size, its stages run
    `repeats` times in turn (each pass as the pipeline runs them: corpus, then encode, ...)."""
    root = Path(tempfile.mkdtemp(prefix="karnna-scale-", dir=tmp))
    try:
        free = shutil.disk_usage(root).free
        if free < DISK_PER_CHAR * chars:
            raise SystemExit(
                f"{root}: {free / 1e9:.1f} GB free, {chars:,} characters need about "
                f"{DISK_PER_CHAR * chars / 1e9:.1f} GB; pass --tmp on a larger disk"
            )
        corpus = root / "corpus.txt"
        start = time.perf_counter()
        size = make_corpus(corpus, chars, base)
        print(f"{chars:,} characters, {size:,} bytes made in {time.perf_counter() - start:.1f} s", flush=True)
        repo = workspace(root, corpus, steps)
        runs: dict[str, list[tuple[float, int]]] = {stage: [] for stage in stages}
        for _ in range(repeats):
            for stage in stages:
                seconds, peak = run_stage(repo, stage)
                print(f"  {stage}: {seconds:.1f} s, peak {peak / 1e6:.0f} MB", flush=True)
                runs[stage].append((seconds, peak))
        return [(stage, statistics.median(s for s, _ in r), max(m for _, m in r)) for stage, r in runs.items()]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def label(chars: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if chars >= scale:
            return f"{chars / scale:g}{unit}"
    return str(chars)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage=__doc__.split("\n\n")[1].strip())
    p.add_argument("--sizes", default="1M,10M,100M,1G", help="corpus sizes in characters (default: %(default)s)")
    p.add_argument("--train-up-to", default="100M", help="larger sizes run corpus, encode, split only")
    p.add_argument("--steps", type=int, default=50, help="training steps (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each stage, median time (default: %(default)s)")
    p.add_argument("--tmp", default=None, help="where the temporary folders go (default: the system's)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: give 1 or more runs of each stage")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    train_up_to = parse_size(args.train_up_to)
    path = novel_path()
    if path is None:
        raise SystemExit("no novel beside the checkout (../shared/data/anna.txt): nothing to make corpora from")
    base = mixed_text(path.read_bytes().decode("utf-8"))
    print(machine(), flush=True)
    # Each stage's start-up (interpreter, imports, a tiny corpus): what the net columns take off,
    # so that they show how a stage's own work grows with the corpus.
    print("start-up:", flush=True)
    needed = STAGES if any(chars <= train_up_to for chars in sizes) else DATA_STAGES
    startup = {
        stage: (s, m) for stage, s, m in measure(STARTUP_CHARS, needed, args.steps, base, args.tmp, args.repeats)
    }
    rows = []
    for chars in sizes:
        stages = STAGES if chars <= train_up_to else DATA_STAGES
        for stage, seconds, peak in measure(chars, stages, args.steps, base, args.tmp, args.repeats):
            net_s, net_m = seconds - startup[stage][0], peak - startup[stage][1]
            rows.append(
                (
                    label(chars),
                    stage,
                    f"{seconds:.1f}",
                    f"{seconds / chars * 1e6:.3f}",
                    f"{net_s / chars * 1e6:.3f}",
                    f"{peak / 1e6:.0f}",
                    f"{net_m / 1e6:.0f}",
                    f"{peak / chars:.2f}",
                )
            )
    headers = (
        "chars",
        "stage",
        "seconds",
        "s per M chars",
        "net s per M chars",
        "peak RSS MB",
        "net peak MB",
        "peak bytes per char",
    )
    print(table(headers, rows))
    print(
        f"net: less the stage's start-up on {STARTUP_CHARS:,} characters: "
        + ", ".join(f"{stage} {s:.1f} s, {m / 1e6:.0f} MB" for stage, (s, m) in startup.items())
    )


if __name__ == "__main__":
    main()
