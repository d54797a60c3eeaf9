/* The S6 selective scan, channel-last, for CPUs: forward and backward (see scan_native.py).
 *
 * Compiled twice by scan_native.py, with REAL float (W = 16 lanes) and double (W = 8): one vector
 * register of AVX-512. Lanes are W consecutive channels, so every sum over the state dimension is a
 * plain vector add; GCC vectorises the lane loops (with -ffast-math its exp is glibc's vector exp).
 * Only the gradients of B and C, shared by all channels, need sums across lanes.
 *
 * Shapes (b batch, l length, d channels, n state size, g groups of channels sharing B and C):
 *   u, delta, z: element (i, t, c) at [i*s_b + t*s_t + c]   (channel stride 1)
 *   the step size is dt = softplus(delta + bias) with `soft`, else delta + bias (bias may be NULL)
 *   At: (n, d), A transposed;  D: (d);  B, C: element (i, group, k, t) at the four given strides
 *   out: (b, l, d);  ckpt: (b, chunks, n, d), the state at each chunk's start;  last: (b, n, d)
 *   du, ddelta, dz: (b, l, d);  dA: (b, n, d);  dD, dbias: (b, d);  dB, dC: (b, g, l, n), accumulated into.
 * Channel blocks never straddle a group (the caller checks d / g is a multiple of W, or g == 1).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SUFFIX)
#define MAXN 64
#define MAXCHUNK 64

typedef int64_t i64;

#ifdef INLINE_EXP
/* exp for float lanes, inlined so that the lane loops stay in registers (glibc's vector exp is a call):
 * 2^m * e^r with m = round(x / ln 2) and |r| <= ln 2 / 2, e^r by its degree-7 Taylor polynomial
 * (error below 1e-8, under float's rounding); x is clamped to [-87, 88], float's normal range. */
static inline float inline_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float m = __builtin_roundf(x * 1.44269504f);
    float r = x - m * 0.693359375f + m * 2.12194440e-4f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
/* 2^x likewise, for the decays exp(dt A) = 2^(dt A log2 e), with A log2 e computed once per block:
 * 2^m * 2^r, |r| <= 1/2, 2^r by its degree-6 Taylor polynomial in r ln 2 (error below 2e-7) */
static inline float inline_exp2(float x) {
    x = x < -126.0f ? -126.0f : (x > 127.0f ? 127.0f : x);
    float m = __builtin_roundf(x), r = (x - m) * 0.693147181f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
#undef EXP
#define EXP inline_exp
#define EXP2 inline_exp2
#else
#define EXP2 exp2
#endif
#define LOG2E ((REAL)1.4426950408889634)

static inline REAL sigmoid(REAL x) { return (REAL)1 / ((REAL)1 + EXP(-x)); }

#ifdef INLINE_EXP
/* softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e)
 * in (0, 1/3], by its series to s^15 (relative error below 1e-9, under float's): no log call. */
static inline REAL softplus(REAL x) {
    REAL e = EXP(-(x < 0 ? -x : x)), s = e / ((REAL)2 + e), s2 = s * s;
    REAL series = (REAL)1 + s2 * ((REAL)1 / 3 + s2 * ((REAL)1 / 5 + s2 * ((REAL)1 / 7 + s2 * ((REAL)1 / 9 + s2 * (
        (REAL)1 / 11 + s2 * ((REAL)1 / 13 + s2 * ((REAL)1 / 15)))))));
    return (x > 0 ? x : 0) + (REAL)2 * s * series;
}
#else
static inline REAL softplus(REAL x) { return (x > 0 ? x : 0) + log1p(EXP(-(x < 0 ? -x : x))); }
#endif

/* lanes [0, nl) of a block: nl == W on every block but a last, partial one */
#define LANES for (int c = 0; c < W; c++)

static inline __attribute__((always_inline)) void forward_block(i64 i, i64 c0, int nl, i64 L, i64 d, i64 n, i64 gi,
                          const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                          const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB,
                          const REAL *C, const i64 *sC, const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                          REAL *out, REAL *ckpt, REAL *last, i64 chunk) {
    REAL h[MAXN][W], A2[MAXN][W], Dv[W], bv[W], ut[W], dtt[W], y[W], zt[W];
    i64 chunks = (L + chunk - 1) / chunk;
    for (i64 k = 0; k < n; k++) LANES { A2[k][c] = c < nl ? At[k * d + c0 + c] * LOG2E : 0; h[k][c] = 0; }
    LANES { Dv[c] = c < nl ? D[c0 + c] : 0; bv[c] = c < nl && bias ? bias[c0 + c] : 0; }
    const REAL *Bi = B + i * sB[0] + gi * sB[1], *Ci = C + i * sC[0] + gi * sC[1];
    for (i64 t = 0; t < L; t++) {
        if (t % chunk == 0) {
            REAL *ck = ckpt + ((i * chunks + t / chunk) * n) * d + c0;
            for (i64 k = 0; k < n; k++) for (int c = 0; c < nl; c++) ck[k * d + c] = h[k][c];
        }
        const REAL *up = u + i * su_b + t * su_t + c0, *dp = dt + i * sdt_b + t * sdt_t + c0;
        LANES { ut[c] = c < nl ? up[c] : 0; dtt[c] = (c < nl ? dp[c] : 0) + bv[c]; y[c] = Dv[c] * ut[c]; }
        if (soft) LANES dtt[c] = c < nl ? softplus(dtt[c]) : 0;
        for (i64 k = 0; k < n; k++) {
            REAL bk = Bi[k * sB[2] + t * sB[3]], ck = Ci[k * sC[2] + t * sC[3]];
            LANES {
                h[k][c] = EXP2(dtt[c] * A2[k][c]) * h[k][c] + dtt[c] * ut[c] * bk;
                y[c] += ck * h[k][c];
            }
        }
        if (z) {
            const REAL *zp = z + i * sz_b + t * sz_t + c0;
            LANES zt[c] = c < nl ? zp[c] : 0;
            LANES y[c] *= zt[c] * sigmoid(zt[c]);
        }
        REAL *op = out + (i * L + t) * d + c0;
        for (int c = 0; c < nl; c++) op[c] = y[c];
    }
    for (i64 k = 0; k < n; k++) for (int c = 0; c < nl; c++) last[(i * n + k) * d + c0 + c] = h[k][c];
}

/* Every entry point takes its work as `nunits` units (b0, b1, c_lo, c_hi): batch elements [b0, b1) and
 * channels [c_lo, c_hi), c_lo a multiple of W. The units run on OpenMP threads: torch's own libgomp
 * pool where torch has loaded it (the loader shares one libgomp.so.1), so the threads are warm and
 * nothing competes with torch's spinning workers. */
#define FOR_UNITS for (i64 k = 0; k < nunits; k++)
#define UNIT const i64 b0 = units[4 * k], b1 = units[4 * k + 1], c_lo = units[4 * k + 2], c_hi = units[4 * k + 3]

void NAME(scan_forward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 n, i64 g,
                         const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                         const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB, const REAL *C, const i64 *sC,
                         const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                         REAL *out, REAL *ckpt, REAL *last, i64 chunk) {
    i64 per_group = d / g;
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        for (i64 i = b0; i < b1; i++)
            for (i64 c0 = c_lo; c0 < c_hi; c0 += W) {
                int nl = d - c0 < W ? (int)(d - c0) : W;
                if (nl == W)  /* the common case, with the lane count a constant the compiler can use */
                    forward_block(i, c0, W, L, d, n, c0 / per_group, u, su_b, su_t, dt, sdt_b, sdt_t, bias, soft, At, B, sB, C,
                                  sC, D, z, sz_b, sz_t, out, ckpt, last, chunk);
                else
                    forward_block(i, c0, nl, L, d, n, c0 / per_group, u, su_b, su_t, dt, sdt_b, sdt_t, bias, soft, At, B, sB, C,
                                  sC, D, z, sz_b, sz_t, out, ckpt, last, chunk);
            }
    }
}

/* rows[k][0..W) -> sums[k] = sum over lanes, for k < n: halving adds within each row */
static inline void lane_sums(REAL rows[][W], i64 n, REAL *sums) {
    for (int w = W / 2; w >= 1; w /= 2)
        for (i64 k = 0; k < n; k++)
            for (int c = 0; c < w; c++) rows[k][c] += rows[k][c + w];
    for (i64 k = 0; k < n; k++) sums[k] += rows[k][0];
}

static inline __attribute__((always_inline)) void backward_block(i64 i, i64 c0, int nl, i64 L, i64 d, i64 n, i64 g, i64 gi,
                           const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                           const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB,
                           const REAL *C, const i64 *sC, const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                           const REAL *ckpt, const REAL *dout, REAL *du, REAL *ddt, REAL *dz, REAL *dA,
                           REAL *dB, REAL *dC, REAL *dD, REAL *dbias, i64 chunk) {
    /* the chunk's states and decays, (chunk + 1) x n and chunk x n rows of W lanes */
    static __thread REAL hflat[(MAXCHUNK + 1) * MAXN][W], aflat[MAXCHUNK * MAXN][W];
    REAL dtbuf[MAXCHUNK][W], slope[MAXCHUNK][W], ybuf[MAXCHUNK][W];  /* the chunk's dt, d dt / d delta, C h + D u */
    REAL A[MAXN][W], A2[MAXN][W], lam[MAXN][W], dAacc[MAXN][W], rowB[MAXN][W], rowC[MAXN][W];
    REAL Dv[W], bv[W], dDacc[W], dbacc[W], ut[W], dtt[W], g_[W], zt[W], du_t[W], ddt_t[W], y[W];
    i64 chunks = (L + chunk - 1) / chunk;
    for (i64 k = 0; k < n; k++)
        LANES { A[k][c] = c < nl ? At[k * d + c0 + c] : 0; A2[k][c] = A[k][c] * LOG2E; lam[k][c] = 0; dAacc[k][c] = 0; }
    LANES { Dv[c] = c < nl ? D[c0 + c] : 0; bv[c] = c < nl && bias ? bias[c0 + c] : 0; dDacc[c] = 0; dbacc[c] = 0; }
    const REAL *Bi = B + i * sB[0] + gi * sB[1], *Ci = C + i * sC[0] + gi * sC[1];
    REAL *dBi = dB + (i * g + gi) * L * n, *dCi = dC + (i * g + gi) * L * n;
    for (i64 ch = chunks - 1; ch >= 0; ch--) {
        i64 t0 = ch * chunk, t1 = t0 + chunk < L ? t0 + chunk : L;
        const REAL *ck = ckpt + ((i * chunks + ch) * n) * d + c0;
        for (i64 k = 0; k < n; k++) LANES hflat[k][c] = c < nl ? ck[k * d + c] : 0;
        for (i64 t = t0; t < t1; t++) {  /* recompute the chunk's states and decays */
            i64 j = t - t0;
            const REAL *up = u + i * su_b + t * su_t + c0, *dp = dt + i * sdt_b + t * sdt_t + c0;
            LANES { ut[c] = c < nl ? up[c] : 0; dtt[c] = (c < nl ? dp[c] : 0) + bv[c]; }
            if (soft)
                LANES { slope[j][c] = c < nl ? sigmoid(dtt[c]) : 0; dtt[c] = c < nl ? softplus(dtt[c]) : 0; }
            else
                LANES slope[j][c] = 1;
            LANES { dtbuf[j][c] = dtt[c]; y[c] = Dv[c] * ut[c]; }
            for (i64 k = 0; k < n; k++) {
                REAL bk = Bi[k * sB[2] + t * sB[3]], ckv = Ci[k * sC[2] + t * sC[3]];
                LANES {
                    aflat[j * n + k][c] = EXP2(dtt[c] * A2[k][c]);
                    hflat[(j + 1) * n + k][c] = aflat[j * n + k][c] * hflat[j * n + k][c] + dtt[c] * ut[c] * bk;
                    y[c] += ckv * hflat[(j + 1) * n + k][c];  /* the pre-gate output, for the gate's gradient */
                }
            }
            LANES ybuf[j][c] = y[c];
        }
        for (i64 t = t1 - 1; t >= t0; t--) {  /* the adjoint recurrence, in reverse */
            i64 j = t - t0;
            const REAL *up = u + i * su_b + t * su_t + c0;
            const REAL *gp = dout + (i * L + t) * d + c0;
            LANES { ut[c] = c < nl ? up[c] : 0; dtt[c] = dtbuf[j][c]; g_[c] = c < nl ? gp[c] : 0; }
            if (z) {  /* out = y * silu(z): the gate's gradients */
                const REAL *zp = z + i * sz_b + t * sz_t + c0;
                LANES { zt[c] = c < nl ? zp[c] : 0; y[c] = ybuf[j][c]; }
                REAL *dzp = dz + (i * L + t) * d + c0;
                LANES {
                    REAL s = sigmoid(zt[c]);
                    REAL dzc = g_[c] * y[c] * s * ((REAL)1 + zt[c] * ((REAL)1 - s));
                    g_[c] *= zt[c] * s;
                    y[c] = dzc;
                }
                for (int c = 0; c < nl; c++) dzp[c] = y[c];
            }
            /* with l = dL/dh_t: du = g D + dt sum_k l B_k, ddt = u sum_k l B_k + sum_k l A_k a_k h_{t-1},
             * dA_k += dt l a_k h_{t-1}; sb and sa hold the two sums over k */
            REAL sb[W], sa[W], dtu[W];
            LANES { dDacc[c] += g_[c] * ut[c]; dtu[c] = dtt[c] * ut[c]; sb[c] = 0; sa[c] = 0; }
            for (i64 k = 0; k < n; k++) {
                REAL bk = Bi[k * sB[2] + t * sB[3]], ckv = Ci[k * sC[2] + t * sC[3]];
                LANES {
                    REAL l = lam[k][c] + g_[c] * ckv;
                    REAL a = aflat[j * n + k][c], lah = l * a * hflat[j * n + k][c];
                    rowC[k][c] = g_[c] * hflat[(j + 1) * n + k][c];
                    rowB[k][c] = l * dtu[c];
                    sb[c] += l * bk;
                    sa[c] += A[k][c] * lah;
                    dAacc[k][c] += dtt[c] * lah;
                    lam[k][c] = l * a;
                }
            }
            LANES { du_t[c] = g_[c] * Dv[c] + dtt[c] * sb[c]; ddt_t[c] = ut[c] * sb[c] + sa[c]; }
            lane_sums(rowB, n, dBi + t * n);
            lane_sums(rowC, n, dCi + t * n);
            LANES { ddt_t[c] *= slope[j][c]; dbacc[c] += ddt_t[c]; }
            REAL *dup = du + (i * L + t) * d + c0, *ddp = ddt + (i * L + t) * d + c0;
            for (int c = 0; c < nl; c++) { dup[c] = du_t[c]; ddp[c] = ddt_t[c]; }
        }
    }
    for (i64 k = 0; k < n; k++) for (int c = 0; c < nl; c++) dA[(i * n + k) * d + c0 + c] = dAacc[k][c];
    for (int c = 0; c < nl; c++) { dD[i * d + c0 + c] = dDacc[c]; dbias[i * d + c0 + c] = dbacc[c]; }
}

/* dB and dC: unit k accumulates into dB + k * dbc_unit (0 where units share the channels of no block,
 * i.e. split the batch; one copy per unit where they split the channels) */
void NAME(scan_backward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 n, i64 g,
                          const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                          const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB,
                          const REAL *C, const i64 *sC, const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                          const REAL *ckpt, const REAL *dout, REAL *du, REAL *ddt, REAL *dz, REAL *dA,
                          REAL *dB, REAL *dC, i64 dbc_unit, REAL *dD, REAL *dbias, i64 chunk) {
    i64 per_group = d / g;
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        REAL *dBk = dB + k * dbc_unit, *dCk = dC + k * dbc_unit;
        for (i64 i = b0; i < b1; i++)
            for (i64 c0 = c_lo; c0 < c_hi; c0 += W) {
                int nl = d - c0 < W ? (int)(d - c0) : W;
                if (nl == W)
                    backward_block(i, c0, W, L, d, n, g, c0 / per_group, u, su_b, su_t, dt, sdt_b, sdt_t, bias, soft, At, B,
                                   sB, C, sC, D, z, sz_b, sz_t, ckpt, dout, du, ddt, dz, dA, dBk, dCk, dD, dbias, chunk);
                else
                    backward_block(i, c0, nl, L, d, n, g, c0 / per_group, u, su_b, su_t, dt, sdt_b, sdt_t, bias, soft, At, B,
                                   sB, C, sC, D, z, sz_b, sz_t, ckpt, dout, du, ddt, dz, dA, dBk, dCk, dD, dbias, chunk);
            }
    }
}

/* Mamba's depthwise causal convolution and SiLU, channel-last: out[t] = silu(bias + sum_j w[j] x[t-K+1+j]).
 * x: element (i, t, c) at [i*sx_b + t*sx_t + c];  wT: (K, d);  out, gpre: (b, l, d).
 * Work comes in units, as the scan's. */

/* pre[c] = bias[c] + sum_j w[j][c] x[t-K+1+j][c] over channels [c_lo, c_hi), for one sequence xi */
static inline void conv_pre(const REAL *xi, i64 sx_t, i64 t, i64 c_lo, i64 c_hi, i64 d, i64 K, const REAL *wT,
                            const REAL *bias, REAL *pre) {
    for (i64 c = c_lo; c < c_hi; c++) pre[c] = bias[c];
    for (i64 j = 0; j < K; j++) {
        i64 s = t - K + 1 + j;
        if (s < 0) continue;
        const REAL *xs = xi + s * sx_t, *wj = wT + j * d;
        for (i64 c = c_lo; c < c_hi; c++) pre[c] += wj[c] * xs[c];
    }
}

void NAME(conv_silu_forward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 K, const REAL *x, i64 sx_b, i64 sx_t,
                              const REAL *wT, const REAL *bias, REAL *out) {
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        for (i64 i = b0; i < b1; i++)
            for (i64 t = 0; t < L; t++) {
                REAL *o = out + (i * L + t) * d;
                conv_pre(x + i * sx_b, sx_t, t, c_lo, c_hi, d, K, wT, bias, o);
                for (i64 c = c_lo; c < c_hi; c++) o[c] = o[c] * sigmoid(o[c]);
            }
    }
}

/* Backward: gpre = gout * silu'(pre) (recomputed), dx[s] = sum_j w[j] gpre[s+K-1-j], and per batch
 * element dwT (K, d) and dbias (d). gout: (b, l, d); dx: (b, l, d); dwT: (b, K, d); dbias: (b, d). */
void NAME(conv_silu_backward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 K, const REAL *x, i64 sx_b, i64 sx_t,
                               const REAL *wT, const REAL *bias, const REAL *gout, REAL *gpre, REAL *dx,
                               REAL *dwT, REAL *dbias) {
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        for (i64 i = b0; i < b1; i++) {
            REAL *dw = dwT + i * K * d, *db = dbias + i * d;
            for (i64 j = 0; j < K; j++) for (i64 c = c_lo; c < c_hi; c++) dw[j * d + c] = 0;
            for (i64 c = c_lo; c < c_hi; c++) db[c] = 0;
            for (i64 t = 0; t < L; t++) {
                REAL *gp = gpre + (i * L + t) * d;
                const REAL *go = gout + (i * L + t) * d;
                conv_pre(x + i * sx_b, sx_t, t, c_lo, c_hi, d, K, wT, bias, gp);
                for (i64 c = c_lo; c < c_hi; c++) {
                    REAL p = gp[c], sg = sigmoid(p);
                    gp[c] = go[c] * sg * ((REAL)1 + p * ((REAL)1 - sg));
                    db[c] += gp[c];
                }
                for (i64 j = 0; j < K; j++) {
                    i64 s = t - K + 1 + j;
                    if (s < 0) continue;
                    const REAL *xs = x + i * sx_b + s * sx_t;
                    REAL *dwj = dw + j * d;
                    for (i64 c = c_lo; c < c_hi; c++) dwj[c] += gp[c] * xs[c];
                }
            }
            for (i64 s = 0; s < L; s++) {
                REAL *o = dx + (i * L + s) * d;
                for (i64 c = c_lo; c < c_hi; c++) o[c] = 0;
                for (i64 j = 0; j < K; j++) {
                    i64 t = s + K - 1 - j;
                    if (t >= L) continue;
                    const REAL *gp = gpre + (i * L + t) * d, *wj = wT + j * d;
                    for (i64 c = c_lo; c < c_hi; c++) o[c] += wj[c] * gp[c];
                }
            }
        }
    }
}
