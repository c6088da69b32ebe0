/* The CUDA twin of dwconv.c: depthwise convolution with direct kernels, one thread per
 * output (forward), per input (the input gradient: a gather, no atomics) and per (tap,
 * channel) (the weight gradient, summed in double in a fixed order). Deterministic. The
 * cuDNN grouped-convolution path is the faster alternative for large maps (docs/conv.md). */
#include "ops/kernels.cuh"
#include "ops/check.h" /* after kernels.cuh: its C headers are already extern "C" there */

__global__ static void dw_fwd_k(float *out, const float *in, const float *wt, const float *bias,
                                glae_conv2d_shape s, int64_t total) {
    const int C = s.c_in, KK = s.kh * s.kw;
    GLAE_FOR(i, total) {
        const int j = (int)(i % C);
        const int64_t p = i / C;
        const int ox = (int)(p % s.ow), oy = (int)((p / s.ow) % s.oh);
        const int64_t n = p / ((int64_t)s.ow * s.oh);
        float acc = bias ? bias[j] : 0.0f;
        for (int ky = 0; ky < s.kh; ky++) {
            const int iy = oy * s.stride_h - s.pad_h + ky;
            if (iy < 0 || iy >= s.h) continue;
            for (int kx = 0; kx < s.kw; kx++) {
                const int ix = ox * s.stride_w - s.pad_w + kx;
                if (ix < 0 || ix >= s.w) continue;
                acc += in[((n * s.h + iy) * s.w + ix) * C + j] * wt[(int64_t)j * KK + ky * s.kw + kx];
            }
        }
        out[i] = acc;
    }
}

/* din[n, iy, ix, j]: the outputs whose window holds (iy, ix), in the CPU's tap order */
__global__ static void dw_din_k(float *din, const float *dout, const float *wt,
                                glae_conv2d_shape s, int64_t total) {
    const int C = s.c_in, KK = s.kh * s.kw;
    GLAE_FOR(i, total) {
        const int j = (int)(i % C);
        const int64_t p = i / C;
        const int ix = (int)(p % s.w), iy = (int)((p / s.w) % s.h);
        const int64_t n = p / ((int64_t)s.w * s.h);
        float acc = 0.0f;
        for (int ky = 0; ky < s.kh; ky++) {
            const int ty = iy + s.pad_h - ky;
            if (ty < 0 || ty % s.stride_h) continue;
            const int oy = ty / s.stride_h;
            if (oy >= s.oh) continue;
            for (int kx = 0; kx < s.kw; kx++) {
                const int tx = ix + s.pad_w - kx;
                if (tx < 0 || tx % s.stride_w) continue;
                const int ox = tx / s.stride_w;
                if (ox >= s.ow) continue;
                acc += dout[((n * s.oh + oy) * s.ow + ox) * C + j] * wt[(int64_t)j * KK + ky * s.kw + kx];
            }
        }
        din[i] = acc;
    }
}

/* dweight[j, k] += sum over every output pixel; dbias[j] += sum of dout (k == KK) */
__global__ static void dw_dw_k(float *dweight, float *dbias, const float *dout, const float *in,
                               glae_conv2d_shape s) {
    const int C = s.c_in, KK = s.kh * s.kw;
    const int64_t total = (int64_t)(KK + 1) * C;
    GLAE_FOR(i, total) {
        const int j = (int)(i % C), k = (int)(i / C);
        if (k == KK && !dbias) continue;
        if (k < KK && !dweight) continue;
        const int ky = k < KK ? k / s.kw : 0, kx = k < KK ? k % s.kw : 0;
        double acc = 0.0;
        for (int64_t n = 0; n < s.n; n++)
            for (int oy = 0; oy < s.oh; oy++) {
                const int iy = oy * s.stride_h - s.pad_h + ky;
                if (k < KK && (iy < 0 || iy >= s.h)) continue;
                for (int ox = 0; ox < s.ow; ox++) {
                    const float g = dout[((n * s.oh + oy) * s.ow + ox) * C + j];
                    if (k == KK) {
                        acc += g;
                        continue;
                    }
                    const int ix = ox * s.stride_w - s.pad_w + kx;
                    if (ix < 0 || ix >= s.w) continue;
                    acc += (double)g * in[((n * s.h + iy) * s.w + ix) * C + j];
                }
            }
        if (k == KK) dbias[j] += (float)acc;
        else dweight[(int64_t)j * KK + k] += (float)acc;
    }
}

extern "C" int glae_dwconv2d_forward_cuda(glae_ctx *ctx, float *out, const float *in,
                                          const float *weight, const float *bias,
                                          const glae_conv2d_shape *s) {
    GLAE_STREAM(ctx, "dwconv2d_forward_cuda", st);
    GLAE_TRY(glae_check_dwconv("dwconv2d_forward_cuda", s));
    const int64_t total = (int64_t)s->n * s->oh * s->ow * s->c_in;
    if (total == 0) return GLAE_OK;
    dw_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, weight, bias, *s, total);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_dwconv2d_backward_cuda(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                                           const float *dout, const float *in, const float *weight,
                                           const glae_conv2d_shape *s) {
    GLAE_STREAM(ctx, "dwconv2d_backward_cuda", st);
    GLAE_TRY(glae_check_dwconv("dwconv2d_backward_cuda", s));
    const int64_t ni = (int64_t)s->n * s->h * s->w * s->c_in;
    if (din && ni > 0) {
        dw_din_k<<<glae_grid(ni), GLAE_BLOCK, 0, st>>>(din, dout, weight, *s, ni);
        GLAE_LAUNCHED();
    }
    const int64_t taps = (int64_t)(s->kh * s->kw + 1) * s->c_in;
    if ((dweight || dbias) && taps > 0 && (int64_t)s->n * s->oh * s->ow > 0) {
        dw_dw_k<<<glae_grid(taps), GLAE_BLOCK, 0, st>>>(dweight, dbias, dout, in, *s);
        GLAE_LAUNCHED();
    }
    return GLAE_OK;
}
