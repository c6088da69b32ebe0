/* Max pool 2d (PyTorch semantics: padding is -inf, ties go to the first maximum in scan
 * order, NaN propagates) and global average pool, on NHWC activations. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/check.h"
#include "ops/ops.h"

/* PyTorch's pooling_output_shape (dilation 1):
 *   out = floor_or_ceil((in + 2*pad - k) / stride) + 1
 * and in ceil mode the last window must start inside the input or the left padding:
 *   if ((out - 1) * stride >= in + pad) out--.                                         */
static int64_t pool_out(int64_t in, int k, int stride, int pad, int ceil_mode) {
    int64_t num = in + 2 * (int64_t)pad - k + (ceil_mode ? stride - 1 : 0);
    /* floor division (num may be negative when the window does not fit) */
    int64_t q = num >= 0 ? num / stride : -((-num + stride - 1) / stride);
    int64_t out = q + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) out--;
    return out;
}

int glae_pool_shape_init(glae_pool_shape *s, int n, int h, int w, int c, int k, int stride,
                         int pad, int ceil_mode) {
    if (n < 0 || h < 0 || w < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "maxpool2d: negative size (%d, %d, %d, %d)", n, h, w, c);
    if (k < 1) return glae_fail(GLAE_ERR_VALUE, "maxpool2d: kernel size must be >= 1, got %d", k);
    if (stride < 1) return glae_fail(GLAE_ERR_VALUE, "maxpool2d: stride must be >= 1, got %d", stride);
    if (pad < 0) return glae_fail(GLAE_ERR_VALUE, "maxpool2d: pad must be >= 0, got %d", pad);
    /* PyTorch: "pad should be at most half of effective kernel size"; it also guarantees
     * that every window holds at least one input element */
    if (pad > k / 2)
        return glae_fail(GLAE_ERR_VALUE, "maxpool2d: pad must be at most half the kernel size (%d), got %d",
                         k / 2, pad);
    int64_t oh = pool_out(h, k, stride, pad, ceil_mode != 0);
    int64_t ow = pool_out(w, k, stride, pad, ceil_mode != 0);
    if (oh < 1 || ow < 1 || oh > INT32_MAX || ow > INT32_MAX)
        return glae_fail(GLAE_ERR_VALUE,
                         "maxpool2d: output size %lldx%lld is invalid for input %dx%d, kernel %d, "
                         "stride %d, pad %d", (long long)oh, (long long)ow, h, w, k, stride, pad);
    if ((int64_t)h * w > INT32_MAX)
        return glae_fail(GLAE_ERR_VALUE, "maxpool2d: H*W = %lld does not fit the int32 argmax",
                         (long long)h * w);
    s->n = n; s->h = h; s->w = w; s->c = c; s->k = k; s->stride = stride; s->pad = pad;
    s->ceil_mode = ceil_mode != 0;
    s->oh = (int)oh;
    s->ow = (int)ow;
    return GLAE_OK;
}

int glae_maxpool2d_forward(glae_ctx *ctx, float *out, int32_t *argmax, const float *in,
                           const glae_pool_shape *s) {
    (void)ctx;
    GLAE_TRY(glae_check_pool_shape("maxpool2d_forward", s));
    const int H = s->h, W = s->w, C = s->c, OH = s->oh, OW = s->ow;
    const int64_t rows = (int64_t)s->n * OH;
#pragma omp parallel for schedule(static) if (rows * OW * C * s->k * s->k > 65536)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t n = row / OH;
        const int oy = (int)(row % OH);
        const float *img = in + n * H * W * C;
        int y0 = oy * s->stride - s->pad, y1 = y0 + s->k;
        if (y0 < 0) y0 = 0;
        if (y1 > H) y1 = H;
        for (int ox = 0; ox < OW; ox++) {
            int x0 = ox * s->stride - s->pad, x1 = x0 + s->k;
            if (x0 < 0) x0 = 0;
            if (x1 > W) x1 = W;
            float *o = out + (row * OW + ox) * C;
            int32_t *a = argmax + (row * OW + ox) * C;
            /* padding is -inf: start from the first real element of the window */
            const int32_t first = y0 * W + x0;
            for (int c = 0; c < C; c++) {
                o[c] = -INFINITY;
                a[c] = first;
            }
            for (int y = y0; y < y1; y++)
                for (int x = x0; x < x1; x++) {
                    const float *p = img + ((int64_t)y * W + x) * C;
                    const int32_t idx = y * W + x;
                    for (int c = 0; c < C; c++) {
                        /* strict > keeps the first of tied maxima; NaN wins (PyTorch) */
                        if (p[c] > o[c] || isnan(p[c])) {
                            o[c] = p[c];
                            a[c] = idx;
                        }
                    }
                }
        }
    }
    return GLAE_OK;
}

int glae_maxpool2d_backward(glae_ctx *ctx, float *din, const float *dout, const int32_t *argmax,
                            const glae_pool_shape *s) {
    (void)ctx;
    GLAE_TRY(glae_check_pool_shape("maxpool2d_backward", s));
    const int C = s->c;
    const int64_t hw = (int64_t)s->h * s->w, ohw = (int64_t)s->oh * s->ow;
    int bad = 0;
    /* images are independent: scatter-add within one image per iteration */
#pragma omp parallel for schedule(static) reduction(| : bad) if (s->n > 1 && ohw * C > 4096)
    for (int n = 0; n < s->n; n++) {
        float *d = din + n * hw * C;
        memset(d, 0, sizeof(float) * (size_t)(hw * C));
        const float *g = dout + n * ohw * C;
        const int32_t *a = argmax + n * ohw * C;
        for (int64_t p = 0; p < ohw; p++)
            for (int c = 0; c < C; c++) {
                int32_t i = a[p * C + c];
                if (i < 0 || i >= hw) {
                    bad = 1;
                    continue;
                }
                d[(int64_t)i * C + c] += g[p * C + c];
            }
    }
    if (bad) return glae_fail(GLAE_ERR_VALUE, "maxpool2d_backward: argmax holds an index outside [0, H*W)");
    return GLAE_OK;
}

int glae_avgpool_forward(glae_ctx *ctx, float *out, const float *in, int n, int hw, int c) {
    (void)ctx;
    GLAE_TRY(glae_check_avgpool("avgpool_forward", n, hw, c, 1));
    if ((int64_t)n * c == 0) return GLAE_OK;
    int oom = 0;
    /* rows of C are contiguous: sum row after row into a per-image double accumulator */
#pragma omp parallel for schedule(static) reduction(| : oom) if ((int64_t)n * hw * c > 65536)
    for (int i = 0; i < n; i++) {
        double *acc = calloc((size_t)c, sizeof(double));
        if (!acc) {
            oom = 1;
            continue;
        }
        const float *x = in + (int64_t)i * hw * c;
        for (int p = 0; p < hw; p++)
            for (int j = 0; j < c; j++) acc[j] += x[(int64_t)p * c + j];
        float *o = out + (int64_t)i * c;
        for (int j = 0; j < c; j++) o[j] = (float)(acc[j] / hw);
        free(acc);
    }
    if (oom) return glae_fail(GLAE_ERR_MEMORY, "avgpool_forward: out of memory");
    return GLAE_OK;
}

int glae_avgpool_backward(glae_ctx *ctx, float *din, const float *dout, int n, int hw, int c) {
    (void)ctx;
    GLAE_TRY(glae_check_avgpool("avgpool_backward", n, hw, c, 0));
    if (hw == 0) return GLAE_OK;
    const float fhw = (float)hw;
#pragma omp parallel for schedule(static) if ((int64_t)n * hw * c > 65536)
    for (int i = 0; i < n; i++) {
        const float *g = dout + (int64_t)i * c;
        float *d = din + (int64_t)i * hw * c;
        for (int p = 0; p < hw; p++)
            for (int j = 0; j < c; j++) d[(int64_t)p * c + j] = g[j] / fhw; /* PyTorch divides */
    }
    return GLAE_OK;
}
