"""The Triton backend: a fused FlashRNN kernel, forward and backward, R kept on chip.

One program per (head n, batch tile). It loads the head's recurrent blocks R[:, n] (Gr tiles
of D x D, fp32) once into registers and then loops over all T steps inside the kernel: per
step, Gr `tl.dot`s of the carried hidden state h (BB, D) with the R tiles, plus Wx[:, t] and
the bias, then the gate math, the new states written to `out` and the gate values to
`gates` (for the backward). The states are loop-carried registers; nothing but the step's
input rows and outputs touches global memory. Heads and batch tiles are independent along
the whole sequence, so no inter-program synchronisation is needed (the paper's kernels
split one head's R over several blocks with a grid barrier per step when it does not fit
one SM; this version requires one head's R to fit a program: see `tiling.triton_tiles`).

The backward kernel runs the time loop in reverse with the same tiling: it holds R[:, n]
(as D x D tiles, not transposed) and accumulates dR[:, n] and db in registers for the whole
sequence, computes the gate gradients from the stored gates and states, writes dWx[:, t],
and propagates dh = sum_g dgates_g @ R_g (optionally clipped, `gradient_recurrent_clipval`).
Per-tile dR/db parts are summed by the wrapper.

Layouts (contiguous): Wx (B, T, Gw, N, D), R (Gr, N, D, D) [gate, head, out, in],
b (Gb, N, D), s0 (S, B, N, D), out (S, B, T, N, D), gates (B, T, Gb, N, D): the same as
the C++ kernel (lstm stores activated i, f, z, o; slstm the raw pre-activations; gru raw g,
sigmoid r, sigmoid z, tanh n; elman the raw pre-activation).

fp32 only (tl.dot with input_precision="ieee"). Runs on a CUDA GPU, or on the CPU under
TRITON_INTERPRET=1 (set before triton is imported), which is how it is tested here.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from minirepro.papers.rnn.functions import FUNCTIONS, CellSpec

__all__ = ["interpreting", "triton_flashrnn"]

# Cell ids from the one table (functions.FUNCTIONS); the kernels branch on them at compile time.
_LSTM = tl.constexpr(FUNCTIONS["lstm"].kernel_id)
_SLSTM = tl.constexpr(FUNCTIONS["slstm"].kernel_id)
_GRU = tl.constexpr(FUNCTIONS["gru"].kernel_id)
_ELMAN = tl.constexpr(FUNCTIONS["elman"].kernel_id)


def interpreting() -> bool:
    """True when Triton runs its interpreter (kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------- pointwise


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))  # no overflow for large |x|
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _clip(x, v):
    return tl.minimum(tl.maximum(x, -v), v)


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _load_r(R, g, n, N, rows, cols, D: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Tile of R[g, n] (D x D, out x in), padded; transposed to (in, out) if TRANSPOSE."""
    base = R + (g * N + n) * D * D
    ok = (rows < D) & (cols < D)
    if TRANSPOSE:
        return tl.load(base + cols * D + rows, mask=ok, other=0.0)  # [in, out]
    return tl.load(base + rows * D + cols, mask=ok, other=0.0)  # [out, in]


# --------------------------------------------------------------------------- forward


@triton.jit
def _rnn_fwd(
    WX, R, BIAS, S0, OUT, GATES,
    B, T, N, clipval,
    FN: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BB: tl.constexpr,
    S: tl.constexpr, GR: tl.constexpr, GW: tl.constexpr, GT: tl.constexpr,
    FIRST: tl.constexpr, CLIP: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    tile = tl.program_id(1)
    rb = (tile * BB + tl.arange(0, BB)).to(tl.int64)  # (BB,) batch rows
    k = tl.arange(0, DP)  # (DP,) units
    m2 = (rb < B)[:, None] & (k < D)[None, :]  # (BB, DP)
    ND = N * D
    rows, cols = k[:, None], k[None, :]

    # R^T tiles [in, out], loaded once: the whole sequence runs against them.
    R0 = _load_r(R, 0, n, N, rows, cols, D, True)
    if GR > 1:
        R1 = _load_r(R, 1, n, N, rows, cols, D, True)
        R2 = _load_r(R, 2, n, N, rows, cols, D, True)
    if GR > 3:
        R3 = _load_r(R, 3, n, N, rows, cols, D, True)
    bk = n * D + k  # (DP,)
    kok = k < D
    b0 = tl.load(BIAS + 0 * ND + bk, mask=kok, other=0.0)[None, :]
    if GT > 1:
        b1 = tl.load(BIAS + 1 * ND + bk, mask=kok, other=0.0)[None, :]
        b2 = tl.load(BIAS + 2 * ND + bk, mask=kok, other=0.0)[None, :]
        b3 = tl.load(BIAS + 3 * ND + bk, mask=kok, other=0.0)[None, :]

    s_row = rb[:, None] * ND + n * D + cols  # (BB, DP) into s0 (S, B, N, D)
    SB = B * ND
    h = tl.load(S0 + s_row, mask=m2, other=0.0)
    c = tl.zeros([BB, DP], tl.float32)
    nn = tl.zeros([BB, DP], tl.float32)
    m = tl.zeros([BB, DP], tl.float32)
    if S > 1:
        c = tl.load(S0 + SB + s_row, mask=m2, other=0.0)
    if S > 2:
        nn = tl.load(S0 + 2 * SB + s_row, mask=m2, other=0.0)
        m = tl.load(S0 + 3 * SB + s_row, mask=m2, other=0.0)

    w_row = rb[:, None] * T * GW * ND + n * D + cols  # Wx (B, T, Gw, N, D) at t = 0
    o_row = rb[:, None] * T * ND + n * D + cols  # out (S, B, T, N, D), state 0, t = 0
    g_row = rb[:, None] * T * GT * ND + n * D + cols  # gates (B, T, Gt, N, D)
    OS = B * T * ND
    for t in range(T):
        wx = WX + w_row + t * GW * ND
        o = OUT + o_row + t * ND
        gp = GATES + g_row + t * GT * ND
        if FN == _ELMAN:
            a = _dot(h, R0) + tl.load(wx, mask=m2, other=0.0) + b0
            y = _tanh(a)
            if CLIP:
                y = _clip(y, clipval)
            h = y
            tl.store(o, y, mask=m2)
            if STORE:
                tl.store(gp, a, mask=m2)
        elif FN == _GRU:  # R [g, r, z], Wx [r, z, n], b [g, r, z, n]
            gg = _dot(h, R0) + b0
            rg = _sigmoid(_dot(h, R1) + tl.load(wx, mask=m2, other=0.0) + b1)
            zg = _sigmoid(_dot(h, R2) + tl.load(wx + ND, mask=m2, other=0.0) + b2)
            ng = _tanh(tl.load(wx + 2 * ND, mask=m2, other=0.0) + b3 + rg * gg)
            y = zg * h + (1.0 - zg) * ng
            if CLIP:
                y = _clip(y, clipval)
            h = y
            tl.store(o, y, mask=m2)
            if STORE:
                tl.store(gp, gg, mask=m2)
                tl.store(gp + ND, rg, mask=m2)
                tl.store(gp + 2 * ND, zg, mask=m2)
                tl.store(gp + 3 * ND, ng, mask=m2)
        else:  # lstm, slstm: gates i, f, z, o
            ir = _dot(h, R0) + tl.load(wx, mask=m2, other=0.0) + b0
            fr = _dot(h, R1) + tl.load(wx + ND, mask=m2, other=0.0) + b1
            zr = _dot(h, R2) + tl.load(wx + 2 * ND, mask=m2, other=0.0) + b2
            orw = _dot(h, R3) + tl.load(wx + 3 * ND, mask=m2, other=0.0) + b3
            if FN == _LSTM:
                ig = _sigmoid(ir)
                fg = _sigmoid(fr)
                zg = _tanh(zr)
                og = _sigmoid(orw)
                c = fg * c + ig * zg
                y = og * _tanh(c)
                if STORE:
                    tl.store(gp, ig, mask=m2)
                    tl.store(gp + ND, fg, mask=m2)
                    tl.store(gp + 2 * ND, zg, mask=m2)
                    tl.store(gp + 3 * ND, og, mask=m2)
            else:  # FN == _SLSTM
                lf = _logsigmoid(fr) + m
                mn = tl.maximum(ir, lf)
                if FIRST:  # every n is zero at t = 0: the reference takes m' = i
                    mn = tl.where(t == 0, ir, mn)
                ig = tl.exp(ir - mn)
                fg = tl.exp(lf - mn)
                c = fg * c + ig * _tanh(zr)
                nn = tl.maximum(fg * nn + ig, 1.0)
                m = mn
                y = _sigmoid(orw) * c / nn
                tl.store(o + 2 * OS, nn, mask=m2)
                tl.store(o + 3 * OS, m, mask=m2)
                if STORE:
                    tl.store(gp, ir, mask=m2)
                    tl.store(gp + ND, fr, mask=m2)
                    tl.store(gp + 2 * ND, zr, mask=m2)
                    tl.store(gp + 3 * ND, orw, mask=m2)
            if CLIP:
                y = _clip(y, clipval)
            h = y
            tl.store(o, y, mask=m2)
            tl.store(o + OS, c, mask=m2)


# --------------------------------------------------------------------------- backward


@triton.jit
def _rnn_bwd(
    R, S0, OUT, GATES, DOUT, DLAST, DWX, DR, DB, DS0,
    B, T, N, gclipval,
    FN: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BB: tl.constexpr,
    S: tl.constexpr, GR: tl.constexpr, GW: tl.constexpr, GT: tl.constexpr,
    FIRST: tl.constexpr, CLIP: tl.constexpr, GCLIP: tl.constexpr,
    HAS_DOUT: tl.constexpr, HAS_DLAST: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0)
    tile = tl.program_id(1)
    rb = (tile * BB + tl.arange(0, BB)).to(tl.int64)
    k = tl.arange(0, DP)
    m2 = (rb < B)[:, None] & (k < D)[None, :]
    ND = N * D
    rows, cols = k[:, None], k[None, :]

    # R tiles [out, in] for dh = dg @ R; dR accumulators [out, in] for the whole sequence.
    R0 = _load_r(R, 0, n, N, rows, cols, D, False)
    dR0 = tl.zeros([DP, DP], tl.float32)
    db0 = tl.zeros([DP], tl.float32)
    if GR > 1:
        R1 = _load_r(R, 1, n, N, rows, cols, D, False)
        R2 = _load_r(R, 2, n, N, rows, cols, D, False)
        dR1 = tl.zeros([DP, DP], tl.float32)
        dR2 = tl.zeros([DP, DP], tl.float32)
    if GR > 3:
        R3 = _load_r(R, 3, n, N, rows, cols, D, False)
        dR3 = tl.zeros([DP, DP], tl.float32)
    if GT > 1:
        db1 = tl.zeros([DP], tl.float32)
        db2 = tl.zeros([DP], tl.float32)
        db3 = tl.zeros([DP], tl.float32)

    s_row = rb[:, None] * ND + n * D + cols
    SB = B * ND
    dh = tl.zeros([BB, DP], tl.float32)  # gradients of the states after the current step
    dc = tl.zeros([BB, DP], tl.float32)
    dn = tl.zeros([BB, DP], tl.float32)
    dm = tl.zeros([BB, DP], tl.float32)
    if HAS_DLAST:
        dh = tl.load(DLAST + s_row, mask=m2, other=0.0)
        if S > 1:
            dc = tl.load(DLAST + SB + s_row, mask=m2, other=0.0)
        if S > 2:
            dn = tl.load(DLAST + 2 * SB + s_row, mask=m2, other=0.0)
            dm = tl.load(DLAST + 3 * SB + s_row, mask=m2, other=0.0)

    w_row = rb[:, None] * T * GW * ND + n * D + cols
    o_row = rb[:, None] * T * ND + n * D + cols
    g_row = rb[:, None] * T * GT * ND + n * D + cols
    OS = B * T * ND
    for tt in range(T):
        t = T - 1 - tt
        o = o_row + t * ND
        gp = GATES + g_row + t * GT * ND
        has_prev = t > 0
        # states before step t: out[:, :, t - 1], or s0 at t = 0
        mp, m0 = m2 & has_prev, m2 & (t == 0)
        hp = tl.load(OUT + o - ND, mask=mp, other=0.0) + tl.load(S0 + s_row, mask=m0, other=0.0)
        if HAS_DOUT:
            dh += tl.load(DOUT + o, mask=m2, other=0.0)
            if S > 1:
                dc += tl.load(DOUT + OS + o, mask=m2, other=0.0)
            if S > 2:
                dn += tl.load(DOUT + 2 * OS + o, mask=m2, other=0.0)
                dm += tl.load(DOUT + 3 * OS + o, mask=m2, other=0.0)
        g0 = tl.load(gp, mask=m2, other=0.0)
        if FN == _ELMAN:
            yv = _tanh(g0)
            d0 = tl.where(m2, dh * (1.0 - yv * yv), 0.0)
            dhp = tl.zeros([BB, DP], tl.float32)
        elif FN == _GRU:
            gg = g0
            rg = tl.load(gp + ND, mask=m2, other=0.0)
            zg = tl.load(gp + 2 * ND, mask=m2, other=0.0)
            ng = tl.load(gp + 3 * ND, mask=m2, other=0.0)
            dy = dh  # forward clipping is straight-through, as in flashrnn's kernels
            dpre = dy * (1.0 - zg) * (1.0 - ng * ng)
            d0 = tl.where(m2, dpre * rg, 0.0)
            d1 = tl.where(m2, dpre * gg * rg * (1.0 - rg), 0.0)
            d2 = tl.where(m2, dy * (hp - ng) * zg * (1.0 - zg), 0.0)
            d3 = tl.where(m2, dpre, 0.0)
            dhp = dy * zg
        else:
            g1 = tl.load(gp + ND, mask=m2, other=0.0)
            g2 = tl.load(gp + 2 * ND, mask=m2, other=0.0)
            g3 = tl.load(gp + 3 * ND, mask=m2, other=0.0)
            cp = tl.load(OUT + OS + o - ND, mask=mp, other=0.0) + tl.load(
                S0 + SB + s_row, mask=m0, other=0.0
            )
            cn = tl.load(OUT + OS + o, mask=m2, other=0.0)
            if FN == _LSTM:  # gates are activated i, f, z, o
                tc = _tanh(cn)
                dy = dh
                dcc = dc + dy * g3 * (1.0 - tc * tc)
                d0 = tl.where(m2, dcc * g2 * g0 * (1.0 - g0), 0.0)
                d1 = tl.where(m2, dcc * cp * g1 * (1.0 - g1), 0.0)
                d2 = tl.where(m2, dcc * g0 * (1.0 - g2 * g2), 0.0)
                d3 = tl.where(m2, dy * tc * g3 * (1.0 - g3), 0.0)
                dc = tl.where(m2, dcc * g1, 0.0)
            else:  # FN == _SLSTM: gates are the raw i, f, z, o
                np_ = tl.load(OUT + 2 * OS + o - ND, mask=mp, other=0.0) + tl.load(
                    S0 + 2 * SB + s_row, mask=m0, other=0.0
                )
                mp_ = tl.load(OUT + 3 * OS + o - ND, mask=mp, other=0.0) + tl.load(
                    S0 + 3 * SB + s_row, mask=m0, other=0.0
                )
                nw = tl.load(OUT + 2 * OS + o, mask=m2, other=1.0)
                mn = tl.load(OUT + 3 * OS + o, mask=m2, other=0.0)
                lf = _logsigmoid(g1) + mp_
                # torch.maximum splits a tie's gradient evenly; the first-step rule picks i
                wi = tl.where(g0 > lf, 1.0, tl.where(g0 < lf, 0.0, 0.5))
                if FIRST:
                    wi = tl.where(t == 0, 1.0, wi)
                ig = tl.exp(g0 - mn)
                fg = tl.exp(lf - mn)
                zt = _tanh(g2)
                og = _sigmoid(g3)
                nsum = fg * np_ + ig
                dy = dh
                dcc = dc + dy * og / nw
                dnw = dn - dy * og * cn / (nw * nw)
                dns = dnw * tl.where(nsum > 1.0, 1.0, tl.where(nsum == 1.0, 0.5, 0.0))
                dfg = dcc * cp + dns * np_
                dig = dcc * zt + dns
                dmm = dm - dig * ig - dfg * fg
                dlf = dfg * fg + dmm * (1.0 - wi)
                d0 = tl.where(m2, dig * ig + dmm * wi, 0.0)
                d1 = tl.where(m2, dlf * _sigmoid(-g1), 0.0)
                d2 = tl.where(m2, dcc * ig * (1.0 - zt * zt), 0.0)
                d3 = tl.where(m2, dy * cn / nw * og * (1.0 - og), 0.0)
                dc = tl.where(m2, dcc * fg, 0.0)
                dn = tl.where(m2, dns * fg, 0.0)
                dm = tl.where(m2, dlf, 0.0)
            dhp = tl.zeros([BB, DP], tl.float32)

        # dWx = the gradients of the gates that take Wx (gru's g takes none)
        dw = DWX + w_row + t * GW * ND
        if FN == _GRU:
            tl.store(dw, d1, mask=m2)
            tl.store(dw + ND, d2, mask=m2)
            tl.store(dw + 2 * ND, d3, mask=m2)
        else:
            tl.store(dw, d0, mask=m2)
            if GW > 1:
                tl.store(dw + ND, d1, mask=m2)
                tl.store(dw + 2 * ND, d2, mask=m2)
                tl.store(dw + 3 * ND, d3, mask=m2)
        db0 += tl.sum(d0, 0)
        if GT > 1:
            db1 += tl.sum(d1, 0)
            db2 += tl.sum(d2, 0)
            db3 += tl.sum(d3, 0)
        # dR_g += dg_g^T h_{t-1};  dh_{t-1} = sum_g dg_g R_g
        dR0 += _dot(tl.trans(d0), hp)
        rec = _dot(d0, R0)
        if GR > 1:
            dR1 += _dot(tl.trans(d1), hp)
            dR2 += _dot(tl.trans(d2), hp)
            rec += _dot(d1, R1) + _dot(d2, R2)
        if GR > 3:
            dR3 += _dot(tl.trans(d3), hp)
            rec += _dot(d3, R3)
        # flashrnn's kernels clip all the gradient that reaches h_{t-1} from step t (the
        # direct path of gru included), never the initial state's
        dh = dhp + rec
        if GCLIP:
            dh = tl.where(t > 0, _clip(dh, gclipval), dh)
        dh = tl.where(m2, dh, 0.0)

    tl.store(DS0 + s_row, dh, mask=m2)
    if S > 1:
        tl.store(DS0 + SB + s_row, dc, mask=m2)
    if S > 2:
        tl.store(DS0 + 2 * SB + s_row, dn, mask=m2)
        tl.store(DS0 + 3 * SB + s_row, dm, mask=m2)
    # per-tile parts: DR (tiles, Gr, N, D, D), DB (tiles, Gt, N, D)
    rok = (rows < D) & (cols < D)
    r_off = rows * D + cols
    dr = DR + tile * GR * ND * D + n * D * D + r_off
    tl.store(dr, dR0, mask=rok)
    if GR > 1:
        tl.store(dr + ND * D, dR1, mask=rok)
        tl.store(dr + 2 * ND * D, dR2, mask=rok)
    if GR > 3:
        tl.store(dr + 3 * ND * D, dR3, mask=rok)
    kok = k < D
    dbp = DB + tile * GT * ND + n * D + k
    tl.store(dbp, db0, mask=kok)
    if GT > 1:
        tl.store(dbp + ND, db1, mask=kok)
        tl.store(dbp + 2 * ND, db2, mask=kok)
        tl.store(dbp + 3 * ND, db3, mask=kok)


# --------------------------------------------------------------------------- autograd


def _launch_meta(spec: CellSpec, D: int, first: bool, clip: float, block_b: int) -> dict:
    return dict(
        FN=spec.kernel_id,
        D=D,
        DP=max(16, triton.next_power_of_2(D)),
        BB=block_b,
        S=spec.n_states,
        GR=spec.n_gates_r,
        GW=spec.n_gates_w,
        GT=spec.n_gates_b,
        FIRST=first,
        CLIP=clip > 0,
    )


class _TritonRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Wx, R, b, s0, spec, first, fw_clip, bw_clip, tiles):
        B, T, _, N, D = Wx.shape
        S, Gt = spec.n_states, spec.n_gates_b
        store = any(ctx.needs_input_grad[:4])
        R, b, s0 = R.contiguous(), b.contiguous(), s0.contiguous()
        out = Wx.new_empty(S, B, T, N, D)
        gates = Wx.new_empty(B, T, Gt, N, D) if store else out  # unused when not stored
        fwd = tiles["forward"]
        grid = (N, triton.cdiv(B, fwd["block_b"]))
        _rnn_fwd[grid](
            Wx.contiguous(), R, b, s0, out, gates, B, T, N, float(fw_clip),
            STORE=store, num_warps=fwd["num_warps"],
            **_launch_meta(spec, D, first, fw_clip, fwd["block_b"]),
        )  # fmt: skip
        if store:
            ctx.save_for_backward(R, s0, out, gates)
        ctx.spec, ctx.first, ctx.clips, ctx.tiles = spec, first, (fw_clip, bw_clip), tiles
        return out, out[:, :, -1].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        R, s0, out, gates = ctx.saved_tensors
        spec, (fw_clip, bw_clip) = ctx.spec, ctx.clips
        S, B, T, N, D = out.shape
        bwd = ctx.tiles["backward"]
        n_tiles = triton.cdiv(B, bwd["block_b"])
        dWx = out.new_empty(B, T, spec.n_gates_w, N, D)
        dR = out.new_empty(n_tiles, spec.n_gates_r, N, D, D)
        db = out.new_empty(n_tiles, spec.n_gates_b, N, D)
        ds0 = out.new_empty(S, B, N, D)
        dummy = out.new_zeros(1)
        _rnn_bwd[(N, n_tiles)](
            R, s0, out, gates,
            dummy if dout is None else dout.contiguous(),
            dummy if dlast is None else dlast.contiguous(),
            dWx, dR, db, ds0, B, T, N, float(bw_clip),
            GCLIP=bw_clip > 0, HAS_DOUT=dout is not None, HAS_DLAST=dlast is not None,
            num_warps=bwd["num_warps"],
            **_launch_meta(spec, D, ctx.first, fw_clip, bwd["block_b"]),
        )  # fmt: skip
        return dWx, dR.sum(0), db.sum(0), ds0, None, None, None, None, None


def triton_flashrnn(
    Wx: Tensor,
    R: Tensor,
    b: Tensor,
    states: Tensor,
    spec: CellSpec,
    *,
    first_slstm: bool,
    forward_clipval: float,
    gradient_recurrent_clipval: float,
    tiles: dict[str, dict[str, int]],
) -> tuple[Tensor, Tensor]:
    """Runs the Triton kernels. Shapes as in `flashrnn`; clip values 0 mean off.

    Args:
        tiles: {"forward": {"block_b", "num_warps"}, "backward": {...}} from
            `tiling.triton_tiles`.

    Returns:
        (all states (S, B, T, N, D), last states (S, B, 1, N, D)).
    """
    s0 = states[:, :, 0]  # (S, B, N, D)
    out, last = _TritonRNN.apply(
        Wx, R, b, s0, spec, first_slstm, forward_clipval, gradient_recurrent_clipval, tiles
    )
    return out, last[:, :, None]
