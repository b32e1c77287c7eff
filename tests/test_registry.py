"""The champion: decided by the evaluate stage's fp32 score, among runs on the same data only;
a tie keeps the old champion; concurrent decisions end on one champion. Real trainings of
conftest's tiny model, registered in a real SQLite store."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from src.data.splits import split_ids
from src.data.vocab import build_vocab
from src.serving import registry
from tests.conftest import TINY_TEXT, _env, sh, write_params
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
            uri,
            runs[i],
            tmp_path / f"r{i}" / "best.pt",
            step=20,
            score=score,
            fingerprint="race-data",
            model_name="race2",
            input_example={"prime": "Happy"},
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


def test_fingerprint_names_the_scored_data_not_how_the_files_hold_it():
    vocab = build_vocab(TINY_TEXT, "lf")
    split = split_ids(vocab.encode(TINY_TEXT), 0.2, 0.1)
    same = registry.data_fingerprint(vocab, split.val, split.test)
    # Other dtypes and the newline policy's name (the text has no CR): the same data.
    kept = build_vocab(TINY_TEXT, "keep")
    assert registry.data_fingerprint(kept, split.val.astype(np.int32), split.test.astype(np.uint8)) == same
    changed = split.val.copy()
    changed[-1] = (changed[-1] + 1) % vocab.size
    for other in (
        (vocab, changed, split.test),  # one character of the validation text
        (vocab, split.val, split.test[1:]),  # the test text
        (vocab, split.val[:-1], np.concatenate([split.val[-1:], split.test])),  # the boundary
        (vocab, split.test, split.val),  # validation and test swapped
        (build_vocab(TINY_TEXT + "~", "lf"), split.val, split.test),  # the same ids, another vocabulary
    ):
        assert registry.data_fingerprint(*other) != same


def test_fingerprint_of_a_mapped_split_a_slice_at_a_time_is_the_whole_arrays(tmp_path, monkeypatch):
    """The register stage hashes memory-mapped splits a slice at a time (bounded memory on a large
    corpus): the digest is the one of the whole arrays as little-endian int64, as documented."""
    import hashlib
    import json as json_

    vocab = build_vocab(TINY_TEXT, "lf")
    split = split_ids(vocab.encode(TINY_TEXT), 0.2, 0.1)
    for name in ("val", "test"):
        np.save(tmp_path / f"{name}.npy", getattr(split, name).astype(np.uint8))
    mapped = [np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("val", "test")]
    h = hashlib.sha256()
    for part in (
        json_.dumps(list(vocab.chars), ensure_ascii=False).encode("utf-8"),
        *(ids.astype("<i8").tobytes() for ids in (split.val, split.test)),
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    monkeypatch.setattr(registry, "FINGERPRINT_CHUNK", 7)  # slices that end mid-split
    assert registry.data_fingerprint(vocab, *mapped) == h.hexdigest()[:16]


def _old_fingerprint(corpus_text: str) -> str:
    """The params-list fingerprint that versions registered by commit 26217f0 or earlier carry:
    a hash of the corpus and of the params that cut the validation split."""
    facts = {
        "corpus_sha256": hashlib.sha256(corpus_text.encode()).hexdigest(),
        "newline": "lf",
        "max_chars": None,
        "val_fraction": 0.2,
        "test_fraction": 0.0,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def test_versions_with_an_old_fingerprint_keep_their_champion(uri, corpus, tmp_path):  # noqa: F811
    """A model registered under the params-list fingerprint: a run on the same data is registered
    under the suffixed name (the old versions do not compete, and nothing fails); renaming the
    old model gives the plain name back to the next registration."""
    name = "legacy"
    cfg = tiny_config(tracking={"model_name": name})
    run_id, _, old = run_training(cfg, uri, corpus, tmp_path / "old", fingerprint=_old_fingerprint(TINY_TEXT))
    assert old.model_name == name and old.champion
    vocab, _, val_ids, _ = corpus
    fingerprint = registry.data_fingerprint(vocab, val_ids, val_ids[:0])
    best = tmp_path / "old" / "best.pt"
    new = register_checkpoint(cfg, uri, run_id, best, val_ids, fingerprint)
    assert new.model_name == f"{name}-data-{fingerprint}" and new.champion and new.previous is None
    assert aliases(uri, name) == {"champion": old.version}
    client = MlflowClient(uri, registry_uri=uri)
    assert registry.decide_champion(client, name) == old.version
    client.rename_registered_model(name, f"{name}-params-fingerprint")
    renamed = register_checkpoint(cfg, uri, run_id, best, val_ids, fingerprint)
    assert (renamed.model_name, renamed.version, renamed.champion) == (name, "1", True)
    assert aliases(uri, f"{name}-params-fingerprint") == {"champion": old.version}


@pytest.mark.slow
def test_the_register_stage_fingerprints_the_scored_files(stage_repo, tmp_path, monkeypatch):
    """The stages as `dvc repro` runs them, with real MLflow: a change of the validation data under
    the same params is another fingerprint; a training param or a rerun split is not."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = True
    write_params(stage_repo, params)
    name = params["tracking"]["model_name"]

    def stages(*names):
        for stage in names:
            sh(stage_repo, sys.executable, "-m", f"pipeline.{stage}")
        return json.loads((stage_repo / "models" / "registration.json").read_text())

    first = stages("corpus", "encode", "split", "train", "evaluate", "register")
    assert (first["model_name"], first["version"]) == (name, "1")
    again = stages("split", "register")  # the same bytes again
    assert (again["fingerprint"], again["version"]) == (first["fingerprint"], "1")
    params["model"]["dropout"] = 0.1  # another model, the same data: it competes
    write_params(stage_repo, params)
    retrained = stages("train", "evaluate", "register")
    assert (retrained["fingerprint"], retrained["model_name"], retrained["version"]) == (
        first["fingerprint"],
        name,
        "2",
    )

    # Another split under the same params, written directly: 50 characters move to validation.
    split = stage_repo / "data" / "split"
    train, val = np.load(split / "train.npy"), np.load(split / "val.npy")
    np.save(split / "train.npy", train[:-50])
    np.save(split / "val.npy", np.concatenate([train[-50:], val]))
    refused = sh(stage_repo, sys.executable, "-m", "pipeline.register", check=False)
    assert refused.returncode == 2 and "run `dvc repro evaluate` first" in refused.stderr
    moved = stages("evaluate", "register")
    assert moved["fingerprint"] != first["fingerprint"]
    assert (moved["model_name"], moved["version"]) == (f"{name}-data-{moved['fingerprint']}", "1")

    # Another corpus text under the same params: its last "e" is an "a" (in the validation part).
    source = Path(params["data"]["path"])
    text = source.read_bytes()
    at = text.rindex(b"e")
    source.write_bytes(text[:at] + b"a" + text[at + 1 :])
    edited = stages("corpus", "encode", "split", "evaluate", "register")
    assert edited["fingerprint"] not in (first["fingerprint"], moved["fingerprint"])
    assert edited["model_name"] == f"{name}-data-{edited['fingerprint']}"
    # The model on the first data kept its champion.
    assert aliases(store, name) == {"champion": "1" if first["score"] <= retrained["score"] else "2"}
