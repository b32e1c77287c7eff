"""The champion: decided by the evaluate stage's fp32 score, among runs on the same data only;
a tie keeps the old champion; concurrent decisions end on one champion. Real trainings of
conftest's tiny model, registered in a real SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from src.data.splits import split_ids
from src.data.vocab import build_vocab
from src.serving import registry
from tests.conftest import _env, write_params
from tests.test_tracking import corpus, register_checkpoint, run_training, tiny_config  # noqa: F401 (fixture)


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def aliases(uri, name):
    return {k: str(v) for k, v in MlflowClient(uri, registry_uri=uri).get_registered_model(name).aliases.items()}


def test_champion_moves_on_a_better_fp32_score_and_a_tie_keeps_it(uri, corpus, tmp_path):  # noqa: F811
    name = "rules"

    def run(i, steps):
        cfg = tiny_config(train={"max_steps": steps, "eval_interval": min(steps, 10)}, tracking={"model_name": name})
        return run_training(cfg, uri, corpus, tmp_path / f"run{i}")

    _, _, first = run(0, 20)
    assert first.champion and first.previous is None and aliases(uri, name) == {"champion": first.version}
    _, _, worse = run(1, 4)
    assert worse.score > first.score and not worse.champion and worse.previous == first.score
    # The same params and seed train the same weights: exactly the same score, a tie.
    _, _, tie = run(2, 20)
    assert tie.score == first.score and not tie.champion
    assert aliases(uri, name) == {"champion": first.version}
    _, _, better = run(3, 60)
    assert better.score < first.score and better.champion and better.previous == first.score
    assert aliases(uri, name) == {"champion": better.version}
    client = MlflowClient(uri, registry_uri=uri)
    assert len(client.search_model_versions(f"name='{name}'")) == 4


def test_a_run_on_another_corpus_never_moves_the_champion(uri, corpus, tmp_path):  # noqa: F811
    name = "novel"
    cfg = tiny_config(tracking={"model_name": name})
    _, _, novel = run_training(cfg, uri, corpus, tmp_path / "novel", fingerprint="novel-data")
    # A trivially predictable text: a far lower loss, on other data.
    easy = "ab" * 400
    vocab = build_vocab(easy, "lf")
    vocab.save(tmp_path / "vocab.json")
    split = split_ids(vocab.encode(easy), 0.2, 0.0)
    other = (vocab, split.train, split.val, tmp_path / "vocab.json")
    _, _, trivial = run_training(cfg, uri, other, tmp_path / "easy", fingerprint="easy-data")
    assert trivial.score < novel.score / 2
    assert aliases(uri, name) == {"champion": novel.version}
    assert trivial.model_name == f"{name}-data-easy-data" and trivial.champion
    assert aliases(uri, trivial.model_name) == {"champion": trivial.version}


def test_registering_again_makes_no_new_version(uri, corpus, tmp_path):  # noqa: F811
    """A train stage restored from DVC's run cache, or a register stage rerun: one version."""
    cfg = tiny_config(tracking={"model_name": "again"})
    run_id, _, first = run_training(cfg, uri, corpus, tmp_path / "run")
    again = register_checkpoint(cfg, uri, run_id, tmp_path / "run" / "best.pt", corpus[2], "tiny-data")
    assert (again.version, again.new, again.champion) == (first.version, False, True)


def test_concurrent_decisions_end_on_one_champion(uri, corpus, tmp_path, monkeypatch):  # noqa: F811
    cfg = tiny_config(tracking={"model_name": "race"})
    runs = [run_training(cfg, uri, corpus, tmp_path / f"r{i}", fingerprint=f"warm-{i}")[0] for i in range(2)]
    # The worse version's decision is slow to write its alias: without the lock, the better one
    # would be decided and written meanwhile, then overwritten by the stale decision.
    slow_write = MlflowClient.set_registered_model_alias

    def set_alias(self, name, alias, version):
        if name == "race2" and threading.current_thread().name == "worse":
            time.sleep(1.0)
        return slow_write(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias)
    results = {}

    def register(i, score):
        results[i] = registry.register(
            uri, runs[i], tmp_path / f"r{i}" / "best.pt", 20, score, "race-data", "race2", {"prime": "Happy"}
        )

    threads = [
        threading.Thread(target=register, args=(0, 2.0), name="worse"),
        threading.Thread(target=register, args=(1, 1.0), name="better"),
    ]
    threads[0].start()
    time.sleep(0.3)
    threads[1].start()
    for t in threads:
        t.join()
    assert results[1].champion
    assert aliases(uri, "race2") == {"champion": results[1].version}


def test_register_stage_with_tracking_off_does_nothing(stage_repo):
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    assert params["tracking"]["enabled"] is False
    write_params(stage_repo, params)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.register"],
        cwd=stage_repo,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing registered" in proc.stdout
    assert json.loads((stage_repo / "models" / "registration.json").read_text())["registered"] is False
    assert not (stage_repo / "mlflow.db").exists()


def test_fingerprint_names_the_validation_data():
    base = dict(corpus_sha256="0" * 64, newline="lf", max_chars=None, val_fraction=0.1, test_fraction=0.0)
    same = registry.data_fingerprint(**base)
    assert registry.data_fingerprint(**base) == same
    for change in (
        {"corpus_sha256": "1" * 64},
        {"newline": "keep"},
        {"max_chars": 1000},
        {"val_fraction": 0.2},
        {"test_fraction": 0.1},
    ):
        assert registry.data_fingerprint(**{**base, **change}) != same, change
