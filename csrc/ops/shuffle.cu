/* The CUDA twin of shuffle.c: pixel shuffle. Same signatures with `_cuda`, same semantics
 * (the CPU file is the definition). */
#include "ops/kernels.cuh"

/* ---- pixel shuffle (PyTorch order, NHWC storage; see shuffle.c) ------------------------ */

/* out (N, H r, W r, C) <- in (N, H, W, C r^2): one thread per output element */
__global__ static void shuffle_fwd_k(float *out, const float *in, int64_t total, int h, int w,
                                     int c, int r) {
    const int ow = w * r, oh = h * r, cin = c * r * r;
    GLAE_FOR(o, total) {
        const int k = (int)(o % c);
        int64_t t = o / c;
        const int X = (int)(t % ow);
        t /= ow;
        const int Y = (int)(t % oh);
        const int64_t n = t / oh;
        const int y = Y / r, i = Y % r, x = X / r, j = X % r;
        out[o] = in[((n * h + y) * w + x) * cin + (int64_t)k * r * r + i * r + j];
    }
}
/* din (N, H, W, C r^2) <- dout (N, H r, W r, C): one thread per input element */
__global__ static void shuffle_bwd_k(float *din, const float *dout, int64_t total, int h, int w,
                                     int c, int r) {
    const int ow = w * r, cin = c * r * r;
    GLAE_FOR(q, total) {
        const int ci = (int)(q % cin);
        int64_t t = q / cin;
        const int x = (int)(t % w);
        t /= w;
        const int y = (int)(t % h);
        const int64_t n = t / h;
        const int k = ci / (r * r), i = (ci / r) % r, j = ci % r;
        din[q] = dout[((n * h * r + (int64_t)y * r + i) * ow + (int64_t)x * r + j) * c + k];
    }
}

static int shuffle_sizes(const char *fn, int n, int h, int w, int c_in, int r) {
    if (n < 0 || h < 0 || w < 0 || c_in < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %d, %d, %d)", fn, n, h, w, c_in);
    if (r < 1) return glae_fail(GLAE_ERR_VALUE, "%s: upscale factor must be >= 1, got %d", fn, r);
    if (c_in % (r * r) != 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: channels %d not divisible by r*r = %d", fn, c_in, r * r);
    return GLAE_OK;
}

extern "C" int glae_pixel_shuffle_forward_cuda(glae_ctx *ctx, float *out, const float *in, int n,
                                               int h, int w, int c_in, int r) {
    GLAE_STREAM(ctx, "pixel_shuffle_forward_cuda", st);
    GLAE_TRY(shuffle_sizes("pixel_shuffle_forward_cuda", n, h, w, c_in, r));
    const int64_t total = (int64_t)n * h * w * c_in;
    if (total == 0) return GLAE_OK;
    shuffle_fwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(out, in, total, h, w, c_in / (r * r), r);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_pixel_shuffle_backward_cuda(glae_ctx *ctx, float *din, const float *dout,
                                                int n, int h, int w, int c_in, int r) {
    GLAE_STREAM(ctx, "pixel_shuffle_backward_cuda", st);
    GLAE_TRY(shuffle_sizes("pixel_shuffle_backward_cuda", n, h, w, c_in, r));
    const int64_t total = (int64_t)n * h * w * c_in;
    if (total == 0) return GLAE_OK;
    shuffle_bwd_k<<<glae_grid(total), GLAE_BLOCK, 0, st>>>(din, dout, total, h, w, c_in / (r * r), r);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
