/* conv2d on the CPU: im2col + BLAS GEMM, NHWC activations, OHWI weights.
 *
 * Rows of the GEMM are the output pixels (r = (n*OH + oh)*OW + ow, M = N*OH*OW of them),
 * columns of the im2col matrix are the kernel taps in weight order (ki, kj, c), so that
 * K = KH*KW*Cin and the weight (Cout, KH, KW, Cin) already is the (Cout x K) matrix:
 *     out (M x Cout)  = col (M x K) * W^T
 *     dW  (Cout x K) += dout^T * col
 *     dcol (M x K)    = dout * W,   din = col2im(dcol)
 * The column matrix is built for a chunk of rows at a time in ctx scratch, so memory
 * stays bounded (CONV_CHUNK_BYTES) whatever the batch and image size.
 * 1x1 convolutions skip im2col: stride 1 / pad 0 uses the input itself as the (M x Cin)
 * matrix; other 1x1 ones gather (forward) and scatter (backward) whole pixel rows, since
 * each input pixel feeds at most one output pixel.
 * col2im is written as a gather over input pixels (each thread owns whole input rows),
 * so it needs no atomics and its summation order does not depend on the thread count.
 * im2col/col2im have OpenMP loops (off by default, see conv_par); sgemm is always called
 * outside a parallel region (OpenBLAS runs its own threads). */
#include <stdlib.h>
#include <string.h>

#include "core/blas.h"
#include "ops/ops.h"

/* Bytes of column buffer per chunk. Big enough that each GEMM has thousands of rows
 * (full BLAS efficiency), small enough to stay well inside the 64 MB budget and mostly in
 * the last-level cache between the im2col write and the GEMM read. See docs/conv.md. */
#ifndef CONV_CHUNK_BYTES
#define CONV_CHUNK_BYTES (16u << 20)
#endif
/* A chunk has at least this many rows (unless M is smaller, or that exceeds 64 MB). */
#define CONV_MIN_ROWS 256

/* OpenMP pays off above this many floats moved */
#define PAR_MIN 32768

int glae_conv2d_shape_init(glae_conv2d_shape *s, int n, int h, int w, int c_in, int c_out, int kh,
                           int kw, int stride_h, int stride_w, int pad_h, int pad_w) {
    if (!s) return glae_fail(GLAE_ERR_VALUE, "conv2d: shape pointer is NULL");
    memset(s, 0, sizeof *s);
    if (n < 0 || h < 0 || w < 0 || c_in < 0 || c_out < 0)
        return glae_fail(GLAE_ERR_VALUE,
                         "conv2d: negative size (n=%d, h=%d, w=%d, c_in=%d, c_out=%d)", n, h, w,
                         c_in, c_out);
    if (kh < 1 || kw < 1)
        return glae_fail(GLAE_ERR_VALUE, "conv2d: kernel size must be >= 1, got %dx%d", kh, kw);
    if (stride_h < 1 || stride_w < 1)
        return glae_fail(GLAE_ERR_VALUE, "conv2d: stride must be >= 1, got (%d, %d)", stride_h,
                         stride_w);
    if (pad_h < 0 || pad_w < 0)
        return glae_fail(GLAE_ERR_VALUE, "conv2d: padding must be >= 0, got (%d, %d)", pad_h,
                         pad_w);
    /* PyTorch: floor((H + 2p - k) / s) + 1; computed in 64 bits, the numerator may be < 0 */
    long long eh = (long long)h + 2LL * pad_h - kh, ew = (long long)w + 2LL * pad_w - kw;
    if (eh < 0 || ew < 0)
        return glae_fail(GLAE_ERR_VALUE,
                         "conv2d: output size <= 0: input %dx%d with padding (%d, %d) is smaller "
                         "than the kernel %dx%d",
                         h, w, pad_h, pad_w, kh, kw);
    long long oh = eh / stride_h + 1, ow = ew / stride_w + 1;
    /* oh*stride - pad and friends are computed in int below */
    if ((long long)h + 2LL * pad_h + stride_h > 0x7fffffffLL ||
        (long long)w + 2LL * pad_w + stride_w > 0x7fffffffLL)
        return glae_fail(GLAE_ERR_VALUE, "conv2d: padded input size too large");
    /* every index computed below fits in 64 bits; the GEMM sizes must fit in int */
    long long k = (long long)kh * kw * c_in;
    if (k > 0x7fffffff || (long long)n * oh * ow > 0x7fffffffLL ||
        (long long)n * h * w > 0x7fffffffLL)
        return glae_fail(GLAE_ERR_VALUE, "conv2d: sizes too large for a 32-bit BLAS");
    *s = (glae_conv2d_shape){n, h, w, c_in, c_out, kh, kw, stride_h, stride_w, pad_h, pad_w,
                             (int)oh, (int)ow};
    return GLAE_OK;
}

/* Re-validate a shape the caller may have filled by hand. */
static int check_shape(const glae_conv2d_shape *s, const char *fn) {
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    glae_conv2d_shape t;
    if (glae_conv2d_shape_init(&t, s->n, s->h, s->w, s->c_in, s->c_out, s->kh, s->kw,
                               s->stride_h, s->stride_w, s->pad_h, s->pad_w))
        return GLAE_ERR_VALUE;
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape.oh/ow (%d, %d) do not match the sizes (%d, %d)",
                         fn, s->oh, s->ow, t.oh, t.ow);
    return GLAE_OK;
}

/* OpenMP inside conv is off unless GLAE_CONV_OMP=1: the chunk loop alternates between
 * OpenMP regions and OpenBLAS calls, and the two thread pools (each spinning for a while
 * after its work) fight over the 2 cores; measured 2x (16 MB chunks) to 10x (2 MB) slower
 * than a serial im2col with OpenBLAS owning both cores, on the shared dev machine (see
 * docs/conv.md). The OpenMP code stays for machines where it pays. */
static int conv_par(void) {
    const char *e = getenv("GLAE_CONV_OMP");
    return e && atoi(e) != 0;
}

static int is_pointwise(const glae_conv2d_shape *s) { return s->kh == 1 && s->kw == 1; }
static int is_identity_1x1(const glae_conv2d_shape *s) {
    return is_pointwise(s) && s->stride_h == 1 && s->stride_w == 1 && s->pad_h == 0 &&
           s->pad_w == 0;
}

/* Rows per chunk for a column matrix of k floats per row. GLAE_CONV_CHUNK_KB overrides
 * the chunk size (a tuning knob for bench/conv.py; 64 MB at most). */
static int64_t chunk_rows(int64_t m, int64_t k) {
    int64_t bytes = CONV_CHUNK_BYTES;
    const char *env = getenv("GLAE_CONV_CHUNK_KB");
    if (env) {
        long long kb = atoll(env);
        if (kb > 0 && kb <= 65536) bytes = kb * 1024;
    }
    int64_t kk = k > 0 ? k : 1;
    int64_t rows = bytes / (int64_t)sizeof(float) / kk;
    /* tiny GEMMs are slow: take up to CONV_MIN_ROWS rows, but never past 64 MB unless a
     * single row is larger */
    if (rows < CONV_MIN_ROWS) {
        int64_t cap = (int64_t)(64u << 20) / (int64_t)sizeof(float) / kk;
        rows = cap < CONV_MIN_ROWS ? cap : CONV_MIN_ROWS;
        if (rows < 1) rows = 1;
    }
    return rows < m ? rows : m;
}

/* col[r - r0, (ki, kj, c)] = in[n, oh*sh - ph + ki, ow*sw - pw + kj, c] (0 outside),
 * for rows r in [r0, r1). Taps in a kernel row are contiguous in both col and (for
 * stride_w 1) the input, so one memcpy covers a whole kernel row there. */
static void im2col(float *col, const float *in, const glae_conv2d_shape *s, int64_t r0,
                   int64_t r1) {
    const int64_t kdim = (int64_t)s->kh * s->kw * s->c_in, cin = s->c_in;
    const int64_t rowlen = (int64_t)s->kw * cin; /* one kernel row in col */
#pragma omp parallel for schedule(static) if (conv_par() && (r1 - r0) * kdim > PAR_MIN)
    for (int64_t r = r0; r < r1; r++) {
        float *dst = col + (r - r0) * kdim;
        int64_t n = r / ((int64_t)s->oh * s->ow), p = r % ((int64_t)s->oh * s->ow);
        int oh = (int)(p / s->ow), ow = (int)(p % s->ow);
        int ih0 = oh * s->stride_h - s->pad_h, iw0 = ow * s->stride_w - s->pad_w;
        /* valid kj range: 0 <= iw0 + kj < W */
        int kj0 = iw0 < 0 ? -iw0 : 0;
        int kj1 = s->w - iw0 < s->kw ? s->w - iw0 : s->kw;
        if (kj1 < kj0) kj1 = kj0;
        for (int ki = 0; ki < s->kh; ki++, dst += rowlen) {
            int ih = ih0 + ki;
            if (ih < 0 || ih >= s->h || kj0 == kj1) {
                memset(dst, 0, (size_t)rowlen * sizeof(float));
                continue;
            }
            if (kj0 > 0) memset(dst, 0, (size_t)(kj0 * cin) * sizeof(float));
            const float *src = in + ((n * s->h + ih) * s->w + iw0) * cin;
            if (s->stride_w == 1 || s->kw == 1) {
                memcpy(dst + kj0 * cin, src + kj0 * cin, (size_t)((kj1 - kj0) * cin) * sizeof(float));
            } else if (cin >= 16) {
                for (int kj = kj0; kj < kj1; kj++)
                    memcpy(dst + kj * cin, src + kj * cin, (size_t)cin * sizeof(float));
            } else {
                /* e.g. the RGB stem: a plain loop beats many 12-byte memcpys */
                for (int64_t i = kj0 * cin; i < kj1 * cin; i++) dst[i] = src[i];
            }
            if (kj1 < s->kw)
                memset(dst + kj1 * cin, 0, (size_t)((s->kw - kj1) * cin) * sizeof(float));
        }
    }
}

/* Input pixel of output row r for a 1x1 conv, or -1 when it falls in the padding. */
static inline int64_t pointwise_src(const glae_conv2d_shape *s, int64_t r) {
    int64_t n = r / ((int64_t)s->oh * s->ow), p = r % ((int64_t)s->oh * s->ow);
    int ih = (int)(p / s->ow) * s->stride_h - s->pad_h;
    int iw = (int)(p % s->ow) * s->stride_w - s->pad_w;
    if (ih < 0 || ih >= s->h || iw < 0 || iw >= s->w) return -1;
    return (n * s->h + ih) * s->w + iw;
}

/* din[n, ih, iw, :] += sum over taps (ki, kj) landing there of dcol[r - r0, ki, kj, :],
 * restricted to output rows r in [r0, r1). Gather form: a thread owns input rows. */
static void col2im_add(float *din, const float *dcol, const glae_conv2d_shape *s, int64_t r0,
                       int64_t r1) {
    const int64_t kdim = (int64_t)s->kh * s->kw * s->c_in, cin = s->c_in;
    const int64_t per_img = (int64_t)s->oh * s->ow;
    const int64_t n0 = r0 / per_img, n1 = (r1 - 1) / per_img + 1;
    const int64_t nrows = (n1 - n0) * s->h;
#pragma omp parallel for schedule(static) if (conv_par() && (r1 - r0) * kdim > PAR_MIN)
    for (int64_t t = 0; t < nrows; t++) {
        int64_t n = n0 + t / s->h;
        int ih = (int)(t % s->h);
        float *drow = din + (n * s->h + ih) * s->w * cin;
        for (int ki = 0; ki < s->kh; ki++) {
            int u = ih + s->pad_h - ki;
            if (u < 0 || u % s->stride_h) continue;
            int oh = u / s->stride_h;
            if (oh >= s->oh) continue;
            int64_t rbase = (n * s->oh + oh) * s->ow;
            if (rbase + s->ow <= r0 || rbase >= r1) continue;
            for (int iw = 0; iw < s->w; iw++) {
                float *d = drow + iw * cin;
                for (int kj = 0; kj < s->kw; kj++) {
                    int v = iw + s->pad_w - kj;
                    if (v < 0 || v % s->stride_w) continue;
                    int ow = v / s->stride_w;
                    if (ow >= s->ow) continue;
                    int64_t r = rbase + ow;
                    if (r < r0 || r >= r1) continue;
                    const float *src = dcol + (r - r0) * kdim + ((int64_t)ki * s->kw + kj) * cin;
                    for (int64_t c = 0; c < cin; c++) d[c] += src[c];
                }
            }
        }
    }
}

static void zero_floats(float *p, int64_t n) {
    if (n <= 0) return;
    int64_t blk = 1 << 16, nb = (n + blk - 1) / blk;
#pragma omp parallel for schedule(static) if (conv_par() && n > 4 * PAR_MIN)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * blk < n ? (b + 1) * blk : n;
        memset(p + b * blk, 0, (size_t)(e - b * blk) * sizeof(float));
    }
}

int glae_conv2d_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                        const float *bias, const glae_conv2d_shape *s) {
    GLAE_TRY(check_shape(s, "conv2d_forward"));
    if (!out || !in || !weight)
        return glae_fail(GLAE_ERR_VALUE, "conv2d_forward: out, in and weight must not be NULL");
    const int64_t m = (int64_t)s->n * s->oh * s->ow;
    const int64_t kdim = (int64_t)s->kh * s->kw * s->c_in, cout = s->c_out;
    if (m == 0 || cout == 0) return GLAE_OK;
    if (kdim == 0) {
        zero_floats(out, m * cout);
    } else if (is_identity_1x1(s)) {
        /* the input already is the (M x Cin) matrix */
        glae_sgemm(0, 1, (int)m, (int)cout, (int)kdim, 1.0f, in, (int)kdim, weight, (int)kdim,
                   0.0f, out, (int)cout);
    } else {
        int64_t rows = chunk_rows(m, kdim);
        float *col = glae_ctx_scratch(ctx, (size_t)(rows * kdim));
        if (!col) return GLAE_ERR_MEMORY;
        for (int64_t r0 = 0; r0 < m; r0 += rows) {
            int64_t r1 = r0 + rows < m ? r0 + rows : m;
            if (is_pointwise(s)) {
#pragma omp parallel for schedule(static) if (conv_par() && (r1 - r0) * kdim > PAR_MIN)
                for (int64_t r = r0; r < r1; r++) {
                    int64_t src = pointwise_src(s, r);
                    float *dst = col + (r - r0) * kdim;
                    if (src < 0) memset(dst, 0, (size_t)kdim * sizeof(float));
                    else memcpy(dst, in + src * kdim, (size_t)kdim * sizeof(float));
                }
            } else {
                im2col(col, in, s, r0, r1);
            }
            glae_sgemm(0, 1, (int)(r1 - r0), (int)cout, (int)kdim, 1.0f, col, (int)kdim, weight,
                       (int)kdim, 0.0f, out + r0 * cout, (int)cout);
        }
    }
    if (bias) {
#pragma omp parallel for schedule(static) if (conv_par() && m * cout > PAR_MIN)
        for (int64_t r = 0; r < m; r++) {
            float *o = out + r * cout;
            for (int64_t c = 0; c < cout; c++) o[c] += bias[c];
        }
    }
    return GLAE_OK;
}

/* dbias[c] += sum_r dout[r, c], in double, in fixed blocks so the result does not depend
 * on the thread count. */
static int bias_grad(float *dbias, const float *dout, int64_t m, int64_t cout) {
    enum { NB = 16 };
    double *part = calloc((size_t)(NB * cout), sizeof(double));
    if (!part) return glae_fail(GLAE_ERR_MEMORY, "conv2d_backward: cannot allocate bias sums");
    int64_t per = (m + NB - 1) / NB;
#pragma omp parallel for schedule(static) if (conv_par() && m * cout > PAR_MIN)
    for (int b = 0; b < NB; b++) {
        double *acc = part + b * cout;
        int64_t e = (b + 1) * per < m ? (b + 1) * per : m;
        for (int64_t r = b * per; r < e; r++) {
            const float *g = dout + r * cout;
            for (int64_t c = 0; c < cout; c++) acc[c] += g[c];
        }
    }
    for (int64_t c = 0; c < cout; c++) {
        double sum = 0.0;
        for (int b = 0; b < NB; b++) sum += part[b * cout + c];
        dbias[c] += (float)sum;
    }
    free(part);
    return GLAE_OK;
}

int glae_conv2d_backward(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                         const float *dout, const float *in, const float *weight,
                         const glae_conv2d_shape *s) {
    GLAE_TRY(check_shape(s, "conv2d_backward"));
    if (!dout) return glae_fail(GLAE_ERR_VALUE, "conv2d_backward: dout must not be NULL");
    if (dweight && !in)
        return glae_fail(GLAE_ERR_VALUE, "conv2d_backward: dweight needs the input");
    if (din && !weight)
        return glae_fail(GLAE_ERR_VALUE, "conv2d_backward: din needs the weight");
    const int64_t m = (int64_t)s->n * s->oh * s->ow;
    const int64_t kdim = (int64_t)s->kh * s->kw * s->c_in, cout = s->c_out;
    const int64_t in_size = (int64_t)s->n * s->h * s->w * s->c_in;

    if (dbias && m > 0) GLAE_TRY(bias_grad(dbias, dout, m, cout));
    if (din && (m == 0 || cout == 0 || kdim == 0)) {
        zero_floats(din, in_size);
        din = NULL;
    }
    if ((!din && !dweight) || m == 0 || cout == 0 || kdim == 0) return GLAE_OK;

    if (is_identity_1x1(s)) {
        if (dweight) /* dW (Cout x Cin) += dout^T (Cout x M) * in (M x Cin) */
            glae_sgemm(1, 0, (int)cout, (int)kdim, (int)m, 1.0f, dout, (int)cout, in, (int)kdim,
                       1.0f, dweight, (int)kdim);
        if (din) /* din (M x Cin) = dout (M x Cout) * W (Cout x Cin) */
            glae_sgemm(0, 0, (int)m, (int)kdim, (int)cout, 1.0f, dout, (int)cout, weight,
                       (int)kdim, 0.0f, din, (int)kdim);
        return GLAE_OK;
    }

    const int pw = is_pointwise(s);
    int64_t rows = chunk_rows(m, kdim);
    float *col = glae_ctx_scratch(ctx, (size_t)(rows * kdim));
    if (!col) return GLAE_ERR_MEMORY;
    /* a 1x1 conv touches each input pixel at most once: only the untouched ones (stride
     * > 1, padding) need zeroing, but zeroing all first is simpler and cheap */
    if (din) zero_floats(din, in_size);
    for (int64_t r0 = 0; r0 < m; r0 += rows) {
        int64_t r1 = r0 + rows < m ? r0 + rows : m;
        const float *dchunk = dout + r0 * cout;
        int mc = (int)(r1 - r0);
        if (dweight) {
            if (pw) {
#pragma omp parallel for schedule(static) if (conv_par() && (r1 - r0) * kdim > PAR_MIN)
                for (int64_t r = r0; r < r1; r++) {
                    int64_t src = pointwise_src(s, r);
                    float *dst = col + (r - r0) * kdim;
                    if (src < 0) memset(dst, 0, (size_t)kdim * sizeof(float));
                    else memcpy(dst, in + src * kdim, (size_t)kdim * sizeof(float));
                }
            } else {
                im2col(col, in, s, r0, r1);
            }
            glae_sgemm(1, 0, (int)cout, (int)kdim, mc, 1.0f, dchunk, (int)cout, col, (int)kdim,
                       1.0f, dweight, (int)kdim);
        }
        if (din) {
            /* the column buffer is free again: reuse it for dcol */
            glae_sgemm(0, 0, mc, (int)kdim, (int)cout, 1.0f, dchunk, (int)cout, weight,
                       (int)kdim, 0.0f, col, (int)kdim);
            if (pw) {
#pragma omp parallel for schedule(static) if (conv_par() && (r1 - r0) * kdim > PAR_MIN)
                for (int64_t r = r0; r < r1; r++) {
                    int64_t dst = pointwise_src(s, r);
                    if (dst >= 0)
                        memcpy(din + dst * kdim, col + (r - r0) * kdim, (size_t)kdim * sizeof(float));
                }
            } else {
                col2im_add(din, col, s, r0, r1);
            }
        }
    }
    return GLAE_OK;
}
