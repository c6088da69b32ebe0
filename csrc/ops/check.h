/* The argument checks an op and its CUDA twin share: one rule and one message for both
 * devices (the name passed in says which one failed). Plain C, static inline, so the .c
 * reference and the .cu twin include the same text. Checks that need the data itself
 * (a NaN age, an argmax outside the image) stay on the CPU side: on a GPU they would cost
 * a device-to-host round trip. */
#ifndef GLAE_OPS_CHECK_H
#define GLAE_OPS_CHECK_H

#include <math.h>
#include <stdint.h>

#include "core/status.h"
#include "ops/loss.h"
#include "ops/ops.h"

/* batch norm (norm, bf16's bn_act): sizes, eps, momentum, and what each mode needs */
static inline int glae_check_batchnorm(const char *fn, int64_t rows, int c, float momentum,
                                       float eps, int training, const float *running_mean,
                                       const float *running_var) {
    if (rows < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (rows %lld, c %d)", fn, (long long)rows, c);
    if (!(eps >= 0.0f) || !isfinite(eps))
        return glae_fail(GLAE_ERR_VALUE, "%s: eps must be finite and >= 0, got %g", fn, (double)eps);
    if (!isfinite(momentum))
        return glae_fail(GLAE_ERR_VALUE, "%s: momentum must be finite, got %g", fn, (double)momentum);
    if (training && rows < 2 && c > 0) /* PyTorch: "Expected more than 1 value per channel" */
        return glae_fail(GLAE_ERR_VALUE, "%s: training needs more than 1 value per channel, got %lld",
                         fn, (long long)rows);
    if (!training && (!running_mean || !running_var))
        return glae_fail(GLAE_ERR_VALUE, "%s: eval mode needs running statistics", fn);
    return GLAE_OK;
}

/* ghost batch norm: a positive group size, and no group of a single row in training
 * (its variance would be 0 and the unbiased one undefined) */
static inline int glae_check_ghost(const char *fn, int64_t rows, int64_t group_rows, int training) {
    if (group_rows < 1)
        return glae_fail(GLAE_ERR_VALUE, "%s: group_rows must be >= 1, got %lld", fn,
                         (long long)group_rows);
    if (training && rows > group_rows && rows % group_rows == 1)
        return glae_fail(GLAE_ERR_VALUE,
                         "%s: the last group would have 1 row (rows %lld, group_rows %lld): "
                         "training needs more than 1 value per channel", fn, (long long)rows,
                         (long long)group_rows);
    return GLAE_OK;
}

/* a pool shape made by glae_pool_shape_init (max pool, float32 and bf16) */
static inline int glae_check_pool_shape(const char *fn, const glae_pool_shape *s) {
    glae_pool_shape t;
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    GLAE_TRY(glae_pool_shape_init(&t, s->n, s->h, s->w, s->c, s->k, s->stride, s->pad, s->ceil_mode));
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape not initialised by glae_pool_shape_init", fn);
    return GLAE_OK;
}

/* global average pool over hw positions; forward: an empty window has no mean */
static inline int glae_check_avgpool(const char *fn, int n, int hw, int c, int forward) {
    if (n < 0 || hw < 0 || c < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: negative size (%d, %d, %d)", fn, n, hw, c);
    if (forward && hw == 0 && (int64_t)n * c > 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: cannot average over zero positions", fn);
    return GLAE_OK;
}

/* the LDL loss: rows of K classes, `group` rows per target, a known mode */
static inline int glae_check_ldl_loss(const char *fn, int64_t rows, int group, int k, int mode,
                                      float lambda, float mae) {
    if (rows < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative rows %lld", fn, (long long)rows);
    if (k < 1) return glae_fail(GLAE_ERR_VALUE, "%s: number of classes must be >= 1, got %d", fn, k);
    if (group < 1) return glae_fail(GLAE_ERR_VALUE, "%s: group must be >= 1, got %d", fn, group);
    if (rows % group)
        return glae_fail(GLAE_ERR_VALUE, "%s: rows (%lld) must be divisible by group (%d)", fn,
                         (long long)rows, group);
    if (mode != GLAE_LOSS_BASE && mode != GLAE_LOSS_LAE_CLS && mode != GLAE_LOSS_KL)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown loss mode %d", fn, mode);
    if (!isfinite(lambda)) return glae_fail(GLAE_ERR_VALUE, "%s: lambda must be finite", fn);
    if (!isfinite(mae)) return glae_fail(GLAE_ERR_VALUE, "%s: mae must be finite", fn);
    return GLAE_OK;
}

/* the Gaussian label distribution: n targets over k classes, one sigma or per-sample ones */
static inline int glae_check_label_distribution(const char *fn, int64_t n, int k,
                                                const float *sigma, float sigma0) {
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative n %lld", fn, (long long)n);
    if (k < 1) return glae_fail(GLAE_ERR_VALUE, "%s: number of classes must be >= 1, got %d", fn, k);
    if (!sigma && (!(sigma0 > 0.0f) || !isfinite(sigma0)))
        return glae_fail(GLAE_ERR_VALUE, "%s: sigma must be finite and > 0, got %g", fn, (double)sigma0);
    return GLAE_OK;
}

/* a depthwise convolution: a shape made by glae_conv2d_shape_init with c_out == c_in */
static inline int glae_check_dwconv(const char *fn, const glae_conv2d_shape *s) {
    glae_conv2d_shape t;
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: shape is NULL", fn);
    GLAE_TRY(glae_conv2d_shape_init(&t, s->n, s->h, s->w, s->c_in, s->c_out, s->kh, s->kw,
                                    s->stride_h, s->stride_w, s->pad_h, s->pad_w));
    if (t.oh != s->oh || t.ow != s->ow)
        return glae_fail(GLAE_ERR_VALUE, "%s: shape not initialised by glae_conv2d_shape_init", fn);
    if (s->c_out != s->c_in)
        return glae_fail(GLAE_ERR_VALUE,
                         "%s: a depthwise convolution keeps the channels: c_in %d, c_out %d", fn,
                         s->c_in, s->c_out);
    return GLAE_OK;
}

/* the AM-softmax loss (amsoftmax.h): sizes, the scale and the margin. m >= 2 is refused
 * as degenerate: the true class's margined cosine c - m <= -1 could never exceed another
 * class's cosine, so no embedding would satisfy the loss. */
static inline int glae_check_amsoftmax(const char *fn, int64_t n, int d, int k, float s, float m,
                                       int forward) {
    if (n < 0 || d < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative size (n %lld, d %d)", fn,
                                         (long long)n, d);
    if (n > INT32_MAX) return glae_fail(GLAE_ERR_VALUE, "%s: n = %lld rows is too many", fn,
                                        (long long)n);
    if (k < 1) return glae_fail(GLAE_ERR_VALUE, "%s: number of classes must be >= 1, got %d", fn, k);
    if (n > 0 && d < 1) return glae_fail(GLAE_ERR_VALUE, "%s: the embedding is empty (d = 0)", fn);
    if (!(s > 0.0f) || !isfinite(s))
        return glae_fail(GLAE_ERR_VALUE, "%s: the scale s must be finite and > 0, got %g", fn, (double)s);
    if (forward && (!(m >= 0.0f) || !isfinite(m)))
        return glae_fail(GLAE_ERR_VALUE, "%s: the margin m must be finite and >= 0, got %g", fn,
                         (double)m);
    if (forward && m >= 2.0f)
        return glae_fail(GLAE_ERR_VALUE,
                         "%s: margin m = %g >= 2 makes the loss degenerate (the true class's "
                         "cosine minus m is <= -1, below every other class's); CosFace uses "
                         "0.35", fn, (double)m);
    return GLAE_OK;
}

#endif
