/* Pixel shuffle, PyTorch PixelShuffle(r) on the logical NCHW tensor:
 *   out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]
 * stored NHWC: in (N, H, W, C*r*r) -> out (N, H*r, W*r, C). It is a pure permutation, so
 * the backward is the inverse gather (no accumulation). */
#include "ops/ops.h"

static int check_sizes(const char *fn, int n, int h, int w, int c_in, int r) {
    if (n < 0 || h < 0 || w < 0 || c_in < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %d, %d, %d)", fn, n, h, w, c_in);
    if (r < 1) return glae_fail(GLAE_ERR_VALUE, "%s: upscale factor must be >= 1, got %d", fn, r);
    if (c_in % (r * r) != 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: channels %d not divisible by r*r = %d", fn, c_in,
                         r * r);
    return GLAE_OK;
}

/* in (N, H, W, C*r*r) <-> out (N, H*r, W*r, C); dir = 0: out = shuffle(in), 1: in = unshuffle(out) */
static void shuffle(float *out, float *in, int n, int h, int w, int c_in, int r, int dir) {
    const int c = c_in / (r * r), ow = w * r;
    const int64_t rows = (int64_t)n * h;
#pragma omp parallel for schedule(static) if (rows * w * c_in > 65536)
    for (int64_t row = 0; row < rows; row++) { /* (n, h) */
        const int64_t nn = row / h, y = row % h;
        for (int x = 0; x < w; x++) {
            float *src = in + (row * w + x) * c_in;
            for (int i = 0; i < r; i++)
                for (int j = 0; j < r; j++) {
                    float *dst = out + ((nn * h * r + y * r + i) * ow + (int64_t)x * r + j) * c;
                    const int off = i * r + j;
                    if (dir == 0)
                        for (int k = 0; k < c; k++) dst[k] = src[k * r * r + off];
                    else
                        for (int k = 0; k < c; k++) src[k * r * r + off] = dst[k];
                }
        }
    }
}

int glae_pixel_shuffle_forward(glae_ctx *ctx, float *out, const float *in, int n, int h, int w,
                               int c_in, int r) {
    (void)ctx;
    GLAE_TRY(check_sizes("pixel_shuffle_forward", n, h, w, c_in, r));
    shuffle(out, (float *)in, n, h, w, c_in, r, 0); /* dir 0 only reads in */
    return GLAE_OK;
}

int glae_pixel_shuffle_backward(glae_ctx *ctx, float *din, const float *dout, int n, int h,
                                int w, int c_in, int r) {
    (void)ctx;
    GLAE_TRY(check_sizes("pixel_shuffle_backward", n, h, w, c_in, r));
    shuffle((float *)dout, din, n, h, w, c_in, r, 1); /* dir 1 only reads dout */
    return GLAE_OK;
}
