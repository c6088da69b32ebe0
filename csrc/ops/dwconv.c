/* Depthwise convolution, the readable reference (dwconv.h). */
#include "ops/dwconv.h"

#include <stdlib.h>
#include <string.h>

#include "ops/check.h"

/* the weight (C, KH*KW) turned to (KH*KW, C): one contiguous channel row per tap */
static float *taps_of(const float *weight, int c, int kk) {
    float *t = malloc((size_t)(kk > 0 ? kk : 1) * (size_t)(c > 0 ? c : 1) * sizeof(float));
    if (!t) return NULL;
    for (int j = 0; j < c; j++)
        for (int k = 0; k < kk; k++) t[(size_t)k * c + j] = weight[(size_t)j * kk + k];
    return t;
}

int glae_dwconv2d_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                          const float *bias, const glae_conv2d_shape *s) {
    (void)ctx;
    GLAE_TRY(glae_check_dwconv("dwconv2d_forward", s));
    const int C = s->c_in, KK = s->kh * s->kw;
    const int64_t rows = (int64_t)s->n * s->oh;
    if (rows * s->ow * C == 0) return GLAE_OK;
    float *taps = taps_of(weight, C, KK);
    if (!taps) return glae_fail(GLAE_ERR_MEMORY, "dwconv2d_forward: out of memory");
#pragma omp parallel for schedule(static) if (rows * s->ow * C * KK > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const int n = (int)(r / s->oh), oy = (int)(r % s->oh);
        for (int ox = 0; ox < s->ow; ox++) {
            float *o = out + (r * s->ow + ox) * C;
            for (int j = 0; j < C; j++) o[j] = bias ? bias[j] : 0.0f;
            for (int ky = 0; ky < s->kh; ky++) {
                const int iy = oy * s->stride_h - s->pad_h + ky;
                if (iy < 0 || iy >= s->h) continue;
                for (int kx = 0; kx < s->kw; kx++) {
                    const int ix = ox * s->stride_w - s->pad_w + kx;
                    if (ix < 0 || ix >= s->w) continue;
                    const float *x = in + (((int64_t)n * s->h + iy) * s->w + ix) * C;
                    const float *t = taps + (size_t)(ky * s->kw + kx) * C;
                    for (int j = 0; j < C; j++) o[j] += x[j] * t[j];
                }
            }
        }
    }
    free(taps);
    return GLAE_OK;
}

/* din: each image by itself (no two images share an input pixel), the output pixels in
 * order, so the sums do not depend on the thread count */
static void input_grad(float *din, const float *dout, const float *taps,
                       const glae_conv2d_shape *s) {
    const int C = s->c_in;
#pragma omp parallel for schedule(static) if ((int64_t)s->n * s->oh * s->ow * C > 65536)
    for (int n = 0; n < s->n; n++) {
        float *dx = din + (int64_t)n * s->h * s->w * C;
        memset(dx, 0, (size_t)s->h * s->w * C * sizeof(float));
        for (int oy = 0; oy < s->oh; oy++)
            for (int ox = 0; ox < s->ow; ox++) {
                const float *g = dout + (((int64_t)n * s->oh + oy) * s->ow + ox) * C;
                for (int ky = 0; ky < s->kh; ky++) {
                    const int iy = oy * s->stride_h - s->pad_h + ky;
                    if (iy < 0 || iy >= s->h) continue;
                    for (int kx = 0; kx < s->kw; kx++) {
                        const int ix = ox * s->stride_w - s->pad_w + kx;
                        if (ix < 0 || ix >= s->w) continue;
                        float *d = dx + ((int64_t)iy * s->w + ix) * C;
                        const float *t = taps + (size_t)(ky * s->kw + kx) * C;
                        for (int j = 0; j < C; j++) d[j] += g[j] * t[j];
                    }
                }
            }
    }
}

/* dweight: one tap per task, summed over every output pixel in order in double, so the
 * result does not depend on the thread count */
static int weight_grad(float *dweight, const float *dout, const float *in,
                       const glae_conv2d_shape *s) {
    const int C = s->c_in, KK = s->kh * s->kw;
    int oom = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : oom) if ((int64_t)s->n * s->oh * s->ow * C > 65536)
    for (int k = 0; k < KK; k++) {
        double *acc = calloc((size_t)(C > 0 ? C : 1), sizeof(double));
        if (!acc) {
            oom = 1;
            continue;
        }
        const int ky = k / s->kw, kx = k % s->kw;
        for (int n = 0; n < s->n; n++)
            for (int oy = 0; oy < s->oh; oy++) {
                const int iy = oy * s->stride_h - s->pad_h + ky;
                if (iy < 0 || iy >= s->h) continue;
                for (int ox = 0; ox < s->ow; ox++) {
                    const int ix = ox * s->stride_w - s->pad_w + kx;
                    if (ix < 0 || ix >= s->w) continue;
                    const float *g = dout + (((int64_t)n * s->oh + oy) * s->ow + ox) * C;
                    const float *x = in + (((int64_t)n * s->h + iy) * s->w + ix) * C;
                    for (int j = 0; j < C; j++) acc[j] += (double)g[j] * x[j];
                }
            }
        for (int j = 0; j < C; j++) dweight[(size_t)j * KK + k] += (float)acc[j];
        free(acc);
    }
    return oom ? glae_fail(GLAE_ERR_MEMORY, "dwconv2d_backward: out of memory") : GLAE_OK;
}

int glae_dwconv2d_backward(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                           const float *dout, const float *in, const float *weight,
                           const glae_conv2d_shape *s) {
    (void)ctx;
    GLAE_TRY(glae_check_dwconv("dwconv2d_backward", s));
    const int C = s->c_in;
    const int64_t pix = (int64_t)s->n * s->oh * s->ow;
    if (din) {
        if ((int64_t)s->n * s->h * s->w * C == 0) {
            /* nothing to write */
        } else if (pix == 0) {
            memset(din, 0, (size_t)s->n * s->h * s->w * C * sizeof(float));
        } else {
            float *taps = taps_of(weight, C, s->kh * s->kw);
            if (!taps) return glae_fail(GLAE_ERR_MEMORY, "dwconv2d_backward: out of memory");
            input_grad(din, dout, taps, s);
            free(taps);
        }
    }
    if (dweight && pix * C > 0) GLAE_TRY(weight_grad(dweight, dout, in, s));
    if (dbias && pix * C > 0) {
        double *acc = calloc((size_t)C, sizeof(double));
        if (!acc) return glae_fail(GLAE_ERR_MEMORY, "dwconv2d_backward: out of memory");
        for (int64_t p = 0; p < pix; p++)
            for (int j = 0; j < C; j++) acc[j] += dout[p * C + j];
        for (int j = 0; j < C; j++) dbias[j] += (float)acc[j];
        free(acc);
    }
    return GLAE_OK;
}
