"""Experiment: an LSTM layer by hand with its gate arithmetic fused in C++ and oneDNN's prepacked weights.

Used by `python -m benchmarks.handwritten_lstm` only, not by the project. The by-hand layer there
does every GEMM at its best shape but pays for a dozen torch ops per time step; this one does the
gate arithmetic of a step in one compiled loop (forward: activations, c, tanh c, h; backward: the
four gate gradients and dc) and the recurrent product with a weight that oneDNN packed once per
layer (`mkldnn._linear_pointwise`, what torch.compile's CPU backend uses) instead of torch.mm,
which repacks it at every call. Built at first use with the machine's C++ compiler
(torch.utils.cpp_extension, -O3 -march=native), one build per CPU model, cached by torch.
"""

from __future__ import annotations

import hashlib

import torch

from benchmarks.common import cpu_info

BF16 = torch.bfloat16

_CPP = r"""
#include <torch/extension.h>
#include <math.h>
#include <c10/util/BFloat16.h>
using bf16 = c10::BFloat16;

// pre = xp + hw (bf16, B x 4H), c_prev (fp32, B x H) -> acts (i f g o, fp32), c, tanh c, h (bf16)
void fwd_step(torch::Tensor xp, torch::Tensor hw, torch::Tensor c_prev, torch::Tensor acts,
              torch::Tensor c, torch::Tensor tc, torch::Tensor h) {
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  for (int64_t b = 0; b < B; ++b) {
    const bf16* x = xp.data_ptr<bf16>() + b * xp.stride(0);
    const bf16* w = hw.data_ptr<bf16>() + b * hw.stride(0);
    float* a = acts.data_ptr<float>() + b * 4 * H;
    // every gate as a sigmoid, the cell gate as tanh v = 2 sigmoid(2v) - 1: branch-free, vectorised
    for (int64_t j = 0; j < 4 * H; ++j) {
      float s = (j >= 2 * H && j < 3 * H) ? 2.f : 1.f;
      a[j] = 1.f / (1.f + expf(-s * (float(x[j]) + float(w[j]))));
    }
    for (int64_t j = 2 * H; j < 3 * H; ++j) a[j] = 2.f * a[j] - 1.f;
    const float* cp = c_prev.data_ptr<float>() + b * H;
    float* cc = c.data_ptr<float>() + b * H;
    float* t = tc.data_ptr<float>() + b * H;
    bf16* hh = h.data_ptr<bf16>() + b * h.stride(0);
    for (int64_t j = 0; j < H; ++j) {
      float cv = a[H + j] * cp[j] + a[j] * a[2 * H + j];
      float tv = 2.f / (1.f + expf(-2.f * cv)) - 1.f;
      cc[j] = cv; t[j] = tv; hh[j] = bf16(a[3 * H + j] * tv);
    }
  }
}

// dh = dy + dh_rec, dc (fp32, in/out) -> the gate gradients dg (bf16, B x 4H)
void bwd_step(torch::Tensor dy, torch::Tensor dh_rec, torch::Tensor dc, torch::Tensor acts,
              torch::Tensor c_prev, torch::Tensor tc, torch::Tensor dg) {
  const int64_t B = dc.size(0), H = dc.size(1);
  for (int64_t b = 0; b < B; ++b) {
    const float* a = acts.data_ptr<float>() + b * 4 * H;
    bf16* g = dg.data_ptr<bf16>() + b * 4 * H;
    const float* y = dy.data_ptr<float>() + b * H;
    const bf16* r = dh_rec.data_ptr<bf16>() + b * dh_rec.stride(0);
    float* d = dc.data_ptr<float>() + b * H;
    const float* cp = c_prev.data_ptr<float>() + b * H;
    const float* t = tc.data_ptr<float>() + b * H;
    for (int64_t j = 0; j < H; ++j) {
      float i = a[j], f = a[H + j], gg = a[2 * H + j], o = a[3 * H + j];
      float dh = y[j] + float(r[j]), tv = t[j];
      float dcv = d[j] + dh * o * (1.f - tv * tv);
      g[j] = bf16(dcv * gg * i * (1.f - i));
      g[H + j] = bf16(dcv * cp[j] * f * (1.f - f));
      g[2 * H + j] = bf16(dcv * i * (1.f - gg * gg));
      g[3 * H + j] = bf16(dh * tv * o * (1.f - o));
      d[j] = dcv * f;
    }
  }
}
"""


def build():
    """The compiled kernels (about 30 s the first time on a CPU model, then torch's cache)."""
    from torch.utils.cpp_extension import load_inline

    tag = hashlib.sha256(repr(cpu_info()).encode()).hexdigest()[:10]  # -march=native: one build per CPU
    return load_inline(
        f"karnna_fused_lstm_{tag}",
        _CPP,
        functions=["fwd_step", "bwd_step"],
        extra_cflags=["-O3", "-march=native", "-ffast-math"],
        extra_ldflags=["-lmvec"],
    )


def _packed_times(w: torch.Tensor, rows: int):
    """x -> x @ w.T with w packed by oneDNN once (w: (out, in) bf16)."""
    packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], "")


class FusedLSTMLayer(torch.autograd.Function):
    """One layer over x (T, B, D) from (h0, c0) (B, H); weights fp32, arithmetic as bf16 autocast."""

    kernels = None

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias):
        k = FusedLSTMLayer.kernels
        T, B, _ = x.shape
        H = h0.size(-1)
        wi, wh = w_ih.to(BF16), w_hh.to(BF16)
        xb = x.reshape(T * B, -1).to(BF16)
        xp = torch.addmm(bias.to(BF16), xb, wi.t()).view(T, B, 4 * H)  # every step's input projection at once
        hs, cs = torch.empty(T + 1, B, H, dtype=BF16), torch.empty(T + 1, B, H)
        acts, tcs = torch.empty(T, B, 4 * H), torch.empty(T, B, H)
        hs[0], cs[0] = h0, c0
        times_wh = _packed_times(wh, B)
        for t in range(T):
            k.fwd_step(xp[t], times_wh(hs[t]), cs[t], acts[t], cs[t + 1], tcs[t], hs[t + 1])
        ctx.save_for_backward(xb, wi, wh, hs, cs, acts, tcs)
        return hs[1:]

    @staticmethod
    def backward(ctx, dy):
        k = FusedLSTMLayer.kernels
        xb, wi, wh, hs, cs, acts, tcs = ctx.saved_tensors
        T, B, H = dy.shape[0], dy.shape[1], wh.size(1)
        dy = dy.float().contiguous()
        dgates = torch.empty(T, B, 4 * H, dtype=BF16)
        dc, dh_rec = torch.zeros(B, H), torch.zeros(B, H, dtype=BF16)
        times_wh_t = _packed_times(wh.t().contiguous(), B)
        for t in range(T - 1, -1, -1):
            k.bwd_step(dy[t], dh_rec, dc, acts[t], cs[t], tcs[t], dgates[t])
            dh_rec = times_wh_t(dgates[t])
        g = dgates.view(T * B, 4 * H)
        dx = torch.mm(g, wi).view(T, B, -1)
        d_wi = torch.mm(g.t(), xb).float()
        d_wh = torch.mm(g.t(), hs[:-1].reshape(T * B, H)).float()
        return dx, None, None, d_wi, d_wh, g.float().sum(0)
