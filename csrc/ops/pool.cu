/* The CUDA twin of pool.c: max and average pooling, float32 and bf16. Same signatures with
 * `_cuda`, same semantics (the CPU file is the definition). */
#include "ops/kernels.cuh"
#include "ops/check.h" /* after kernels.cuh: its C headers are already extern "C" there */

/* ---- pooling ------------------------------------------------------------------------- */

/* one thread per output element (n, oy, ox, c): consecutive threads read consecutive c */
template <typename T>
__global__ static void maxpool_fwd_k(T *out, int32_t *argmax, const T *in, glae_pool_shape s,
                                     int64_t total) {
    GLAE_FOR(i, total) {
        const int ch = (int)(i % s.c);
        int64_t t = i / s.c;
        const int ox = (int)(t % s.ow);
        t /= s.ow;
        const int oy = (int)(t % s.oh);
        const int64_t n = t / s.oh;
        int y0 = oy * s.stride - s.pad, y1 = y0 + s.k, x0 = ox * s.stride - s.pad, x1 = x0 + s.k;
        y0 = y0 < 0 ? 0 : y0;
        y1 = y1 > s.h ? s.h : y1;
        x0 = x0 < 0 ? 0 : x0;
        x1 = x1 > s.w ? s.w : x1;
        const T *img = in + n * s.h * s.w * s.c + ch;
        float best = -INFINITY;
        int32_t arg = y0 * s.w + x0; /* padding is -inf: the first real element */
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++) {
                const float v = (float)img[((int64_t)y * s.w + x) * s.c];
                if (v > best || isnan(v)) { /* first of tied maxima; NaN wins (PyTorch) */
                    best = v;
                    arg = y * s.w + x;
                }
            }
        out[i] = (T)best; /* exact for bf16: best is one of the inputs */
        argmax[i] = arg;
    }
}

/* gather form of the backward (no atomics, fixed order): each input element sums dout
 * over the windows that contain it and chose it */
template <typename T>
__global__ static void maxpool_bwd_k(T *din, const T *dout, const int32_t *argmax,
                                     glae_pool_shape s, int64_t total) {
    GLAE_FOR(i, total) {
        const int ch = (int)(i % s.c);
        int64_t t = i / s.c;
        const int x = (int)(t % s.w);
        t /= s.w;
        const int y = (int)(t % s.h);
        const int64_t n = t / s.h;
        const int32_t me = y * s.w + x;
        /* windows oy with oy*stride - pad <= y < oy*stride - pad + k */
        int oy0 = y + s.pad - s.k + 1;
        oy0 = oy0 <= 0 ? 0 : (oy0 + s.stride - 1) / s.stride;
        int oy1 = (y + s.pad) / s.stride;
        oy1 = oy1 >= s.oh ? s.oh - 1 : oy1;
        int ox0 = x + s.pad - s.k + 1;
        ox0 = ox0 <= 0 ? 0 : (ox0 + s.stride - 1) / s.stride;
        int ox1 = (x + s.pad) / s.stride;
        ox1 = ox1 >= s.ow ? s.ow - 1 : ox1;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                const int64_t o = ((n * s.oh + oy) * s.ow + ox) * s.c + ch;
                if (argmax[o] == me) acc += (float)dout[o];
            }
        din[i] = (T)acc;
    }
}

extern "C" int glae_maxpool2d_forward_cuda(glae_ctx *ctx, float *out, int32_t *argmax,
                                           const float *in, const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_forward_cuda", st);
    GLAE_TRY(glae_check_pool_shape("maxpool2d_forward_cuda", s));
    const int64_t total = (int64_t)s->n * s->oh * s->ow * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, argmax, in, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_maxpool2d_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                            const int32_t *argmax, const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_backward_cuda", st);
    GLAE_TRY(glae_check_pool_shape("maxpool2d_backward_cuda", s));
    const int64_t total = (int64_t)s->n * s->h * s->w * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, argmax, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* bf16 activations (ops.h, mixed precision): the same kernels on __nv_bfloat16 */
extern "C" int glae_maxpool2d_forward_bf16_cuda(glae_ctx *ctx, glae_bf16 *out, int32_t *argmax,
                                                const glae_bf16 *in, const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_forward_bf16_cuda", st);
    GLAE_TRY(glae_check_pool_shape("maxpool2d_forward_bf16_cuda", s));
    const int64_t total = (int64_t)s->n * s->oh * s->ow * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(
        (__nv_bfloat16 *)out, argmax, (const __nv_bfloat16 *)in, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_maxpool2d_backward_bf16_cuda(glae_ctx *ctx, glae_bf16 *din,
                                                 const glae_bf16 *dout, const int32_t *argmax,
                                                 const glae_pool_shape *s) {
    GLAE_STREAM(ctx, "maxpool2d_backward_bf16_cuda", st);
    GLAE_TRY(glae_check_pool_shape("maxpool2d_backward_bf16_cuda", s));
    const int64_t total = (int64_t)s->n * s->h * s->w * s->c;
    if (total == 0) return GLAE_OK;
    maxpool_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(
        (__nv_bfloat16 *)din, (const __nv_bfloat16 *)dout, argmax, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

__global__ static void avgpool_fwd_k(float *out, const float *in, int n, int hw, int c) {
    GLAE_FOR(i, (int64_t)n * c) {
        const int64_t img = i / c;
        const int j = (int)(i % c);
        const float *x = in + img * hw * c + j;
        double acc = 0.0;
        for (int p = 0; p < hw; p++) acc += x[(int64_t)p * c];
        out[i] = (float)(acc / hw);
    }
}
__global__ static void avgpool_bwd_k(float *din, const float *dout, int64_t total, int hw, int c,
                                     float fhw) {
    GLAE_FOR(i, total) {
        const int j = (int)(i % c);
        const int64_t img = i / ((int64_t)hw * c);
        din[i] = dout[img * c + j] / fhw; /* PyTorch divides */
    }
}

extern "C" int glae_avgpool_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n, int hw,
                                         int c) {
    GLAE_STREAM(ctx, "avgpool_forward_cuda", st);
    GLAE_TRY(glae_check_avgpool("avgpool_forward_cuda", n, hw, c, 1));
    if ((int64_t)n * c == 0) return GLAE_OK;
    avgpool_fwd_k<<<glae_grid((int64_t)n * c), GLAE_BLOCK, 0, st>>>(out, in, n, hw, c);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_avgpool_backward_cuda(glae_ctx *ctx, float *din, const float *dout, int n,
                                          int hw, int c) {
    GLAE_STREAM(ctx, "avgpool_backward_cuda", st);
    GLAE_TRY(glae_check_avgpool("avgpool_backward_cuda", n, hw, c, 0));
    const int64_t total = (int64_t)n * hw * c;
    if (total == 0) return GLAE_OK;
    avgpool_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, total, hw, c, (float)hw);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
