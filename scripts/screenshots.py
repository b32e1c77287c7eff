"""The pictures in README and docs/TRACKING.md, taken from this checkout's finished pipeline:

    python -m scripts.screenshots [--out docs/images] [--runs RUN RUN] [--steps 500 2000 5000]

Starts `make ui`'s and `make dashboard`'s servers (python -m src.ui) on free ports, takes PNG
screenshots with headless Chromium (`chromium --headless=new`, 1400 x 900), stops the servers.
What it shows: the runs table (model-training view, with the Dataset column), a run's loss
curves, that run's samples at --steps side by side (a page of their own built from the run's
samples/step_*.txt), the compare view of two runs, and optuna-dashboard's history and parameter
importance (one taller picture) (skipped where there is no study yet). Each PNG is cut to at most 300 KB (fewer colours,
then smaller). The runs: --runs (ids or names), else the two latest finished train-stage runs.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from src import ui
from src.tracking.store import connect
from src.utils import faults, fileio, repo
from src.utils.errors import KarnnaError

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 300_000
WINDOW = "1400,900"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((ui.HOST, 0))
        return s.getsockname()[1]


def start(view: str, port: int, params: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`python -m src.ui <view>` in a session of its own; -> (the process, the address it printed),
    once that address answers."""
    cmd = [sys.executable, "-m", "src.ui", view, "--port", str(port), "--params", str(params)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KarnnaError(f"{' '.join(cmd[2:4])} exited with {proc.returncode}: {log.read_text().strip()[-300:]}")
        lines = [x for x in log.read_text().splitlines() if x.startswith(f"{view}: http")]
        if lines:
            url = lines[0].split(": ", 1)[1]
            try:
                urllib.request.urlopen(url.split("#")[0], timeout=2).close()
                return proc, url
            except OSError:
                pass
        time.sleep(0.3)
    stop(proc)
    raise KarnnaError(f"{view} did not answer within 90 s: {log.read_text().strip()[-300:]}")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def shoot(url: str, png: Path, chromium: str, wait_ms: int, window: str = WINDOW) -> None:
    """A screenshot of `url`, cut to MAX_BYTES."""
    png.unlink(missing_ok=True)
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--screenshot={png}", f"--window-size={window}", f"--virtual-time-budget={wait_ms}", url]
    subprocess.run(cmd, capture_output=True, timeout=180)
    if not png.is_file():
        raise KarnnaError(f"chromium took no screenshot of {url}")
    shrink(png)
    print(f"{png} ({png.stat().st_size // 1000} KB): {url}")


def shrink(png: Path) -> None:
    from PIL import Image

    if png.stat().st_size <= MAX_BYTES:
        return
    image = Image.open(png).convert("RGB")
    scale = 1.0
    while True:
        size = (int(image.width * scale), int(image.height * scale))
        image.resize(size).quantize(colors=256).save(png, optimize=True)
        if png.stat().st_size <= MAX_BYTES or scale < 0.3:
            return
        scale *= 0.85


def pick_runs(client, exp_id: str, wanted: Optional[list[str]]) -> list:
    """The runs shown: --runs (ids or names), else the two latest finished train-stage runs."""
    if wanted:
        found = []
        for name in wanted:
            hits = client.search_runs([exp_id], f"attributes.run_name = '{name}'", max_results=1)
            found.append(hits[0] if hits else client.get_run(name))
        return found
    query = "tags.`mlflow.source.name` = 'pipeline.train' and attributes.status = 'FINISHED'"
    runs = client.search_runs([exp_id], query, order_by=["attributes.start_time DESC"], max_results=2)
    if not runs:
        raise KarnnaError(f"experiment {exp_id} has no finished train-stage run: run `make repro` first")
    return runs


def samples_page(client, run, steps: list[int], folder: Path) -> Path:
    """An HTML page of the run's samples at `steps` (those it has; else its first, middle and last)."""
    listed = sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples") if "step_" in a.path)
    by_step = {int(Path(p).stem.split("_")[1]): p for p in listed}
    have = sorted(by_step)
    chosen = [s for s in steps if s in by_step] or sorted({have[0], have[len(have) // 2], have[-1]} if have else ())
    if not chosen:
        raise KarnnaError(f"run {run.info.run_id} has no samples/step_*.txt (trained before train.sample_chars?)")
    columns = []
    for step in chosen:
        text = Path(client.download_artifacts(run.info.run_id, by_step[step], str(folder))).read_text(encoding="utf-8")
        columns.append(f"<div><h2>step {step:,}</h2><pre>{html.escape(text)}</pre></div>")
    page = folder / "samples.html"
    page.write_text(
        "<!doctype html><meta charset=utf-8><style>body{font-family:sans-serif;margin:24px}"
        ".cols{display:flex;gap:20px}.cols div{flex:1;min-width:0}pre{white-space:pre-wrap;font-size:15px;"
        "background:#f6f8fa;padding:12px;border-radius:6px}h1{font-size:20px}h2{font-size:16px}</style>"
        f"<h1>{html.escape(run.info.run_name)}: the text at each validation (samples/)</h1>"
        f"<div class=cols>{''.join(columns)}</div>",
        encoding="utf-8",
    )
    return page


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.screenshots", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="default: %(default)s")
    p.add_argument("--runs", nargs="+", help="the run(s) to show, ids or names (default: the two latest)")
    p.add_argument("--steps", nargs="+", type=int, default=[500, 2000, 5000], help="samples shown side by side")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--wait-ms", type=int, default=15_000, help="Chromium's virtual time for a page to load")
    args = p.parse_args(argv)
    return faults.run(lambda: take(args), "scripts.screenshots")


def take(args: argparse.Namespace) -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise KarnnaError("no chromium on PATH; install it (apt-get install -y chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    client = connect(repo.tracking_uri(os.environ, ROOT))
    has_study = ui.dashboard_storage(fileio.read_params(args.params)) is not None
    with tempfile.TemporaryDirectory(prefix="karnna-shots-") as tmp:
        folder, servers = Path(tmp), []
        try:
            proc, url = start("mlflow", free_port(), args.params, folder / "mlflow.log")
            servers.append(proc)
            base, exp_id = url.split("#")[0].rstrip("/"), url.split("/experiments/")[1].split("?")[0]
            runs = pick_runs(client, exp_id, args.runs)
            shoot(url, args.out / "mlflow_runs.png", chromium, args.wait_ms)
            run_page = f"{base}/#/experiments/{exp_id}/runs/{runs[0].info.run_id}"
            # its loss_curve.png (train and validation loss on one plot) in the run's artifact view;
            # the Model metrics tab draws every metric, alphabetically, loss last
            curves = f"{run_page}/artifacts/loss_curve.png?{ui.TRAINING_VIEW}"
            shoot(curves, args.out / "mlflow_loss_curves.png", chromium, args.wait_ms * 2)
            page = samples_page(client, runs[0], args.steps, folder)
            shoot(page.as_uri(), args.out / "mlflow_samples.png", chromium, 2000)
            if len(runs) > 1:
                ids = json.dumps(sorted(r.info.run_id for r in runs[:2]))
                query = urllib.parse.urlencode(
                    {"runs": ids, "experiments": json.dumps([exp_id]), "workflowType": "machine_learning"}
                )
                shoot(f"{base}/#/compare-runs?{query}", args.out / "mlflow_compare.png", chromium, args.wait_ms)
            else:
                print("one run only: no compare view (train a second, e.g. dvc exp run -S train.lr=2.0e-3)")
            if not has_study:
                print("no study (python -m src.tune): no optuna-dashboard pictures")
                return 0
            proc, url = start("dashboard", free_port(), args.params, folder / "dashboard.log")
            servers.append(proc)
            base = url.rsplit("/dashboard", 1)[0]
            listed = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=30))
            studies = listed.get("study_summaries", listed.get("studies", []))  # optuna-dashboard 0.21: the former
            study = studies[-1]["study_id"]
            # the study page: the history, and the parameter importance below it
            page = f"{base}/dashboard/studies/{study}"
            shoot(page, args.out / "optuna_history_importance.png", chromium, args.wait_ms, "1400,1700")
        finally:
            for proc in servers:
                stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
