"""The fast paths compute what the plain ones do: embedding vs one-hot, bf16 vs fp32, the sampling stepper."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference import SeedLSTM, get_batches, one_hot
from src.data.vocab import build_vocab
from src.generation import stepper as stepper_mod
from src.generation.sampling import STEPPER_BELOW, Stepper, generate, stream
from src.model.cells import CELLS
from src.model.charrnn import CharRNN, ModelSpec
from src.model.masks import dropout_mask
from src.training.device import cpu_has_fast_bf16
from tests.conftest import TINY_TEXT


def _model(vocab_size=20, layers=2, dropout=0.0, seed=0, cell="lstm", size=16):
    torch.manual_seed(seed)
    return CharRNN(ModelSpec(vocab_size, 8, size, layers, dropout, cell))


def test_embedding_model_is_the_seeds_one_hot_model():
    """Same weights (the embedding folded into the first layer), same batch: same loss and gradients."""
    model = _model()
    seed = SeedLSTM(20, 16, 2, 0.0)
    with torch.no_grad():
        for name, p in seed.lstm.named_parameters():
            folded = name == "weight_ih_l0"
            p.copy_(model.rnn.weight_ih_l0 @ model.embed.weight.T if folded else getattr(model.rnn, name))
        seed.fc.load_state_dict(model.head.state_dict())
    x, y = next(get_batches(np.random.default_rng(0).integers(0, 20, 400), 4, 10))
    targets = torch.from_numpy(y.astype(np.int64)).flatten()
    logits, _ = model(torch.from_numpy(x.astype(np.int64)))
    seed_logits, _ = seed(one_hot(x, 20), seed.zero_state(4))
    loss, seed_loss = (
        F.cross_entropy(logits.flatten(0, 1), targets),
        F.cross_entropy(seed_logits.flatten(0, 1), targets),
    )
    loss.backward()
    seed_loss.backward()
    assert torch.allclose(loss, seed_loss, atol=1e-6)
    assert torch.allclose(model.rnn.weight_hh_l1.grad, seed.lstm.weight_hh_l1.grad, atol=1e-6)
    assert torch.allclose(model.head.weight.grad, seed.fc.weight.grad, atol=1e-6)


def test_bf16_autocast_loss_and_gradients_follow_fp32():
    model = _model(vocab_size=30)
    x = torch.randint(0, 30, (8, 40), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)

    def loss_and_grad(dtype):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss32, grad32 = loss_and_grad(None)
    loss16, grad16 = loss_and_grad(torch.bfloat16)
    assert abs(loss16 - loss32) < 0.01 * loss32
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("path", list(stepper_mod.GEMV_PATHS))
def test_stepper_gives_the_models_logits_step_by_step(path, cell):
    model = _model(layers=3, dropout=0.3, cell=cell, size=32).eval()  # 32: a width int8 fits
    idx = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(2))
    # bf16 weights keep 8 bits of mantissa, int8 ones 8 bits per row: about 1e-3 here
    atol = 1e-5 if path in stepper_mod.EXACT_PATHS else 1e-2
    with torch.no_grad():
        full, _ = model(idx)
        logits, hidden = model(idx[:, :1])
        step = Stepper(model, path)
        states = step.states(hidden)
        with step.threads():
            for t in range(1, idx.size(1)):
                logits, states = step(idx[:, t], states)
                assert torch.allclose(logits, full[:, t], atol=atol), t


def _plain_generate(model, vocab, prime, length, top_k, seed, num_samples):
    """One full model call per character, as generate() did before its stepper."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, hidden = model(torch.as_tensor(vocab.encode(prime), dtype=torch.long).expand(num_samples, -1))
        out = []
        for _ in range(length):
            top_vals, top_idx = logits[:, -1].topk(top_k, dim=-1)
            nxt = top_idx.gather(-1, torch.multinomial(torch.softmax(top_vals, -1), 1, generator=gen))
            out.append(nxt)
            logits, hidden = model(nxt, hidden)
    return [prime + vocab.decode(row.tolist()) for row in torch.cat(out, 1)]


@pytest.mark.parametrize("cell", list(CELLS))
def test_generate_draws_what_the_plain_loop_draws(cell):
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _model(vocab.size, cell=cell).eval()
    for seed, n in ((3, 1), (4, 5), (5, STEPPER_BELOW)):  # the Stepper (path measured), then the model's own call
        assert generate(model, vocab, "The", 60, top_k=4, seed=seed, num_samples=n) == _plain_generate(
            model, vocab, "The", 60, 4, seed, n
        )


@pytest.mark.parametrize("cell", list(CELLS))
def test_stream_gives_the_plain_loops_text_stretch_by_stretch(cell):
    """The prime first, then each stretch as drawn; joined, the plain loop's text (and generate()'s),
    on both paths: the Stepper (batch 1) and the model's own fused call."""
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _model(vocab.size, cell=cell).eval()
    length = 3 * stepper_mod.CHECK_EVERY + 8
    for seed, n in ((3, 1), (5, STEPPER_BELOW)):
        pieces = list(stream(model, vocab, "The", length, top_k=4, seed=seed, num_samples=n))
        assert pieces[0] == ["The"] * n
        assert [len(p[0]) for p in pieces[1:]] == [stepper_mod.CHECK_EVERY] * 3 + [8]
        texts = ["".join(t) for t in zip(*pieces)]
        assert texts == _plain_generate(model, vocab, "The", length, 4, seed, n)
        assert texts == generate(model, vocab, "The", length, top_k=4, seed=seed, num_samples=n)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("path", stepper_mod.EXACT_PATHS)
def test_every_fp32_gemv_path_draws_the_plain_loops_text(path, cell):
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _model(vocab.size, cell=cell).eval()
    for seed, n in ((3, 1), (4, 5)):
        assert generate(model, vocab, "The", 120, top_k=4, seed=seed, num_samples=n, gemv=path) == _plain_generate(
            model, vocab, "The", 120, 4, seed, n
        )


def test_pick_takes_the_fastest_path_and_bf16_int8_or_threaded_blas_only_by_a_margin():
    pick = stepper_mod.pick
    assert pick({"numpy": 2.0, "numpy-1": 3.0, "torch": 1.0, "bf16": 0.95}) == "torch"  # bf16 within 1.1x
    assert pick({"numpy": 2.0, "numpy-1": 3.0, "torch": 1.0, "bf16": 0.85}) == "bf16"  # 1.18x: taken
    assert pick({"numpy": 1.0, "numpy-1": 1.05, "torch": 2.0, "bf16": 3.0}) == "numpy-1"  # threads: 1.05x, not enough
    assert pick({"numpy": 1.0, "numpy-1": 1.25, "torch": 2.0, "bf16": 3.0}) == "numpy"  # 1.25x: taken
    assert pick({"numpy": 1.0, "numpy-1": 2.0, "torch": 2.0, "bf16": 3.0}) == "numpy"  # 2x faster: taken
    assert pick({"numpy": 9.0, "numpy-1": 3.0, "torch": 2.0, "bf16": 1.0}) == "bf16"  # 2x faster: taken
    assert pick({"numpy": 9.0, "numpy-1": 1.0, "torch": 1.1, "bf16": 1.2}) == "numpy-1"
    # AMD EPYC, quiet, microseconds a step: int8 on one thread beats numpy-1 by 1.25-1.48x, and BLAS
    # on two threads must then beat int8 by its own margin
    amd = {"numpy": 189, "numpy-1": 194, "torch": 213, "bf16": 343, "int8": 156}
    assert pick(amd) == "int8"
    assert pick({**amd, "numpy": 140}) == "numpy"  # 1.11x faster than int8: taken
    assert pick({**amd, "numpy": 145}) == "int8"  # 1.08x: not enough
    assert pick({**amd, "int8": 185, "numpy": 140}) == "numpy"  # int8 within its margin; threads 1.39x
    assert pick({"numpy-1": 200, "torch": 210, "bf16": 140, "int8": 150}) == "bf16"  # the fastest of the tier
    assert pick({"numpy": 2.0, "int8": 1.0}) == "int8"  # only margined paths: the tiers in order


def test_choose_path_measures_once_per_shape_and_thread_count(monkeypatch):
    calls = []

    def fake_times(model, paths=None):
        calls.append(model)
        return {"numpy": 3e-4, "numpy-1": 2e-4, "torch": 1e-4, "bf16": 5e-4}

    monkeypatch.setattr(stepper_mod, "_CHOSEN", {})
    monkeypatch.setattr(stepper_mod, "time_paths", fake_times)
    model = _model(vocab_size=23)
    assert stepper_mod.choose_path(model) == "torch" and Stepper(model).path == "torch"
    assert len(calls) == 1  # the second Stepper reused the measurement
    stepper_mod.choose_path(_model(vocab_size=23, layers=3))
    assert len(calls) == 2  # another shape is measured anew


def _int8_times_fastest(model, paths=None):
    """Timings as where int8 wins by far, limited to the paths asked for (as time_paths does)."""
    times = {"numpy": 3e-4, "numpy-1": 2e-4, "torch": 2.1e-4, "bf16": 3e-4, "int8": 5e-5}
    return {p: t for p, t in times.items() if paths is None or p in paths}


def test_a_seed_draws_the_plain_loops_text_where_int8_is_fastest(monkeypatch):
    """With a seed, generate() measures the fp32 paths only, which all draw the plain loop's text;
    without one it takes the fastest path, int8 here."""
    monkeypatch.setattr(stepper_mod, "_CHOSEN", {})
    monkeypatch.setattr(stepper_mod, "time_paths", _int8_times_fastest)
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _peaky_model(vocab.size)
    assert Stepper(model).path == "int8" and Stepper(model, stepper_mod.FP32).path == "numpy-1"
    plain = _plain_generate(model, vocab, "The", 1000, 4, 3, 1)
    assert generate(model, vocab, "The", 1000, top_k=4, seed=3, gemv="int8") != plain  # int8's own text
    assert generate(model, vocab, "The", 1000, top_k=4, seed=3) == plain
    chosen = {key[3]: path for key, (path, _) in stepper_mod.chosen().items()}
    generate(model, vocab, "The", 10, top_k=4)  # no seed: every path
    assert {key[3]: path for key, (path, _) in stepper_mod.chosen().items()} == {**chosen, False: "int8"}


def test_sample_stage_writes_the_plain_loops_text_where_int8_is_fastest(monkeypatch, tmp_path, capsys):
    """The DVC-tracked sample (sample.seed) is the same text on a rerun, whichever path a timing favours."""
    import pipeline.sample as sample_stage
    from src.config.schema import config_from_dict

    monkeypatch.setattr(stepper_mod, "_CHOSEN", {})
    monkeypatch.setattr(stepper_mod, "time_paths", _int8_times_fastest)
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _peaky_model(vocab.size)  # where int8 draws another text (the test above)
    cfg = config_from_dict({"sample": {"prime": "The", "length": 1000, "top_k": 4, "seed": 3}})
    monkeypatch.setattr(sample_stage, "load_config", lambda: cfg)
    monkeypatch.setattr(sample_stage.checkpoint, "load", lambda *_: (model, vocab, {}))
    monkeypatch.setattr(sample_stage, "SAMPLES", tmp_path)
    monkeypatch.setattr(sample_stage.runs, "log_to_run", lambda *a, **k: None)
    assert sample_stage.main() == 0
    assert (tmp_path / "sample.txt").read_text() == _plain_generate(model, vocab, "The", 1000, 4, 3, 1)[0] + "\n"
    assert capsys.readouterr().out == (tmp_path / "sample.txt").read_text()  # printed as drawn: the same text


def _numpy_fastest(model, paths=None):
    """Timings as where BLAS on two threads wins (the AVX2-capped EPYC), limited to `paths`."""
    times = {"numpy": 1e-3, "numpy-1": 2e-3, "torch": 2.1e-3, "bf16": 3e-3, "int8": 2.2e-3}
    return {p: t for p, t in times.items() if paths is None or p in paths}


@pytest.mark.parametrize("collapse", [False, True])
def test_a_threaded_path_that_collapses_while_generating_is_dropped_within_a_stretch(monkeypatch, collapse):
    """Threaded BLAS chosen in a quiet moment, then other processes take the cores: its products
    take 2 ms each (a step: 6 ms, against a limit of 1.5 x 2 ms). Generation drops it after one
    stretch and keeps a seed's text; a path that keeps its speed is kept."""
    monkeypatch.setattr(stepper_mod, "_CHOSEN", {})
    monkeypatch.setattr(stepper_mod, "time_paths", _numpy_fastest)
    prepare, numpy_times = stepper_mod.GEMV_PATHS["numpy"]
    calls, slow = [0], [0]

    def collapsing(x, w):
        calls[0] += 1
        if collapse and calls[0] > 60:
            slow[0] += 1
            time.sleep(0.002)
        return numpy_times(x, w)

    monkeypatch.setitem(stepper_mod.GEMV_PATHS, "numpy", (prepare, collapsing))
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _model(vocab.size).eval()  # 2 layers: 3 products a character
    assert generate(model, vocab, "The", 400, top_k=4, seed=3) == _plain_generate(model, vocab, "The", 400, 4, 3, 1)
    assert stepper_mod.choose_path(model, exact=True) == ("numpy-1" if collapse else "numpy")
    if collapse:
        assert 0 < slow[0] <= 3 * stepper_mod.CHECK_EVERY  # one stretch at most
    else:
        assert calls[0] == 3 * 399  # every step on the threaded path


def test_time_paths_times_every_candidate_on_the_real_step():
    times = stepper_mod.time_paths(_model(size=32), rounds=2, steps=2)
    assert set(times) == set(stepper_mod.GEMV_PATHS) and all(0 < t < 0.1 for t in times.values())


def test_time_paths_times_each_path_warm_as_generation_runs_it(monkeypatch):
    # "numpy" stands for OpenBLAS's threads: slow on the first product after another path ran
    # (they slept meanwhile), fast after; "torch" costs the same every time. Generation runs one
    # path back to back, so the measurement must see "numpy" as the faster one.
    prepare, torch_times = stepper_mod.GEMV_PATHS["torch"]
    last = [None]

    def product(path, wait):
        def times(x, w):
            if last[0] != path:
                time.sleep(wait[0])
            last[0] = path
            time.sleep(wait[1])
            return torch_times(x, w)

        return times

    monkeypatch.setitem(stepper_mod.GEMV_PATHS, "numpy", (prepare, product("numpy", (0.04, 0.0))))
    monkeypatch.setitem(stepper_mod.GEMV_PATHS, "torch", (prepare, product("torch", (0.0, 0.001))))
    times = stepper_mod.time_paths(_model(), ("numpy", "torch"), rounds=3, steps=8)
    assert times["numpy"] < times["torch"] / 2, times


@pytest.mark.parametrize("size", [16, 24, 500])
def test_int8_is_offered_only_for_widths_its_kernel_takes(size):
    """torch's int8 kernel read past rows whose width is not a multiple of 16 (24: garbage; 500:
    a crash): such a model is never timed or stepped on it, and asking for it says why."""
    model = _model(size=size)
    assert "int8" not in stepper_mod.paths_for(model)
    assert set(stepper_mod.time_paths(model, rounds=1, steps=1)) == set(stepper_mod.GEMV_PATHS) - {"int8"}
    with pytest.raises(ValueError, match=f"'int8' is not one for lstm_size {size}"):
        Stepper(model, "int8")


def _no_kernel(*_):
    raise RuntimeError("no kernel for this CPU")


@pytest.mark.parametrize("kernel", [_no_kernel, lambda x, w, scales: torch.zeros(x.size(0), w.size(0))])
def test_int8_is_not_offered_where_its_kernel_fails_or_is_wrong(monkeypatch, kernel):
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch, "_weight_int8pack_mm", kernel)
            stepper_mod._int8_kernel_works.cache_clear()
            assert "int8" not in stepper_mod.paths_for(_model(size=32))
    finally:
        stepper_mod._int8_kernel_works.cache_clear()
    assert "int8" in stepper_mod.paths_for(_model(size=32))  # the real kernel again


def _peaky_model(vocab_size, seed=0):
    """A random model whose next-character distributions are far from uniform, as a trained one's
    (32 wide: a width every GEMV path takes)."""
    model = _model(vocab_size, seed=seed, size=32).eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)
        for p in model.rnn.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("path", ["bf16", "int8"])
def test_reduced_precision_gemv_keeps_the_next_character_distribution(path):
    """bf16 or int8 weights change a seed's text but not what is drawn from: along a 400-character
    walk the next-character distributions differ by a total variation far below what a sample
    could show (0.01 needs ~10,000 draws to detect), and long samples have the same character
    frequencies."""
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _peaky_model(vocab.size)
    walk = torch.randint(0, vocab.size, (400,), generator=torch.Generator().manual_seed(3))
    probs = {}
    with torch.no_grad():
        for p in ("torch", path):
            step = Stepper(model, p)
            states, rows = step.states(model.init_hidden(1)), []
            for t in range(walk.numel()):
                logits, states = step(walk[t : t + 1], states)
                rows.append(torch.softmax(logits, -1))
            probs[p] = torch.cat(rows)
    tv = 0.5 * (probs[path] - probs["torch"]).abs().sum(-1)
    # measured: bf16 0.004 and 0.0015, int8 0.008 and 0.003
    assert tv.max() < 0.02 and tv.mean() < 0.005, (tv.max(), tv.mean())

    def freqs(p, seed):
        text = generate(model, vocab, "T", 6000, top_k=0, seed=seed, gemv=p)[0]
        return torch.bincount(torch.tensor(vocab.encode(text)), minlength=vocab.size).float() / len(text)

    base, again, reduced = freqs("torch", 1), freqs("torch", 2), freqs(path, 3)
    noise = 0.5 * (again - base).abs().sum()  # fp32 against fp32: sampling noise alone
    assert 0.5 * (reduced - base).abs().sum() < 2 * noise + 0.01, (0.5 * (reduced - base).abs().sum(), noise)


def test_generate_leaves_the_thread_setting_as_it_was():
    vocab = build_vocab(TINY_TEXT, "lf")
    model = _model(vocab.size).eval()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        generate(model, vocab, "The", 5, seed=1)  # a small step: run on one thread, then put back
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cell", list(CELLS))
def test_layer_by_layer_is_the_torch_module(cell):
    """CPU training with dropout calls the cell one layer at a time; with p = 0 that is nn.LSTM's
    (nn.GRU's, nn.RNN's) result exactly, gradients included."""
    model = _model(layers=3, cell=cell).train()
    x = model.embed(torch.randint(0, 20, (7, 4), generator=torch.Generator().manual_seed(2)))  # (T, B, E)
    h0 = model.init_hidden(4)
    h0 = tuple(torch.randn(t.shape, generator=torch.Generator().manual_seed(3 + i)) for i, t in enumerate(h0))
    two = CELLS[cell].states == 2  # the torch module takes and gives (h, c) as a pair, h alone
    fused, h = model.rnn(x, h0 if two else h0[0])
    by_layer, h2 = model._by_layer(x, h0, 0.0)
    assert torch.equal(fused, by_layer)
    assert all(torch.equal(a, b) for a, b in zip(h if two else (h,), h2, strict=True))
    grads = []
    for out in (fused, by_layer):
        model.zero_grad()
        out.pow(2).sum().backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in model.rnn.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_dropout_mask_keeps_one_minus_p_and_preserves_the_mean():
    for p in (0.1, 0.5, 0.8):
        torch.manual_seed(0)
        mask = dropout_mask(torch.Size((200, 1000)), p, torch.float32, torch.device("cpu"))
        kept = (mask > 0).float().mean().item()
        assert abs(kept - (1 - p)) < 0.005, (p, kept)  # 200k draws: sd <= 0.0012
        assert abs(mask.mean().item() - 1.0) < 0.01, p  # inverted dropout: E[mask] = 1
        assert sorted(mask.unique().tolist()) == [0.0, pytest.approx(1 / (1 - p), rel=1e-4)]
    torch.manual_seed(5)
    a = dropout_mask(torch.Size((3, 5, 7)), 0.3, torch.bfloat16, torch.device("cpu"))
    torch.manual_seed(5)
    b = dropout_mask(torch.Size((3, 5, 7)), 0.3, torch.bfloat16, torch.device("cpu"))
    assert a.shape == (3, 5, 7) and a.dtype == torch.bfloat16 and torch.equal(a, b)
    # 16-bit lanes of one 64-bit draw are independent: neighbouring elements agree half the time at p = 0.5
    torch.manual_seed(1)
    m = dropout_mask(torch.Size((400_000,)), 0.5, torch.float32, torch.device("cpu")) > 0
    assert abs((m[1:] == m[:-1]).float().mean().item() - 0.5) < 0.005


def test_cpu_dropout_path_drops_and_scales_like_f_dropout():
    """Training-mode forward on CPU (the model's own masks) against nn.LSTM's and F.dropout's, over 100 draws each:
    the same average (a missing 1 / (1 - p) moves it by ~18%) and the same spread (p = 0.3 or 0.6
    instead of 0.5 changes it by 35% and 23%)."""
    model = _model(vocab_size=30, dropout=0.5).train()
    x = torch.randint(0, 30, (64, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.manual_seed(7)
        ours = torch.stack([model(x)[0] for _ in range(100)])
        fused = torch.stack(
            [model.head(F.dropout(model.rnn(model.embed(x.t()))[0], 0.5)).transpose(0, 1) for _ in range(100)]
        )
    assert (ours.mean(0) - fused.mean(0)).abs().mean() < 0.1 * fused.mean(0).abs().mean()
    assert 0.9 < ours.std(0).mean() / fused.std(0).mean() < 1.1


# The flags lines of the CPU families met (trimmed to what matters, order as the kernel prints).
_AMD_EPYC_ZEN5 = "flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
_INTEL_XEON_AMX = "flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
_INTEL_AMX_NO_AVX512_BF16 = "flags\t\t: fpu sse2 avx2 avx512f amx_tile amx_bf16\n"
_LAPTOP_AVX2 = "flags\t\t: fpu vme sse2 avx2 fma\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"


@pytest.mark.parametrize(
    "cpuinfo, fast",
    [(_AMD_EPYC_ZEN5, True), (_INTEL_XEON_AMX, True), (_INTEL_AMX_NO_AVX512_BF16, True), (_LAPTOP_AVX2, False)],
)
def test_precision_auto_is_bf16_exactly_on_the_cpu_families_with_bf16_dot_products(cpuinfo, fast):
    assert cpu_has_fast_bf16(cpuinfo) is fast
