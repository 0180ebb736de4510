"""A faster GRU for CPU training: the same nn.GRU parameters and maths, a different schedule.

nn.GRU on CPU has no fused kernel (PyTorch routes only LSTM to oneDNN's RNN primitive): every step
of every layer is a handful of ATen ops, autograd records each of them, the backward pass walks ~20
autograd nodes per step and computes the recurrent weight gradient as 100 thin [3H, B] x [B, H]
GEMMs. `GRUScan` is an autograd.Function over one layer, time-major [L, B, *], with its own backward:

* the input projection of all steps is one GEMM before the loop (ordinary autograd: its backward
  is two big GEMMs);
* the recurrent GEMM uses oneDNN with W_hh reordered once per call into its blocked layout
  (torch.mm re-packs it every step; see `_linear_fn`), bias included;
* the forward step also writes the gradient factors that do not depend on the incoming gradient
  (sigmoid/tanh derivatives and their products), while that step's tensors are in cache; the
  backward step is then one GEMM and a few pointwise ops, and the recurrent weight and bias
  gradients are ONE [3H, L*B] x [L*B, H] GEMM and one sum after the loop;
* without a graph to build (eval, no_grad) the forward skips those factors;
* under bf16 autocast the recurrent GEMM runs in bf16 (weights cast once per call) while the hidden
  state, gates and gradient factors stay float32, so 100 steps of bf16 rounding do not accumulate in
  the state (nn.GRU under autocast carries a bf16 state when its input is bf16).

Parameters stay in the caller's nn.GRU modules (same state_dict, same parameter count): `gru_stack`
runs such a module. Models use it on CPU only (`use_fast_path`; cuDNN's fused GRU is faster on GPU);
LVM_FAST_GRU=0 switches it off. In float32 outputs and gradients match nn.GRU to float32 rounding
(tests/test_models.py). Measured effect: bench/results/throughput.json, "ablations".
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F


_REDUCED = (torch.bfloat16, torch.float16)


def _dtypes(gi: torch.Tensor):
    """(recurrent GEMM dtype, state dtype). Reduced-precision input projections mean autocast: GEMM
    in that dtype, state and gates in float32. Otherwise everything in gi's dtype."""
    if gi.dtype in _REDUCED:
        return gi.dtype, torch.float32
    return gi.dtype, gi.dtype


# oneDNN linear with the weight reordered ONCE into its blocked layout (the op pair Inductor's CPU
# freezing uses): torch.mm re-packs the weight on every call, which at [32, 512] x [512, 1536] in
# bf16 is ~40% of the GEMM's time. LVM_PACKED_GEMM=0 turns it off.
_PACKED = os.environ.get("LVM_PACKED_GEMM", "1") != "0"


def _linear_fn(weight: torch.Tensor, rows: int, bias: torch.Tensor | None = None):
    """x -> x @ weight^T + bias for a fixed weight [N, K], reused for many small x [rows, K]."""
    global _PACKED
    if _PACKED and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16):
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
            lin = torch.ops.mkldnn._linear_pointwise
            return lambda x: lin(x, packed, bias, "none", [], "")
        except (AttributeError, RuntimeError, NotImplementedError):  # no oneDNN in this build
            _PACKED = False
    w_t = weight.t().contiguous()  # h @ W^T through a transposed view is ~25% slower in fp32 here
    if bias is None:
        return lambda x: torch.mm(x, w_t)
    return lambda x: torch.addmm(bias, x, w_t)


def _scan_forward(gi, h0, w_hh, b_hh, save: bool):
    """The forward loop. Returns (hs [L, B, H], what the backward needs or None)."""
    L, B, H3 = gi.shape
    H = H3 // 3
    cdt, sdt = _dtypes(gi)
    mixed = cdt != sdt
    dev = gi.device
    with torch.autocast(dev.type, enabled=False):
        rec = _linear_fn(w_hh.detach().to(cdt), B, b_hh.detach().to(cdt))  # h -> h W_hh^T + b_hh
        gi = gi.detach()
        gi_rz = gi[..., :2 * H].to(sdt)                                # [L, B, 2H]
        gi_n = gi[..., 2 * H:].to(sdt)                                 # [L, B, H]
        # hs[0] = h0, hs[t + 1] = h after step t; hs_c: the same in the GEMM dtype
        hs = torch.empty(L + 1, B, H, dtype=sdt, device=dev)
        hs[0] = h0.detach()
        hs_c = torch.empty(L + 1, B, H, dtype=cdt, device=dev) if mixed else hs
        if mixed:
            hs_c[0] = hs[0]
        if save:
            # what the backward needs, per step: z, A = (1 - z)(1 - n^2) and
            # Kh = [A ghn r (1 - r), (h_prev - n) z (1 - z), A r], with which
            #   d gh = dh * Kh (the r, z, n gate pre-activations of W_hh h + b_hh) and
            #   d gi = dh * [Kh_r, Kh_z, A];   dh_prev = dh z + d gh W_hh
            # computed here while the step's tensors are in cache (one pass over [L, B, 3H] at
            # backward time costs more than these per-step ops)
            rz = torch.empty(L, B, 2 * H, dtype=sdt, device=dev)
            A = torch.empty(L, B, H, dtype=sdt, device=dev)
            Kh = torch.empty(L, B, 3, H, dtype=sdt, device=dev)
        # per-step views made in one call each (indexing inside the loop is Python overhead)
        hs_t, hs_c_t, gi_rz_t, gi_n_t = hs.unbind(0), hs_c.unbind(0), gi_rz.unbind(0), gi_n.unbind(0)
        if save:
            rz_t, A_t, Kh_t = rz.unbind(0), A.unbind(0), Kh.unbind(0)
            one = torch.ones(B, H, dtype=sdt, device=dev)
        for t in range(L):
            gh = rec(hs_c_t[t])                                        # [B, 3H], the only GEMM
            if mixed:
                gh = gh.to(sdt)
            r_z = torch.add(gi_rz_t[t], gh[:, :2 * H], out=rz_t[t] if save else None).sigmoid_()
            r, z = r_z[:, :H], r_z[:, H:]
            g_n = gh[:, 2 * H:]                                        # W_hn h + b_hn
            n = torch.addcmul(gi_n_t[t], r, g_n).tanh_()
            if save:
                d = hs_t[t] - n
                h = torch.addcmul(n, z, d, out=hs_t[t + 1])            # n + z (h_prev - n)
            else:
                h = torch.lerp(n, hs_t[t], z, out=hs_t[t + 1])         # the same in one op
            if mixed:
                hs_c_t[t + 1].copy_(h)
            if save:
                omz = 1 - z
                a = torch.mul(omz, torch.addcmul(one, n, n, value=-1), out=A_t[t])
                k = Kh_t[t]
                torch.mul(a * g_n, torch.addcmul(r, r, r, value=-1), out=k[:, 0])
                torch.mul(d * z, omz, out=k[:, 1])
                torch.mul(a, r, out=k[:, 2])
    return hs[1:], ((hs_c, rz, A, Kh) if save else None)


class GRUScan(torch.autograd.Function):
    """hs [L, B, H] (time-major) of one GRU layer from gi = x W_ih^T + b_ih [L, B, 3H] and h0 [B, H].

    PyTorch's GRU: r, z = sigmoid(gi_rz + W_hrz h + b_hrz); n = tanh(gi_n + r * (W_hn h + b_hn));
    h' = (1 - z) * n + z * h.
    """

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh):
        hs, saved = _scan_forward(gi, h0, w_hh, b_hh, save=True)
        ctx.save_for_backward(w_hh, *saved)
        ctx.cdt, ctx.sdt, ctx.gi_dtype = *_dtypes(gi), gi.dtype
        return hs

    @staticmethod
    def backward(ctx, d_hs):
        w_hh, hs_c, rz, A, Kh = ctx.saved_tensors
        cdt, sdt = ctx.cdt, ctx.sdt
        mixed = cdt != sdt
        L, B, H = A.shape
        dev = A.device
        with torch.autocast(dev.type, enabled=False):
            rec_t = _linear_fn(w_hh.detach().t().to(cdt), B)               # d gh -> d gh W_hh
            d_hs = d_hs.to(sdt) if d_hs is not None else None
            d_gh = torch.empty(L, B, 3, H, dtype=cdt, device=dev)
            d_gi = torch.empty(L, B, 3, H, dtype=ctx.gi_dtype, device=dev)
            dh = torch.zeros(B, H, dtype=sdt, device=dev)
            # per-step views made in one call each (indexing inside the loop is Python overhead)
            d_hs_t = d_hs.unbind(0) if d_hs is not None else None
            d_gh_t, d_gi_t, Kh_t, A_t = d_gh.unbind(0), d_gi.unbind(0), Kh.unbind(0), A.unbind(0)
            z_t = rz[..., H:].unbind(0)
            for t in range(L - 1, -1, -1):
                dht = dh + d_hs_t[t] if d_hs is not None else dh
                dg = torch.mul(dht.unsqueeze(1), Kh_t[t])                  # [B, 3, H]
                d_gi_t[t].copy_(dg)                                        # contiguous copies only:
                torch.mul(dht, A_t[t], out=d_gi_t[t][:, 2])                # then the n slot of d gi
                dg = d_gh_t[t].copy_(dg)
                g = rec_t(dg.view(B, 3 * H))                               # [B, H]
                dh = torch.addcmul(g.to(sdt) if mixed else g, dht, z_t[t])  # dh_prev = dh z + d gh W_hh
            need_gi, need_h0, need_w, need_b = ctx.needs_input_grad
            d_gh2 = d_gh.view(L * B, 3 * H)
            d_w = (d_gh2.t() @ hs_c[:-1].reshape(L * B, H)).to(w_hh.dtype) if need_w else None  # one GEMM
            d_b = d_gh2.sum(0, dtype=sdt).to(w_hh.dtype) if need_b else None
            d_h0 = dh if need_h0 else None
        return (d_gi.view(L, B, 3 * H) if need_gi else None), d_h0, d_w, d_b


def gru_layer(x_tm: torch.Tensor, w_ih, w_hh, b_ih, b_hh, h0=None) -> torch.Tensor:
    """One GRU layer over time-major x [L, B, I] -> hs [L, B, H] (float32 under autocast)."""
    gi = F.linear(x_tm, w_ih, b_ih)  # all steps in one GEMM (bf16 under autocast)
    H = w_hh.shape[1]
    if h0 is None:
        h0 = gi.new_zeros(x_tm.shape[1], H, dtype=_dtypes(gi)[1])
    if b_hh is None:
        b_hh = w_hh.new_zeros(3 * H)
    if torch.is_grad_enabled() and (gi.requires_grad or h0.requires_grad or w_hh.requires_grad
                                    or b_hh.requires_grad):
        return GRUScan.apply(gi, h0, w_hh, b_hh)
    # no graph to build (eval, no_grad): skip the per-step factors only the backward needs. (Inside
    # Function.forward ctx.needs_input_grad stays True under no_grad, so this must be decided here.)
    return _scan_forward(gi, h0, w_hh, b_hh, save=False)[0]


# LVM_FAST_GRU=0 in the environment runs nn.GRU itself everywhere (A/B benchmarks, debugging)
ENABLED = os.environ.get("LVM_FAST_GRU", "1") != "0"


def use_fast_path(gru: nn.GRU, x: torch.Tensor) -> bool:
    return ENABLED and x.device.type == "cpu" and gru.mode == "GRU" and not gru.bidirectional


def gru_stack(gru: nn.GRU, x_tm: torch.Tensor):
    """Run the (possibly multi-layer) nn.GRU `gru` over time-major x [L, B, I] from a zero state with
    GRUScan. Returns (top layer's output [L, B, H], h_n [num_layers, B, H]) like nn.GRU with
    batch_first=False; dropout between layers as nn.GRU applies it (training mode only)."""
    h = x_tm
    finals = []
    for layer in range(gru.num_layers):
        if layer and gru.dropout and gru.training:
            h = F.dropout(h, gru.dropout, training=True)
        w_ih, w_hh = getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"weight_hh_l{layer}")
        b_ih = getattr(gru, f"bias_ih_l{layer}") if gru.bias else None
        b_hh = getattr(gru, f"bias_hh_l{layer}") if gru.bias else None
        h = gru_layer(h, w_ih, w_hh, b_ih, b_hh)
        finals.append(h[-1])
    return h, torch.stack(finals)
