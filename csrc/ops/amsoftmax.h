/* The AM-softmax (additive margin softmax, CosFace) loss of LAE's identity pre-training
 * (LAE sec. 2.3; Wang et al., "Additive Margin Softmax for Face Verification", 2018).
 * For embeddings x (n, d), class weights w (k, d) and labels y (n):
 *   x^_i = x_i / |x_i|,  w^_j = w_j / |w_j|             (|v| = max(||v||_2, 1e-12), F.normalize)
 *   c_ij = x^_i . w^_j                                   the cosine logits, in [-1, 1]
 *   z_ij = s (c_ij - m [j == y_i])                       margin on the true class, scale s
 *   loss_i = -log softmax(z_i)[y_i] = log sum_j exp z_ij - z_iy
 * The loss is per row (the model averages it, like the LDL loss). With p = softmax(z) and
 * g_ij = dloss_i s (p_ij - [j == y_i]) (the gradient with respect to c_ij), through both
 * normalisations:
 *   dx_i = (sum_j g_ij w^_j - (sum_j g_ij c_ij) x^_i) / |x_i|
 *   dw_j = (sum_i g_ij x^_i - (sum_i g_ij c_ij) w^_j) / |w_j|
 * (the 1e-12 floor is treated as a constant: rows of norm below it get these formulas
 * too). See docs/pretraining.md. */
#ifndef GLAE_AMSOFTMAX_H
#define GLAE_AMSOFTMAX_H

#include <stdint.h>

#include "core/ctx.h"
#include "core/status.h"

/* the AM-softmax paper's defaults (s = 30, m = 0.35) */
#define GLAE_AMSOFTMAX_S 30.0f
#define GLAE_AMSOFTMAX_M 0.35f

/* loss (n) per row; saved for the backward: prob (n, k) = softmax(z), cos (n, k) = c (the
 * cosines without margin or scale). x (n, d), labels (n) in [0, k), w (k, d).
 * s > 0, 0 <= m < 2 (with m >= 2 the true class's margined cosine is <= -1, below every
 * other class's: the loss could never prefer the true class). */
int glae_amsoftmax_forward(glae_ctx *ctx, float *loss, float *prob, float *cos, const float *x,
                           const int32_t *labels, const float *w, int64_t n, int d, int k,
                           float s, float m);
/* dx (n, d) written (=), dw (k, d) accumulated (+=); either may be NULL (not computed).
 * dloss (n): the gradient of the caller's objective with respect to each row's loss
 * (1/n for the batch mean). prob and cos: the forward's. */
int glae_amsoftmax_backward(glae_ctx *ctx, float *dx, float *dw, const float *dloss,
                            const float *prob, const float *cos, const float *x,
                            const int32_t *labels, const float *w, int64_t n, int d, int k,
                            float s);

/* The ops of this header in the op table (ops/backend.h): glae_<op> here is the
 * reference, glae_<op>_cuda its twin with the same signature (ops_cuda.h). */
#define GLAE_OPS_AMSOFTMAX(X) X(amsoftmax_forward) X(amsoftmax_backward)

#endif
