"""A sample at every validation: printed under the validation line, kept in the MLflow run
(samples/step_*.txt and samples/all.txt), without changing the training's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.config.schema import config_from_dict
from src.generation.sampling import generate
from src.model import checkpoint
from src.model.cells import CELLS
from src.tracking import runs
from src.training import samples
from src.training.loop import train
from src.training.report import Reporter
from src.training.state import TrainPaths, plan_resume
from tests.conftest import PowerCutAt, tiny_params

# dropout > 0: a sample that left the model in eval mode would change the losses after it
PARAMS = {"model": {"dropout": 0.3}, "sample": {"prime": "Happy", "top_k": 3, "temperature": 0.9}}


def config(sample_chars: int = 40, tracking: bool = False, **train_keys):
    params = tiny_params(**PARAMS, train={"sample_chars": sample_chars, **train_keys})
    params["tracking"] = {"enabled": tracking, "log_every": 5}
    return config_from_dict(params)


def run(cfg, tiny_data, folder: Path, reporter=None, resume=None):
    vocab, tr, va = tiny_data
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    paths = TrainPaths(folder / "best.pt", folder / "last.pt")
    result = train(cfg, vocab, tr, va, paths, reporter=reporter, progress=False, log=lines.append, resume=resume)
    return result, lines, paths


def test_samples_leave_the_losses_exactly_as_without_them(tmp_path, tiny_data):
    off, off_lines, _ = run(config(sample_chars=0), tiny_data, tmp_path / "off")
    on, on_lines, _ = run(config(), tiny_data, tmp_path / "on")
    assert on.train_history == off.train_history and on.val_history == off.val_history
    assert not [line for line in off_lines if "sample:" in line]
    # one line under each validation's line: the sample's first line, from the prime
    after = [on_lines[i + 1] for i, line in enumerate(on_lines) if line.startswith("step ")]
    assert len(after) == 3 and all(line.startswith("  sample: Happy") for line in after)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_the_sample_is_the_text_src_sample_writes_for_that_checkpoint_and_seed(tmp_path, tiny_data, cell):
    vocab = tiny_data[0]
    params = tiny_params(**PARAMS, train={"sample_chars": 60})
    params["model"]["cell"] = cell
    cfg = config_from_dict(params)
    state_samples = []

    class Keep(Reporter):
        def log_text(self, text, artifact_file):
            state_samples.append((artifact_file, text))

    run(cfg, tiny_data, tmp_path, reporter=Keep())
    last = dict(state_samples)[samples.step_file(30)]
    model, _, _ = checkpoint.load(tmp_path / "last.pt")
    s = cfg.sample
    assert generate(model, vocab, s.prime, 60, s.top_k, s.temperature, s.seed) == [last]
    assert len(last) == len("Happy") + 60


def test_a_prime_the_vocabulary_lacks_gives_way_to_one_it_has(tmp_path, tiny_data):
    """The train stage refuses such a prime before training; a training started otherwise (a
    notebook, another text) samples from one the vocabulary encodes instead of failing."""
    params = tiny_params(**PARAMS)
    params["sample"]["prime"] = "Zq"
    _, lines, _ = run(config_from_dict(params), tiny_data, tmp_path)
    prime = tiny_data[0].suggest_prime()
    assert [line for line in lines if "sample:" in line][0].startswith(f"  sample: {prime}")


def test_samples_reach_the_run_once_each_across_a_resume(tmp_path, tiny_data):
    """Validations every 10 steps, checkpoints every 15: killed at step 25, the run resumes from
    step 15 and validates step 20 again. The store holds one file per step and all.txt names
    each step once, in order, with the text of an uninterrupted run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tracking=True, checkpoint_interval=15)
    vocab, tr, va = tiny_data
    with pytest.raises(RuntimeError, match="power cut"):
        with runs.start_training_run(cfg, uri) as reporter:
            run(cfg, tiny_data, tmp_path / "run", reporter=PowerCutAt(reporter, 25))
    resume = plan_resume(cfg, tr, va, TrainPaths(tmp_path / "run" / "best.pt", tmp_path / "run" / "last.pt"))
    assert resume["resume"]["step"] == 15
    with runs.start_training_run(cfg, uri, resume_run_id=resume["run_id"]) as again:
        result, _, _ = run(cfg, tiny_data, tmp_path / "run", reporter=again, resume=resume)
    assert again.run_id == reporter.run_id and result.resumed_from == 15

    client = runs.connect(uri)
    listed = sorted(a.path for a in client.list_artifacts(again.run_id, "samples"))
    assert listed == ["samples/all.txt"] + [samples.step_file(s) for s in (10, 20, 30)]
    folder = Path(client.download_artifacts(again.run_id, "samples", str(tmp_path / "got")))
    whole = (folder / "all.txt").read_text(encoding="utf-8")
    assert [line.split()[2] for line in whole.splitlines() if line.startswith("--- step")] == ["10", "20", "30"]

    # the same texts as a run never interrupted, with tracking off
    kept = {}

    class Keep(Reporter):
        def log_text(self, text, artifact_file):
            kept[artifact_file] = text

    run(config(checkpoint_interval=15), tiny_data, tmp_path / "plain", reporter=Keep())
    assert whole == kept[samples.ALL]
    for step in (10, 20, 30):
        name = Path(samples.step_file(step)).name
        assert (folder / name).read_text(encoding="utf-8") == kept[samples.step_file(step)]


def test_a_resume_from_a_checkpoint_made_before_samples_starts_all_txt_afresh(tmp_path, tiny_data):
    cfg = config(checkpoint_interval=15)
    vocab, tr, va = tiny_data
    with pytest.raises(RuntimeError):
        run(cfg, tiny_data, tmp_path, reporter=PowerCutAt(Reporter(), 25))
    resume = plan_resume(cfg, tr, va, TrainPaths(tmp_path / "best.pt", tmp_path / "last.pt"))
    del resume["resume"]["samples"]
    kept = {}

    class Keep(Reporter):
        def log_text(self, text, artifact_file):
            kept[artifact_file] = text

    run(cfg, tiny_data, tmp_path, reporter=Keep(), resume=resume)
    assert [line for line in kept[samples.ALL].splitlines() if line.startswith("---")][0].startswith("--- step 20 ")
