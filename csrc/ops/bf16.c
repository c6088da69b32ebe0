/* Mixed precision on the CPU: the bf16-activation layers (ops.h, "mixed precision").
 * These are the definition of what the CUDA twins (bf16.cu, conv.cu) compute, written
 * the plain way: widen the bf16 inputs to float32, run the float32 layer of this
 * engine, round the result to bf16 once. Slow (temporaries per call) and meant for
 * checking the GPU and for tests; the fast path of mixed precision is the GPU's. */
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"

static float *widen(const glae_bf16 *x, int64_t n) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!f) return NULL;
    for (int64_t i = 0; i < n; i++) f[i] = glae_bf2f(x[i]);
    return f;
}

static void narrow(glae_bf16 *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = glae_f2bf(x[i]);
}

int glae_f32_to_bf16(glae_ctx *ctx, glae_bf16 *out, const float *in, int64_t n) {
    (void)ctx;
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "f32_to_bf16: negative size %lld", (long long)n);
    narrow(out, in, n);
    return GLAE_OK;
}

int glae_bf16_to_f32(glae_ctx *ctx, float *out, const glae_bf16 *in, int64_t n) {
    (void)ctx;
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "bf16_to_f32: negative size %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) out[i] = glae_bf2f(in[i]);
    return GLAE_OK;
}

/* up to four temporaries; free(NULL) is a no-op */
static void free4(void *a, void *b, void *c, void *d) {
    free(a);
    free(b);
    free(c);
    free(d);
}

#define OOM(fn) glae_fail(GLAE_ERR_MEMORY, "%s: out of memory", fn)

static int64_t in_numel(const glae_conv2d_shape *s) { return (int64_t)s->n * s->h * s->w * s->c_in; }
static int64_t out_numel(const glae_conv2d_shape *s) { return (int64_t)s->n * s->oh * s->ow * s->c_out; }
static int64_t w_numel(const glae_conv2d_shape *s) { return (int64_t)s->c_out * s->kh * s->kw * s->c_in; }

/* the weight as the tensor cores see it: float32 rounded to bf16 */
static float *bf16_weight(const float *w, int64_t n) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!f) return NULL;
    for (int64_t i = 0; i < n; i++) f[i] = glae_bf2f(glae_f2bf(w[i]));
    return f;
}

static int conv_shape_ok(const glae_conv2d_shape *s, const char *fn) {
    glae_conv2d_shape t;
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    GLAE_TRY(glae_conv2d_shape_init(&t, s->n, s->h, s->w, s->c_in, s->c_out, s->kh, s->kw,
                                    s->stride_h, s->stride_w, s->pad_h, s->pad_w));
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape not initialised by glae_conv2d_shape_init", fn);
    return GLAE_OK;
}

int glae_conv2d_forward_bf16(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *in,
                             const float *weight, const float *bias, const glae_conv2d_shape *s) {
    const char *fn = "conv2d_forward_bf16";
    GLAE_TRY(conv_shape_ok(s, fn));
    const int64_t ni = in_numel(s), no = out_numel(s);
    float *x = widen(in, ni), *w = bf16_weight(weight, w_numel(s));
    float *y = malloc((size_t)(no > 0 ? no : 1) * sizeof(float));
    if (!x || !w || !y) {
        free4(x, w, y, NULL);
        return OOM(fn);
    }
    int st = glae_conv2d_forward(ctx, y, x, w, NULL, s);
    if (!st) {
        for (int64_t i = 0; i < no; i++) {
            float v = glae_bf2f(glae_f2bf(y[i]));
            out[i] = glae_f2bf(bias ? v + bias[i % s->c_out] : v);
        }
    }
    free4(x, w, y, NULL);
    return st;
}

int glae_conv2d_backward_bf16(glae_ctx *ctx, glae_bf16 *din, float *dweight, float *dbias,
                              const glae_bf16 *dout, const glae_bf16 *in, const float *weight,
                              const glae_conv2d_shape *s) {
    const char *fn = "conv2d_backward_bf16";
    GLAE_TRY(conv_shape_ok(s, fn));
    const int64_t ni = in_numel(s), no = out_numel(s), nw = w_numel(s);
    float *dy = widen(dout, no), *x = dweight ? widen(in, ni) : NULL;
    float *w = din ? bf16_weight(weight, nw) : NULL;
    float *t = malloc((size_t)(ni > nw ? (ni > 0 ? ni : 1) : (nw > 0 ? nw : 1)) * sizeof(float));
    if (!dy || (dweight && !x) || (din && !w) || !t) {
        free4(dy, x, w, t);
        return OOM(fn);
    }
    int st = GLAE_OK;
    if (din) {
        st = glae_conv2d_backward(ctx, t, NULL, NULL, dy, x, w, s);
        if (!st) narrow(din, t, ni);
    }
    if (!st && (dweight || dbias)) {
        /* the weight gradient comes out of cuDNN as bf16 and is added to the float32 one */
        if (dweight) memset(t, 0, (size_t)nw * sizeof(float));
        st = glae_conv2d_backward(ctx, NULL, dweight ? t : NULL, dbias, dy, x, weight, s);
        if (!st && dweight)
            for (int64_t i = 0; i < nw; i++) dweight[i] += glae_bf2f(glae_f2bf(t[i]));
    }
    free4(dy, x, w, t);
    return st;
}

int glae_bn_act_forward_bf16(glae_ctx *ctx, glae_bf16 *out, float *save_mean,
                             float *save_invstd, const glae_bf16 *in, const glae_bf16 *residual,
                             const float *gamma, const float *beta, float *running_mean,
                             float *running_var, int64_t rows, int c, float momentum, float eps,
                             int training, int relu) {
    const char *fn = "bn_act_forward_bf16";
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    const int64_t n = rows * c;
    float *x = widen(in, n), *y = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!x || !y) {
        free4(x, y, NULL, NULL);
        return OOM(fn);
    }
    int st = glae_batchnorm_forward(ctx, y, save_mean, save_invstd, x, gamma, beta, running_mean,
                                    running_var, rows, c, momentum, eps, training);
    if (!st) {
        for (int64_t i = 0; i < n; i++) {
            float v = y[i] + (residual ? glae_bf2f(residual[i]) : 0.0f);
            if (relu && v <= 0.0f) v = 0.0f; /* a NaN passes, like torch.relu */
            out[i] = glae_f2bf(v);
        }
    }
    free4(x, y, NULL, NULL);
    return st;
}

int glae_bn_act_backward_bf16(glae_ctx *ctx, glae_bf16 *din, glae_bf16 *dres, float *dgamma,
                              float *dbeta, const glae_bf16 *dout, const glae_bf16 *out,
                              const glae_bf16 *in, const float *save_mean,
                              const float *save_invstd, const float *gamma, int64_t rows, int c,
                              int training, int relu) {
    const char *fn = "bn_act_backward_bf16";
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    if (relu && !out) return glae_fail(GLAE_ERR_VALUE, "%s: relu needs the forward's output", fn);
    const int64_t n = rows * c;
    float *g = malloc((size_t)(n > 0 ? n : 1) * sizeof(float)), *x = widen(in, n);
    float *dx = din ? malloc((size_t)(n > 0 ? n : 1) * sizeof(float)) : NULL;
    if (!g || !x || (din && !dx)) {
        free4(g, x, dx, NULL);
        return OOM(fn);
    }
    for (int64_t i = 0; i < n; i++) {
        float d = glae_bf2f(dout[i]);
        g[i] = relu && !(glae_bf2f(out[i]) > 0.0f) ? 0.0f : d;
    }
    int st = glae_batchnorm_backward(ctx, dx, dgamma, dbeta, g, x, save_mean, save_invstd, gamma,
                                     rows, c, training);
    if (!st) {
        if (dres) narrow(dres, g, n); /* exact: g holds bf16 values and zeros */
        if (din) narrow(din, dx, n);
    }
    free4(g, x, dx, NULL);
    return st;
}

int glae_add_forward_bf16(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *a, const glae_bf16 *b,
                          int64_t n) {
    (void)ctx;
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "add_forward_bf16: negative size %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) out[i] = glae_f2bf(glae_bf2f(a[i]) + glae_bf2f(b[i]));
    return GLAE_OK;
}

int glae_maxpool2d_forward_bf16(glae_ctx *ctx, glae_bf16 *out, int32_t *argmax,
                                const glae_bf16 *in, const glae_pool_shape *s) {
    const char *fn = "maxpool2d_forward_bf16";
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    const int64_t ni = (int64_t)s->n * s->h * s->w * s->c, no = (int64_t)s->n * s->oh * s->ow * s->c;
    if (ni < 0 || no < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative size", fn);
    float *x = widen(in, ni), *y = malloc((size_t)(no > 0 ? no : 1) * sizeof(float));
    if (!x || !y) {
        free4(x, y, NULL, NULL);
        return OOM(fn);
    }
    int st = glae_maxpool2d_forward(ctx, y, argmax, x, s);
    if (!st) narrow(out, y, no); /* exact: y holds inputs */
    free4(x, y, NULL, NULL);
    return st;
}

int glae_maxpool2d_backward_bf16(glae_ctx *ctx, glae_bf16 *din, const glae_bf16 *dout,
                                 const int32_t *argmax, const glae_pool_shape *s) {
    const char *fn = "maxpool2d_backward_bf16";
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    const int64_t ni = (int64_t)s->n * s->h * s->w * s->c, no = (int64_t)s->n * s->oh * s->ow * s->c;
    if (ni < 0 || no < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative size", fn);
    float *dy = widen(dout, no), *dx = malloc((size_t)(ni > 0 ? ni : 1) * sizeof(float));
    if (!dy || !dx) {
        free4(dy, dx, NULL, NULL);
        return OOM(fn);
    }
    int st = glae_maxpool2d_backward(ctx, dx, dy, argmax, s);
    if (!st) narrow(din, dx, ni);
    free4(dy, dx, NULL, NULL);
    return st;
}
