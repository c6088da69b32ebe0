/* Label-distribution losses of LAE / GLAE (K = 101 ages, 0..100).
 *   label distribution (LAE 2.1, GLAE eq. 1):  z_k = exp(-(k - y)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)
 *   l_kl  (LAE eq. 1, GLAE eq. 2):            sum_k z_k log(z_k / p_k),  p = softmax(logits)
 *   l_er  (LAE eq. 2, GLAE eq. 4):            |y - sum_k k p_k|
 *   l_base (GLAE eq. 5, LAE eq. 3):           l_kl + lambda * l_er
 *   L_cl  (LAE eq. 4, classification stage):  l_kl + (l_er - mae)^2
 */
#ifndef GLAE_LOSS_H
#define GLAE_LOSS_H

#include <stdint.h>

#include "core/ctx.h"
#include "core/status.h"

enum {
    GLAE_LOSS_BASE = 0,    /* l_kl + lambda * l_er                  */
    GLAE_LOSS_LAE_CLS = 1, /* l_kl + (l_er - mae)^2   (LAE stage 2) */
    GLAE_LOSS_KL = 2,      /* l_kl only               (GLAE Table II row 1) */
};

/* z (n, K). sigma (n) per sample, or NULL to use sigma0 for all. normalize != 0 rescales
 * each row to sum 1 (see docs/paper-map.md for why that is the default). */
int glae_label_distribution(glae_ctx *ctx, float *z, const float *y, const float *sigma,
                            float sigma0, int64_t n, int k, int normalize);

/* Per-row loss on logits (rows, K). Row r belongs to sample r / group (group = H'*W' for
 * the local branch of PA, where every position shares its image's label; 1 otherwise):
 * z is (rows / group, K), y is (rows / group). prob (rows, K) receives softmax(logits)
 * and is what the backward needs. */
int glae_ldl_loss_forward(glae_ctx *ctx, float *loss, float *prob, const float *logits,
                          const float *z, const float *y, int64_t rows, int group, int k, int mode,
                          float lambda, float mae);
/* dlogits (rows, K) = sum_r dloss[r] * d loss[r] / d logits (written, not accumulated). */
int glae_ldl_loss_backward(glae_ctx *ctx, float *dlogits, const float *dloss, const float *prob,
                           const float *z, const float *y, int64_t rows, int group, int k, int mode,
                           float lambda, float mae);

/* The ops of this header in the op table (ops/backend.h): glae_<op> here is the
 * reference, glae_<op>_cuda its twin with the same signature (ops_cuda.h). A new op of
 * this family adds its name here. */
#define GLAE_OPS_LOSS(X) \
    X(label_distribution) X(ldl_loss_forward) X(ldl_loss_backward)

#endif
