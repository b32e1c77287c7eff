"""The benchmarks' arithmetic (the step's GEMM list, its roofline), the CPU description, the
training benchmarks' process set up as the train stage's, and a smoke run of every script."""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks import (
    averaging_cost,
    common,
    core_sharing,
    encode_speed,
    gpu_check,
    peak,
    profile_step,
    regularisers,
    sample_speed,
    scale,
    split_parts,
    train_speed,
    validation_sample,
)
from benchmarks.common import FEATURES, ISA_CAPS, cpu_info, machine
from src.data.vocab import build_vocab
from src.model import checkpoint
from src.model.charrnn import CharRNN, ModelSpec
from tests.conftest import sh, write_params
from tests.test_device import GLIBC, faults


@pytest.mark.parametrize("input_dim", [64, 83])
def test_step_gemms_add_up_to_the_training_flops(input_dim):
    gemms = peak.step_gemms(100, 100, input_dim, 512, 2, 83)
    flops = sum(count * s.flops for s, count in gemms)
    assert flops == 100 * 100 * peak.flops_per_char(input_dim, 512, 2, 83)
    no_input_grad = peak.step_gemms(100, 100, input_dim, 512, 2, 83, input_grad=False)
    assert flops - sum(c * s.flops for s, c in no_input_grad) == 2 * 100 * 100 * 4 * 512 * input_dim


def test_roofline_weights_each_gemm_by_its_own_rate():
    gemms = [(peak.Shape(10, 20, 30, "a"), 1), (peak.Shape(5, 5, 5, "b"), 100)]
    rates = {(10, 20, 30): 12_000.0, (5, 5, 5): 500.0}
    # 12,000 FLOPs at 12,000/s and 100 x 250 FLOPs at 500/s
    assert peak.roofline_seconds(gemms, rates) == pytest.approx(1.0 + 50.0)


def test_shape_rates_times_every_distinct_shape():
    shapes = [peak.Shape(64, 32, 16, "x"), peak.Shape(64, 32, 16, "same shape"), peak.Shape(8, 32, 16, "y")]
    rates = peak.shape_rates(shapes, "fp32", 0.01)
    assert set(rates) == {(64, 32, 16), (8, 32, 16)} and all(r > 0 for r in rates.values())


def test_machine_names_the_cpu_and_its_bf16_and_amx_features():
    name, features = cpu_info()
    assert name and set(features) <= set(FEATURES)
    text = machine(1)
    assert name in text and ("AMX" in text) and "bf16" in text


def test_machine_says_when_the_libraries_run_a_capped_instruction_set(monkeypatch):
    for key in ISA_CAPS:
        monkeypatch.delenv(key, raising=False)
    assert "capped" not in machine(1)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "instruction sets capped: ONEDNN_MAX_CPU_ISA=AVX2" in machine(1)


@GLIBC
def test_training_benchmarks_keep_freed_memory_as_the_train_stage_does():
    # With glibc's default, a profiled step books its page faults inside oneDNN (docs/BENCHMARKS.md).
    applied, kept = faults("from benchmarks.common import training_process; applied = training_process(1)[0]")
    assert applied == "True" and kept < 2_000, kept
    applied, default = faults("from benchmarks.common import training_process; applied = training_process(1, True)[0]")
    assert applied == "False" and default > 9 * 16_000 * 0.9, default


class _SetUp(Exception):
    pass


@pytest.mark.parametrize("bench", [peak, train_speed, profile_step, regularisers, averaging_cost])
def test_every_benchmark_of_training_steps_sets_up_its_process_first(bench, monkeypatch):
    calls = []

    def training_process(threads, glibc_default=False):
        calls.append((threads, glibc_default))
        raise _SetUp  # stop before any training

    assert bench.training_process is common.training_process
    monkeypatch.setattr(bench, "training_process", training_process)
    with pytest.raises(_SetUp):
        bench.main(["--threads", "1"])
    assert calls == [(1, False)]


# Every script in benchmarks/ that docs/BENCHMARKS.md runs: a new one gets its smoke test here.
SCRIPTS = (
    "averaging_cost",
    "core_sharing",
    "encode_speed",
    "gpu_check",
    "peak",
    "profile_step",
    "regularisers",
    "sample_precision",
    "sample_speed",
    "scale",
    "split_parts",
    "train_speed",
    "validation_sample",
)


def test_every_benchmark_script_is_smoke_tested():
    found = {p.stem for p in Path(common.__file__).parent.glob("*.py") if "def main(" in p.read_text()}
    assert found == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_benchmark_script_answers_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"benchmarks.{name}").main(["--help"])
    assert stop.value.code == 0
    assert f"python -m benchmarks.{name}" in capsys.readouterr().out


@pytest.fixture
def torch_threads():
    """The scripts set torch's process-wide thread count, as their own processes may: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_peak_runs_on_tiny_shapes(capsys, torch_threads):
    peak.main(["--threads", "1", "--seconds", "0.01", "--lstm-size", "32", "--batch", "4", "--seq-len", "4"])
    assert "| project | bf16 |" in capsys.readouterr().out


def test_regularisers_times_each_variant_against_off(capsys, torch_threads, tmp_path):
    argv = ["--threads", "1", "--steps", "1", "--repeats", "2", "--warmup", "1", "--precision", "fp32"]
    argv += ["--json", str(tmp_path / "r.json")]
    regularisers.main(argv + ["--lstm-size", "16", "--embedding-dim", "4", "--batch", "2", "--seq-len", "4"])
    out = capsys.readouterr().out
    assert "| off |" in out and out.count("| 1.000 |") >= 1
    for name in ("locked", "weight_drop 0.5", "embed_dropout 0.1", "all three"):
        assert f"| {name} |" in out
    assert all(len(s) == 2 for s in json.loads((tmp_path / "r.json").read_text())["steps_s"].values())


@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_sample_speed_runs_a_tiny_round(capsys, torch_threads):
    argv = ["--rounds", "1", "--length", "10", "--ref-length", "5", "--batch", "2", "--batch-length", "5"]
    sample_speed.main(argv + ["--threads", "1"])
    assert "batch 1, a seed" in capsys.readouterr().out


@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_validation_sample_runs_a_tiny_round(capsys, torch_threads):
    argv = ["--rounds", "1", "--threads", "1", "--chars", "5", "--lstm-size", "32", "--val-chars", "2000"]
    assert validation_sample.main(argv) == 0
    out = capsys.readouterr().out
    assert "| sample |" in out and "share of a validation" in out


@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_averaging_cost_times_both_variants(capsys, torch_threads):
    argv = ["--cycles", "2", "--steps", "2", "--warmup", "1", "--threads", "1", "--lstm-size", "16", "--batch", "2"]
    assert averaging_cost.main(argv) == 0
    out = capsys.readouterr().out
    assert "| off |" in out and "| on (decay 0.999) |" in out


@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_encode_speed_times_the_novel(capsys):
    encode_speed.main(["--repeats", "1"])
    assert "build_vocab" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU: the whole check would run")
def test_gpu_check_says_in_one_line_that_there_is_no_gpu(capsys):
    assert gpu_check.main([]) == 0
    assert "sees no CUDA GPU here: nothing was checked" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_a_queued_grid_runs_two_at_once_with_the_losses_of_one_at_a_time(repo, tmp_path, capsys):
    """DVC's queue, as README shows it: the corpus stage of a queued experiment finds the novel
    beside the repository, and every experiment's losses are the same whether the queue runs
    them one at a time or two at once (train.num_threads: auto shares the cores)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["path"] = None
    params["train"]["num_threads"] = "auto"
    params["tracking"]["enabled"] = True
    write_params(repo, params)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "tiny")
    out = tmp_path / "figures.json"
    core_sharing.main(
        ["--repo", str(repo), "--steps", "20", "--alone", "1", "--grid", "train.seed=1,2", "--json", str(out)]
    )
    figures = json.loads(out.read_text())
    assert set(figures["j1"]["experiments"]) == {"1", "2"}
    assert figures["identical"], figures
    assert figures["j1"]["experiments"]["1"] != figures["j1"]["experiments"]["2"]  # the grid changed something
    for jobs in ("j1", "j2"):  # each experiment is one MLflow run, named after it
        assert len(figures[jobs]["names"]) == 2 and figures[jobs]["mlflow_runs"] == figures[jobs]["names"], figures
    assert "wall time" in capsys.readouterr().out


def test_scale_makes_corpora_of_the_size_asked_with_non_ascii_characters(tmp_path):
    base = scale.mixed_text("Happy families are all alike;\r\nevery unhappy family\r\n" * 20)
    size = scale.make_corpus(tmp_path / "c.txt", 1_001, base)
    text = (tmp_path / "c.txt").read_bytes().decode("utf-8")
    assert len(text) == 1_001 and size > len(text)  # some characters take 2 bytes
    assert "\r\n" in text and any(ord(c) > 127 for c in text)
    assert [scale.parse_size(s) for s in ("1M", "100K", "1G", "2.5M", "42")] == [10**6, 10**5, 10**9, 2_500_000, 42]


def test_scale_refuses_fewer_than_one_repeat_in_one_line(capsys):
    with pytest.raises(SystemExit):
        scale.main(["--repeats", "0"])
    assert "--repeats 0: give 1 or more runs of each stage" in capsys.readouterr().err


@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_scale_runs_the_data_stages_of_the_smallest_size_and_gives_the_median(capsys):
    scale.main(["--sizes", "1M", "--train-up-to", "0", "--repeats", "3"])
    out = capsys.readouterr().out
    for stage in ("corpus", "encode", "split"):
        runs = re.findall(rf"^  {stage}: ([0-9.]+) s", out, re.M)
        assert len(runs) == 6  # three on the start-up corpus, three on 1M
        row = re.search(rf"^\| 1M \| {stage} \| ([0-9.]+) \|", out, re.M)
        assert row and row.group(1) == sorted(runs[3:], key=float)[1]  # the 1M runs' median
    assert "| 1M | train |" not in out


@pytest.mark.slow
@pytest.mark.skipif(common.novel_path() is None, reason="the novel is not beside the checkout")
def test_scale_runs_every_stage_of_the_smallest_size(capsys):
    scale.main(["--sizes", "1M", "--steps", "2"])
    out = capsys.readouterr().out
    for stage in scale.STAGES:
        assert f"| 1M | {stage} |" in out


def test_split_parts_scores_the_text_before_and_from_the_marker(tmp_path, capsys, torch_threads):
    text = "the end of it. " * 20 + "*** END OF the licence, " * 5
    vocab = build_vocab(text, "lf")
    torch.manual_seed(0)
    checkpoint.save(tmp_path / "best.pt", CharRNN(ModelSpec(vocab.size, 4, 8, 1, 0.0)).eval(), vocab, step=3)
    split = tmp_path / "val.npy"
    np.save(split, vocab.encode(text))
    argv = ["--checkpoint", str(tmp_path / "best.pt"), "--split", str(split), "--json", str(tmp_path / "p.json")]
    assert split_parts.main(argv) == 0
    figures = json.loads((tmp_path / "p.json").read_text())
    at = text.index("*** END OF")
    assert figures["marker_at"] == at == 300
    assert {k: v["chars"] for k, v in figures["parts"].items()} == {
        "whole": len(text),
        "before the marker": at,
        "from the marker": len(text) - at,
    }
    assert "| from the marker |" in capsys.readouterr().out
    # a marker the split lacks: the whole split only
    assert split_parts.main(argv + ["--marker", "*** START"]) == 0
    assert list(json.loads((tmp_path / "p.json").read_text())["parts"]) == ["whole"]
    # a truncated checkpoint, a file that is no .npy: one line each, naming the file
    (tmp_path / "cut.pt").write_bytes((tmp_path / "best.pt").read_bytes()[:100])
    for bad in (["--checkpoint", str(tmp_path / "cut.pt")], ["--split", str(tmp_path / "cut.pt")]):
        with pytest.raises(SystemExit) as stop:
            split_parts.main(argv + bad)
        assert stop.value.code == 2 and "cut.pt" in capsys.readouterr().err.splitlines()[-1]
