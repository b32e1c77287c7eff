"""Experiment: one LSTM layer written by hand (bf16 GEMMs, per-step gate math in torch ops) against oneDNN's.

    python -m benchmarks.handwritten_lstm [--rounds 5] [--threads 1] [--shape T B D H ...] [--no-fused]

The profile (benchmarks.profile_step) puts most of the lost time inside oneDNN's LSTM backward,
which runs below the rate of its own GEMMs. The obvious alternative does every GEMM of the layer
as one call at the best rate (input projection and weight gradients over all steps at once, one
recurrent product per step) and the gate arithmetic in torch ops per time step. This times
forward + backward of one layer both ways, interleaved, and checks that they compute the same
thing; a third way (benchmarks/fused_lstm.py, needs a C++ compiler) fuses each step's gate
arithmetic into one compiled loop and runs the recurrent product on a weight oneDNN packed once.
Shapes: the seed recipe's second layer (100 steps x 100 rows, 512 -> 512) and the defaults'
second layer (100 x 32, 384 -> 384). Not used by the project: on the AMD EPYC neither beat
oneDNN (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from benchmarks import fused_lstm
from benchmarks.common import add_glibc_default, machine, median, threads_arg, timed, training_process

BF16 = torch.bfloat16


class HandLSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias):
        T, B, _ = x.shape
        H = h0.size(-1)
        wi, wh = w_ih.to(BF16), w_hh.to(BF16)
        xp = torch.addmm(bias.to(BF16), x.reshape(T * B, -1).to(BF16), wi.t()).view(T, B, 4 * H)
        hs = torch.empty(T + 1, B, H, dtype=BF16)
        cs, acts, tcs = torch.empty(T + 1, B, H), torch.empty(T, B, 4 * H), torch.empty(T, B, H)
        hs[0], cs[0] = h0, c0
        for t in range(T):
            g = torch.addmm(xp[t], hs[t], wh.t()).float()
            a = acts[t]
            torch.sigmoid(g, out=a)
            a[:, 2 * H : 3 * H] = g[:, 2 * H : 3 * H].tanh()
            i, f, gg, o = a.chunk(4, 1)
            torch.addcmul(f * cs[t], i, gg, out=cs[t + 1])
            torch.mul(o, torch.tanh(cs[t + 1], out=tcs[t]), out=hs[t + 1])
        ctx.save_for_backward(x, wi, wh, hs, cs, acts, tcs)
        return hs[1:]

    @staticmethod
    def backward(ctx, dy):
        x, wi, wh, hs, cs, acts, tcs = ctx.saved_tensors
        T, B, H = dy.shape[0], dy.shape[1], wh.size(1)
        d_gates = torch.empty(T, B, 4 * H, dtype=BF16)
        dh, dc = torch.zeros(B, H), torch.zeros(B, H)
        for t in range(T - 1, -1, -1):
            i, f, g, o = acts[t].chunk(4, 1)
            tc = tcs[t]
            dh = dh + dy[t].float()
            dg_t = torch.empty(B, 4 * H)
            di, df, dg, do = dg_t.chunk(4, 1)
            torch.mul(dh, tc, out=do).mul_(o * (1 - o))
            dc = dc + dh * o * (1 - tc * tc)
            torch.mul(dc, g, out=di).mul_(i * (1 - i))
            torch.mul(dc, cs[t], out=df).mul_(f * (1 - f))
            torch.mul(dc, i, out=dg).mul_(1 - g * g)
            dc = dc * f
            d_gates[t] = dg_t
            dh = torch.mm(d_gates[t], wh).float()
        G = d_gates.view(T * B, 4 * H)
        dx = torch.mm(G, wi).view(T, B, -1).float()
        d_wi = torch.mm(G.t(), x.reshape(T * B, -1).to(BF16)).float()
        d_wh = torch.mm(G.t(), hs[:-1].reshape(T * B, H)).float()
        return dx, None, None, d_wi, d_wh, G.float().sum(0)


def compare(shape: tuple[int, int, int, int], rounds: int, fused: bool) -> None:
    T, B, D, H = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, D, generator=gen, requires_grad=True)
    w_ih, w_hh = ((torch.randn(4 * H, n, generator=gen) * 0.04).requires_grad_() for n in (D, H))
    b_ih, b_hh = (torch.zeros(4 * H, requires_grad=True) for _ in range(2))
    h0, c0 = torch.zeros(1, B, H), torch.zeros(1, B, H)

    def onednn():
        with torch.autocast("cpu", dtype=BF16):
            y = torch.lstm(x, (h0, c0), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, True, False, False)[0]
        y.float().pow(2).sum().backward()

    def by_hand():
        HandLSTMLayer.apply(x, h0[0], c0[0], w_ih, w_hh, b_ih + b_hh).float().pow(2).sum().backward()

    def by_hand_fused():
        fused_lstm.FusedLSTMLayer.apply(x, h0[0], c0[0], w_ih, w_hh, b_ih + b_hh).float().pow(2).sum().backward()

    runs = {"oneDNN (torch.lstm, bf16 autocast)": onednn, "by hand (bf16 GEMMs, torch gate ops)": by_hand}
    if fused:
        runs["by hand, fused C++ gates, packed W_hh"] = by_hand_fused
    times: dict[str, list[float]] = {k: [] for k in runs}
    grads = {}
    for r in range(rounds + 1):
        for name, fn in runs.items():
            for t in (x, w_ih, w_hh):
                t.grad = None
            seconds = timed(fn)
            if r:  # the first round warms up
                times[name].append(seconds)
            grads[name] = (x.grad.clone(), w_hh.grad.clone())
    ref = times[next(iter(runs))]
    print(f"\none layer, {T} steps x {B} rows, {D} -> {H}:")
    (dx1, dw1) = grads[next(iter(runs))]
    for name, t in times.items():
        dx2, dw2 = grads[name]
        cos = (F.cosine_similarity(a.flatten(), b.flatten(), 0).item() for a, b in ((dx1, dx2), (dw1, dw2)))
        per_round = median(o / m for o, m in zip(ref, t))
        print(
            f"  {name}: forward + backward {median(t) * 1e3:.0f} ms (median of {rounds}), "
            f"oneDNN's time / this one's, median per round {per_round:.2f}; "
            "gradient cosine to oneDNN dx {:.4f}, d w_hh {:.4f}".format(*cos)
        )


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handwritten_lstm", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=threads_arg, default="1", help="torch threads (default: %(default)s)")
    p.add_argument("--shape", type=int, nargs=4, action="append", metavar=("T", "B", "D", "H"))
    p.add_argument("--no-fused", action="store_true", help="skip the compiled variant (no C++ compiler)")
    add_glibc_default(p)
    args = p.parse_args(argv)
    _, setup = training_process(args.threads, args.glibc_default)
    print(machine(args.threads))
    print(setup)
    if not args.no_fused:
        fused_lstm.FusedLSTMLayer.kernels = fused_lstm.build()
    for shape in args.shape or [(100, 100, 512, 512), (100, 32, 384, 384)]:
        compare(tuple(shape), args.rounds, not args.no_fused)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
