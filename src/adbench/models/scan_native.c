/* The S6 selective scan, channel-last, for CPUs: forward and backward (see scan_native.py).
 *
 * Compiled twice by scan_native.py, with REAL float (W = 16 lanes) and double (W = 8): one vector
 * register of AVX-512, written with GCC's vector extensions (`vec`), so that every running value
 * (a state row, the output being summed over the state) stays in a register. Lanes are W
 * consecutive channels, so every sum over the state dimension is a plain vector add; only the
 * gradients of B and C, shared by all channels, need sums across lanes, and those are summed over
 * all of a work unit's channel blocks first, then across lanes once.
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
#include <stdlib.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SUFFIX)
#define MAXN 64
#define MAXCHUNK 64

typedef int64_t i64;
typedef REAL vec __attribute__((vector_size(64)));
#ifdef INLINE_EXP
typedef int32_t ivec __attribute__((vector_size(64)));  /* same lanes as vec, for bit tricks */
#else
typedef int64_t ivec __attribute__((vector_size(64)));
#endif

static inline vec splat(REAL s) { return (vec){0} + s; }
static inline vec select_(ivec mask, vec a, vec b) { return (vec)((mask & (ivec)a) | (~mask & (ivec)b)); }
#if defined(__AVX512F__) && defined(INLINE_EXP)
#include <immintrin.h>  /* one instruction each, where the generic select below takes three */
static inline vec vmin(vec a, vec b) { return (vec)_mm512_min_ps((__m512)a, (__m512)b); }
static inline vec vmax(vec a, vec b) { return (vec)_mm512_max_ps((__m512)a, (__m512)b); }
#else
static inline vec vmin(vec a, vec b) { return select_(a < b, a, b); }
static inline vec vmax(vec a, vec b) { return select_(a > b, a, b); }
#endif

/* lanes [0, nl) of a block: nl == W on every block but a last, partial one; the rest read as 0 */
static inline vec load(const REAL *p, int nl) {
    vec v = {0};
    if (nl == W) memcpy(&v, p, sizeof v);
    else for (int c = 0; c < nl; c++) v[c] = p[c];
    return v;
}
static inline void store(REAL *p, vec v, int nl) {
    if (nl == W) memcpy(p, &v, sizeof v);
    else for (int c = 0; c < nl; c++) p[c] = v[c];
}
static inline REAL lane_sum(vec v) {
    REAL s = 0;
    for (int c = 0; c < W; c++) s += v[c];
    return s;
}

#ifdef INLINE_EXP
/* exp and 2^x for float lanes, inline (glibc's vector exp is a call): 2^m times a Taylor polynomial
 * of the remainder, m = round(x) taken as trunc(x + 126.5) - 126 (x is clamped, so that is positive).
 * e^x: m = round(x / ln 2), r = x - m ln 2 (ln 2 split in two), |r| <= ln 2 / 2, degree 7 (error below
 * 1e-8, under float's rounding); 2^x: r = x - m, |r| <= 1/2, 2^r by a degree-5 polynomial fitted for the
 * least largest relative error on [-1/2, 1/2] (7.5e-8; the decays' exp, one per state and step, is most
 * of the scan's arithmetic, and this is two multiplies fewer than a degree-6 Taylor polynomial in r ln 2). */
static inline vec scale2(ivec m) { return (vec)((m + 127) << 23); }
static inline vec vexp(vec x) {
    x = vmax(vmin(x, splat(88.0f)), splat(-87.0f));
    ivec mi = __builtin_convertvector(x * 1.44269504f + 126.5f, ivec) - 126;
    vec m = __builtin_convertvector(mi, vec);
    vec r = x - m * 0.693359375f + m * 2.12194440e-4f;
    vec p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    return p * scale2(mi);
}
static inline vec exp2_poly(vec r) {
    return 1.000000072f + r * (6.931469671e-1f + r * (2.402211979e-1f + r * (5.550713315e-2f + r * (
        9.675537697e-3f + r * 1.327644440e-3f))));
}
#ifdef __AVX512F__
/* round and scale by one instruction each (vrndscaleps, vscalefps): no clamp above (scalef gives inf),
 * and the clamp below keeps results normal, as the generic version's */
static inline vec vexp2(vec x) {
    x = vmax(x, splat(-126.0f));
    vec m = (vec)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (vec)_mm512_scalef_ps((__m512)exp2_poly(x - m), (__m512)m);
}
#else
static inline vec vexp2(vec x) {
    x = vmax(vmin(x, splat(127.0f)), splat(-126.0f));
    ivec mi = __builtin_convertvector(x + 126.5f, ivec) - 126;
    return exp2_poly(x - __builtin_convertvector(mi, vec)) * scale2(mi);
}
#endif
/* softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e)
 * in (0, 1/3], by its series to s^15 (relative error below 1e-9, under float's): no log call. */
static inline vec vsoftplus(vec x) {
    vec e = vexp(-vmax(x, -x)), s = e / (2.0f + e), s2 = s * s;
    vec series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (
        1.0f / 11 + s2 * (1.0f / 13 + s2 * (1.0f / 15)))))));
    return vmax(x, splat(0)) + 2.0f * s * series;
}
#else
/* double lanes (the test oracle's precision): libm, lane by lane */
static inline vec vexp(vec x) { for (int c = 0; c < W; c++) x[c] = exp(x[c]); return x; }
static inline vec vexp2(vec x) { for (int c = 0; c < W; c++) x[c] = exp2(x[c]); return x; }
static inline vec vsoftplus(vec x) {
    for (int c = 0; c < W; c++) x[c] = (x[c] > 0 ? x[c] : 0) + log1p(exp(-fabs(x[c])));
    return x;
}
#endif
static inline vec vsigmoid(vec x) { return 1 / (1 + vexp(-x)); }
#define LOG2E ((REAL)1.4426950408889634)

/* Every entry point takes its work as `nunits` units (b0, b1, c_lo, c_hi): batch elements [b0, b1) and
 * channels [c_lo, c_hi), c_lo a multiple of W. The units run on OpenMP threads: torch's own libgomp
 * pool where torch has loaded it (the loader shares one libgomp.so.1), so the threads are warm and
 * nothing competes with torch's spinning workers. */
#define FOR_UNITS for (i64 k = 0; k < nunits; k++)
#define UNIT const i64 b0 = units[4 * k], b1 = units[4 * k + 1], c_lo = units[4 * k + 2], c_hi = units[4 * k + 3]

static inline __attribute__((always_inline)) void forward_block(i64 i, i64 c0, int nl, i64 L, i64 d, i64 n, i64 gi,
                          const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                          const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB,
                          const REAL *C, const i64 *sC, const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                          REAL *out, REAL *ckpt, REAL *last, i64 chunk) {
    vec h[MAXN], A2[MAXN];
    i64 chunks = (L + chunk - 1) / chunk;
    for (i64 k = 0; k < n; k++) { A2[k] = load(At + k * d + c0, nl) * LOG2E; h[k] = splat(0); }
    vec Dv = load(D + c0, nl), bv = bias ? load(bias + c0, nl) : splat(0);
    const REAL *Bi = B + i * sB[0] + gi * sB[1], *Ci = C + i * sC[0] + gi * sC[1];
    for (i64 t = 0; t < L; t++) {
        if (t % chunk == 0) {
            REAL *ck = ckpt + ((i * chunks + t / chunk) * n) * d + c0;
            for (i64 k = 0; k < n; k++) store(ck + k * d, h[k], nl);
        }
        vec ut = load(u + i * su_b + t * su_t + c0, nl), dtt = load(dt + i * sdt_b + t * sdt_t + c0, nl) + bv;
        if (soft) dtt = vsoftplus(dtt);
        vec y = Dv * ut, drive = dtt * ut;  /* (padding lanes: u = 0, so their states stay 0) */
        for (i64 k = 0; k < n; k++) {
            h[k] = vexp2(dtt * A2[k]) * h[k] + drive * Bi[k * sB[2] + t * sB[3]];
            y += Ci[k * sC[2] + t * sC[3]] * h[k];
        }
        if (z) {
            vec zt = load(z + i * sz_b + t * sz_t + c0, nl);
            y *= zt * vsigmoid(zt);
        }
        store(out + (i * L + t) * d + c0, y, nl);
    }
    for (i64 k = 0; k < n; k++) store(last + (i * n + k) * d + c0, h[k], nl);
}

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

/* What a channel block carries from one chunk to the one before it in the backward pass: per state
 * index the adjoint and dA's running sum. (What one step of the adjoint reads and writes lies side by
 * side, here and in cell_t: as separate arrays a multiple of 4 KB apart, their loads and stores shared
 * address bits; 16k-token slice, one thread: backward 62 -> 60 ms.) */
typedef struct { vec lam, dA; } carry_state_t;
typedef struct { carry_state_t s[MAXN]; vec dD, dbias; } carry_t;

/* Per work unit and time chunk, for each step j and state index k: the recomputed state before the step
 * (h) and decay (a), and the B and C gradients as lanes, summed over the unit's blocks of one group; per
 * step: dt, d dt / d delta, C h + D u, the gated output's gradient g, dt u and the adjoint's two sums over
 * the state (sb, sa). Row j = MAXCHUNK holds only the chunk's last state. */
typedef struct { vec h, a, accB, accC; } cell_t;
typedef struct {
    cell_t c[(MAXCHUNK + 1) * MAXN];
    vec dt[MAXCHUNK], slope[MAXCHUNK], y[MAXCHUNK], g[MAXCHUNK], dtu[MAXCHUNK], sb[MAXCHUNK], sa[MAXCHUNK];
} chunk_t;

/* The adjoint over one chunk for state indices [k0, k0 + nk), nk <= KT, in reverse time: their lam and
 * dA stay in registers through the chunk, and the sums over k (sb, sa) carry over from tile to tile in
 * w. With l = dL/dh_t: du = g D + dt sum_k l B_k, ddt = u sum_k l B_k + sum_k l A_k a_k h_{t-1},
 * dA_k += dt l a_k h_{t-1}; sb and sa hold the two sums over k. */
#define KT 8
static inline __attribute__((always_inline)) void adjoint_tile(i64 k0, int nk, i64 n, i64 t0, i64 t1, const vec *A,
                                                               const REAL *Bi, const i64 *sB, const REAL *Ci,
                                                               const i64 *sC, carry_t *cr, chunk_t *w) {
    vec lam[KT], dAk[KT];
    for (int kk = 0; kk < nk; kk++) { lam[kk] = cr->s[k0 + kk].lam; dAk[kk] = cr->s[k0 + kk].dA; }
    for (i64 t = t1 - 1; t >= t0; t--) {
        i64 j = t - t0;
        vec g = w->g[j], dtt = w->dt[j], dtu = w->dtu[j], sb = w->sb[j], sa = w->sa[j];
        for (int kk = 0; kk < nk; kk++) {
            i64 k = k0 + kk;
            cell_t *cell = w->c + j * n + k;
            vec l = lam[kk] + g * Ci[k * sC[2] + t * sC[3]], a = cell->a, lah = l * a * cell->h;
            cell->accC += g * cell[n].h;
            cell->accB += l * dtu;
            sb += l * Bi[k * sB[2] + t * sB[3]];
            sa += A[k] * lah;
            dAk[kk] += dtt * lah;
            lam[kk] = l * a;
        }
        w->sb[j] = sb;
        w->sa[j] = sa;
    }
    for (int kk = 0; kk < nk; kk++) { cr->s[k0 + kk].lam = lam[kk]; cr->s[k0 + kk].dA = dAk[kk]; }
}

/* One channel block over time steps [t0, t1): recompute the chunk's states from its checkpoint,
 * then run the adjoint recurrence in reverse, adding the B and C gradients into its cells' accB / accC. */
static inline __attribute__((always_inline)) void backward_chunk(i64 i, i64 c0, int nl, i64 t0, i64 t1, i64 L, i64 d, i64 n,
                           i64 gi, const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                           const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB,
                           const REAL *C, const i64 *sC, const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                           const REAL *ck, const REAL *dout, REAL *du, REAL *ddt, REAL *dz, i64 sdz_b, i64 sdz_t,
                           REAL *yout, carry_t *cr, chunk_t *w) {
    vec A[MAXN], A2[MAXN];
    for (i64 k = 0; k < n; k++) { A[k] = load(At + k * d + c0, nl); A2[k] = A[k] * LOG2E; }
    vec Dv = load(D + c0, nl), bv = bias ? load(bias + c0, nl) : splat(0);
    const REAL *Bi = B + i * sB[0] + gi * sB[1], *Ci = C + i * sC[0] + gi * sC[1];
    for (i64 k = 0; k < n; k++) w->c[k].h = load(ck + k * d, nl);
    for (i64 t = t0; t < t1; t++) {  /* recompute the chunk's states and decays */
        i64 j = t - t0;
        vec ut = load(u + i * su_b + t * su_t + c0, nl), dtt = load(dt + i * sdt_b + t * sdt_t + c0, nl) + bv;
        w->slope[j] = soft ? vsigmoid(dtt) : splat(1);
        if (soft) dtt = vsoftplus(dtt);
        w->dt[j] = dtt;
        vec y = Dv * ut, drive = dtt * ut;
        for (i64 k = 0; k < n; k++) {
            vec a = vexp2(dtt * A2[k]), hn = a * w->c[j * n + k].h + drive * Bi[k * sB[2] + t * sB[3]];
            w->c[j * n + k].a = a;
            w->c[(j + 1) * n + k].h = hn;
            y += Ci[k * sC[2] + t * sC[3]] * hn;  /* the pre-gate output, for the gate's gradient */
        }
        w->y[j] = y;
    }
    for (i64 t = t0; t < t1; t++) {  /* the gate's gradients, and what the adjoint takes per step */
        i64 j = t - t0;
        vec ut = load(u + i * su_b + t * su_t + c0, nl), g = load(dout + (i * L + t) * d + c0, nl);
        if (z) {  /* out = y * silu(z): the gate's gradients */
            vec zt = load(z + i * sz_b + t * sz_t + c0, nl), s = vsigmoid(zt);
            store(dz + i * sdz_b + t * sdz_t + c0, g * w->y[j] * s * (1 + zt * (1 - s)), nl);
            g *= zt * s;
            if (yout) store(yout + (i * L + t) * d + c0, w->y[j] * zt * s, nl);
        } else if (yout) {
            store(yout + (i * L + t) * d + c0, w->y[j], nl);
        }
        cr->dD += g * ut;
        w->g[j] = g;
        w->dtu[j] = w->dt[j] * ut;
        w->sb[j] = w->sa[j] = splat(0);
    }
    for (i64 k0 = 0; k0 < n; k0 += KT) {  /* the adjoint recurrence, in reverse, KT state indices at a time */
        if (n - k0 >= KT)
            adjoint_tile(k0, KT, n, t0, t1, A, Bi, sB, Ci, sC, cr, w);
        else
            adjoint_tile(k0, (int)(n - k0), n, t0, t1, A, Bi, sB, Ci, sC, cr, w);
    }
    for (i64 t = t0; t < t1; t++) {
        i64 j = t - t0;
        vec ut = load(u + i * su_b + t * su_t + c0, nl), ddt_t = (ut * w->sb[j] + w->sa[j]) * w->slope[j];
        cr->dbias += ddt_t;
        store(du + (i * L + t) * d + c0, w->g[j] * Dv + w->dt[j] * w->sb[j], nl);
        store(ddt + (i * L + t) * d + c0, ddt_t, nl);
    }
}

/* dz: element (i, t, c) at [i*sdz_b + t*sdz_t + c] (so it may be half of a wider gradient); yout, if
 * not NULL, receives the forward's output (b, l, d), recomputed. dB and dC: unit k accumulates into
 * dB + k * dbc_unit (0 where units split the batch; one copy per unit where they split the channels) */
void NAME(scan_backward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 n, i64 g,
                          const REAL *u, i64 su_b, i64 su_t, const REAL *dt, i64 sdt_b, i64 sdt_t,
                          const REAL *bias, int soft, const REAL *At, const REAL *B, const i64 *sB,
                          const REAL *C, const i64 *sC, const REAL *D, const REAL *z, i64 sz_b, i64 sz_t,
                          const REAL *ckpt, const REAL *dout, REAL *du, REAL *ddt, REAL *dz, i64 sdz_b, i64 sdz_t,
                          REAL *yout, REAL *dA, REAL *dB, REAL *dC, i64 dbc_unit, REAL *dD, REAL *dbias, i64 chunk) {
    i64 per_group = d / g, chunks = (L + chunk - 1) / chunk;
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        REAL *dBk = dB + k * dbc_unit, *dCk = dC + k * dbc_unit;
        i64 blocks = (c_hi - c_lo + W - 1) / W;
        carry_t *carry = aligned_alloc(64, sizeof(carry_t) * blocks);
        chunk_t *w = aligned_alloc(64, sizeof(chunk_t));
        for (i64 i = b0; i < b1; i++) {
            memset(carry, 0, sizeof(carry_t) * blocks);
            for (i64 ch = chunks - 1; ch >= 0; ch--) {
                i64 t0 = ch * chunk, t1 = t0 + chunk < L ? t0 + chunk : L;
                for (i64 bl = 0; bl < blocks; bl++) {
                    i64 c0 = c_lo + bl * W, gi = c0 / per_group;
                    if (bl == 0 || c0 % per_group == 0)  /* a new group's sums begin */
                        for (i64 jk = 0; jk < (t1 - t0) * n; jk++) w->c[jk].accB = w->c[jk].accC = splat(0);
                    int nl = d - c0 < W ? (int)(d - c0) : W;
                    const REAL *ck = ckpt + ((i * chunks + ch) * n) * d + c0;
                    if (nl == W)
                        backward_chunk(i, c0, W, t0, t1, L, d, n, gi, u, su_b, su_t, dt, sdt_b, sdt_t, bias, soft, At, B, sB,
                                       C, sC, D, z, sz_b, sz_t, ck, dout, du, ddt, dz, sdz_b, sdz_t, yout, carry + bl, w);
                    else
                        backward_chunk(i, c0, nl, t0, t1, L, d, n, gi, u, su_b, su_t, dt, sdt_b, sdt_t, bias, soft, At, B, sB,
                                       C, sC, D, z, sz_b, sz_t, ck, dout, du, ddt, dz, sdz_b, sdz_t, yout, carry + bl, w);
                    if (bl == blocks - 1 || (c0 + W) % per_group == 0) {  /* the group's sums end: across lanes, once */
                        REAL *dBi = dBk + ((i * g + gi) * L + t0) * n, *dCi = dCk + ((i * g + gi) * L + t0) * n;
                        for (i64 jk = 0; jk < (t1 - t0) * n; jk++) {
                            dBi[jk] += lane_sum(w->c[jk].accB);
                            dCi[jk] += lane_sum(w->c[jk].accC);
                        }
                    }
                }
            }
            for (i64 bl = 0; bl < blocks; bl++) {
                i64 c0 = c_lo + bl * W;
                int nl = d - c0 < W ? (int)(d - c0) : W;
                for (i64 kk = 0; kk < n; kk++) store(dA + (i * n + kk) * d + c0, carry[bl].s[kk].dA, nl);
                store(dD + i * d + c0, carry[bl].dD, nl);
                store(dbias + i * d + c0, carry[bl].dbias, nl);
            }
        }
        free(w);
        free(carry);
    }
}

/* Mamba's depthwise causal convolution and SiLU, channel-last: out[t] = silu(bias + sum_j w[j] x[t-K+1+j]).
 * x: element (i, t, c) at [i*sx_b + t*sx_t + c];  wT: (K, d);  out, gpre: (b, l, d).
 * Work comes in units, as the scan's; each channel block of W lanes is one vector. */

/* bias + sum_j w[j] x[t-K+1+j] on the block at channel c0, for one sequence xi */
static inline __attribute__((always_inline)) vec conv_pre(const REAL *xi, i64 sx_t, i64 t, i64 c0, int nl, i64 d, i64 K,
                                                          const REAL *wT, const REAL *bias) {
    vec pre = load(bias + c0, nl);
    for (i64 j = 0; j < K; j++) {
        i64 s = t - K + 1 + j;
        if (s >= 0) pre += load(wT + j * d + c0, nl) * load(xi + s * sx_t + c0, nl);
    }
    return pre;
}

/* The conv kernels' units are (b0, b1, t_lo, t_hi): batch elements [b0, b1), steps [t_lo, t_hi), all channels.
 * (Where a call has fewer sequences than threads they split time, not channels: on two threads, split
 * channels ran the conv no faster than one thread.) */
#define CONV_UNIT const i64 b0 = units[4 * k], b1 = units[4 * k + 1], t_lo = units[4 * k + 2], t_hi = units[4 * k + 3]
#define FOR_BLOCKS for (i64 c0 = 0; c0 < d; c0 += W)
#define NL const int nl = d - c0 < W ? (int)(d - c0) : W
/* The conv kernels' step bodies take the lane count, the width and whether the window lies inside the
 * sequence as arguments, and are called with constants in the common case (whole blocks, Mamba's
 * d_conv = 4, t >= 3): so the window unrolls, the loads need no lane test and stay in registers (the
 * generic body kept its vectors on the stack). */
#define CONV_COMMON(t) (nl == W && K == 4 && (t) >= 3)

static inline __attribute__((always_inline)) void conv_forward_step(const REAL *xi, i64 sx_t, i64 t, i64 c0, int nl,
                                                                    i64 d, i64 K, const REAL *wT, const REAL *bias,
                                                                    REAL *o) {
    vec pre = conv_pre(xi, sx_t, t, c0, nl, d, K, wT, bias);
    store(o, pre * vsigmoid(pre), nl);
}

void NAME(conv_silu_forward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 K, const REAL *x, i64 sx_b, i64 sx_t,
                              const REAL *wT, const REAL *bias, REAL *out) {
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        CONV_UNIT;
        for (i64 i = b0; i < b1; i++)
            for (i64 t = t_lo; t < t_hi; t++)
                FOR_BLOCKS {
                    NL;
                    REAL *o = out + (i * L + t) * d + c0;
                    if (CONV_COMMON(t))
                        conv_forward_step(x + i * sx_b, sx_t, t, c0, W, d, 4, wT, bias, o);
                    else
                        conv_forward_step(x + i * sx_b, sx_t, t, c0, nl, d, K, wT, bias, o);
                }
    }
}

/* One step of the backward on one block (see conv_silu_backward_): dw (K + 1 sums) and ring (K values of
 * gpre) are the block's; steps from t_hi on only fill the ring, for the unit's last dx. */
static inline __attribute__((always_inline)) void conv_backward_step(const REAL *xi, i64 sx_t, i64 t, i64 L, i64 t_lo,
                                                                     i64 t_hi, i64 c0, int nl, i64 d, i64 K,
                                                                     const REAL *wT, const REAL *bias, const REAL *g,
                                                                     vec *dw, vec *rg, REAL *dxi, i64 sdx_t) {
    vec gp = splat(0);
    if (t < L) {
        vec pre = conv_pre(xi, sx_t, t, c0, nl, d, K, wT, bias), sg = vsigmoid(pre);
        gp = load(g, nl) * sg * (1 + pre * (1 - sg));
        if (t < t_hi) {
            dw[K] += gp;
            for (i64 j = 0; j < K; j++) {
                i64 s = t - K + 1 + j;
                if (s >= 0) dw[j] += gp * load(xi + s * sx_t + c0, nl);
            }
        }
    }
    rg[t % K] = gp;
    i64 s = t - K + 1;
    if (s >= t_lo) {
        vec o = splat(0);
        for (i64 j = 0; j < K; j++) o += load(wT + j * d + c0, nl) * rg[(t - j) % K];
        store(dxi + s * sdx_t + c0, o, nl);
    }
}

/* Backward: gpre = gout * silu'(pre) (recomputed), dx[s] = sum_j w[j] gpre[s+K-1-j], and per unit
 * dwT (K, d) and dbias (d). One pass, time-major, as the data lie: each block keeps its last K values
 * of gpre in a ring, so dx[s] is written as soon as step s + K - 1 is done (a unit runs K - 1 steps past
 * its range for its last dx). gout: (b, l, d); dx: element (i, s, c) at [i*sdx_b + s*sdx_t + c];
 * dwT: (nunits, K, d); dbias: (nunits, d). */
void NAME(conv_silu_backward_)(i64 nunits, const i64 *units, i64 L, i64 d, i64 K, const REAL *x, i64 sx_b, i64 sx_t,
                               const REAL *wT, const REAL *bias, const REAL *gout, REAL *dx, i64 sdx_b, i64 sdx_t,
                               REAL *dwT, REAL *dbias) {
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        CONV_UNIT;
        i64 blocks = (d + W - 1) / W, t_end = t_hi + K - 1 < L + K - 1 ? t_hi + K - 1 : L + K - 1;
        vec *acc = aligned_alloc(64, sizeof(vec) * blocks * (K + 1));  /* per block: dw[0..K), dbias */
        vec *ring = aligned_alloc(64, sizeof(vec) * blocks * K);       /* per block: gpre at t-K+1 .. t */
        for (i64 a = 0; a < blocks * (K + 1); a++) acc[a] = splat(0);
        for (i64 i = b0; i < b1; i++) {
            const REAL *xi = x + i * sx_b;
            for (i64 t = t_lo; t < t_end; t++)  /* past L: the last dx, with gpre = 0 beyond the end */
                FOR_BLOCKS {
                    NL;
                    i64 bl = c0 / W;
                    const REAL *g = gout + (i * L + t) * d + c0;
                    if (CONV_COMMON(t) && t < L)
                        conv_backward_step(xi, sx_t, t, L, t_lo, t_hi, c0, W, d, 4, wT, bias, g, acc + bl * 5,
                                           ring + bl * 4, dx + i * sdx_b, sdx_t);
                    else
                        conv_backward_step(xi, sx_t, t, L, t_lo, t_hi, c0, nl, d, K, wT, bias, g, acc + bl * (K + 1),
                                           ring + bl * K, dx + i * sdx_b, sdx_t);
                }
        }
        FOR_BLOCKS {
            NL;
            vec *dw = acc + c0 / W * (K + 1);
            for (i64 j = 0; j < K; j++) store(dwT + (k * K + j) * d + c0, dw[j], nl);
            store(dbias + k * d + c0, dw[K], nl);
        }
        free(ring);
        free(acc);
    }
}

/* The blocks' RMSNorm over rows of width m: h = x rs w, rs = (mean(x^2) + eps)^-1/2, one pass over a
 * row where torch's ops take five. x, h, dh, gin, gx: (rows, m) contiguous; rs: (rows). Units are rows
 * [b0, b1). The backward: gx = gin + rs a - x rs^3 mean(a x), a = dh w (gin, which may be NULL, is the
 * gradient arriving by the residual), and unit k's dw (m) = sum over its rows of dh x rs. */
#define FOR_ROW_BLOCKS for (i64 c0 = 0; c0 < m; c0 += W)
#define ROW_NL const int nl = m - c0 < W ? (int)(m - c0) : W

void NAME(rms_norm_forward_)(i64 nunits, const i64 *units, i64 m, const REAL *x, const REAL *w, REAL eps, REAL *h,
                             REAL *rs) {
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        for (i64 r = b0; r < b1; r++) {
            const REAL *xr = x + r * m;
            vec ss = splat(0);
            FOR_ROW_BLOCKS { ROW_NL; vec v = load(xr + c0, nl); ss += v * v; }
            REAL s = (REAL)(1 / sqrt((double)lane_sum(ss) / m + eps));
            rs[r] = s;
            FOR_ROW_BLOCKS { ROW_NL; store(h + r * m + c0, load(xr + c0, nl) * s * load(w + c0, nl), nl); }
        }
    }
}

void NAME(rms_norm_backward_)(i64 nunits, const i64 *units, i64 m, const REAL *x, const REAL *w, const REAL *rs,
                              const REAL *dh, const REAL *gin, REAL *gx, REAL *dw) {
    #pragma omp parallel for num_threads(nunits) schedule(static, 1)
    FOR_UNITS {
        UNIT;
        vec *acc = aligned_alloc(64, sizeof(vec) * ((m + W - 1) / W));
        FOR_ROW_BLOCKS acc[c0 / W] = splat(0);
        for (i64 r = b0; r < b1; r++) {
            const REAL *xr = x + r * m, *dhr = dh + r * m;
            vec sax = splat(0);
            FOR_ROW_BLOCKS { ROW_NL; sax += load(dhr + c0, nl) * load(w + c0, nl) * load(xr + c0, nl); }
            REAL s = rs[r], coef = s * s * s * lane_sum(sax) / m;
            FOR_ROW_BLOCKS {
                ROW_NL;
                vec xv = load(xr + c0, nl), dv = load(dhr + c0, nl), gv = gin ? load(gin + r * m + c0, nl) : splat(0);
                store(gx + r * m + c0, gv + s * dv * load(w + c0, nl) - coef * xv, nl);
                acc[c0 / W] += dv * xv * s;
            }
        }
        FOR_ROW_BLOCKS { ROW_NL; store(dw + k * m + c0, acc[c0 / W], nl); }
        free(acc);
    }
}
