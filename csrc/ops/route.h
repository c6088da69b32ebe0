/* Inference-time pieces: the expected age (GLAE eq. 3) and Adaptive Routing (GLAE
 * section III-D, eq. 11): for each image and its horizontal flip,
 *   Upsilon_1 = KL(p_hol || p_hol_flip)  (vanilla head),  Upsilon_2 = KL(p_ban || p_ban_flip)
 * and the head with the smaller Upsilon answers (vanilla when Upsilon_1 < Upsilon_2). */
#ifndef GLAE_ROUTE_H
#define GLAE_ROUTE_H

#include <stdint.h>

#include "core/ctx.h"
#include "core/status.h"

enum { GLAE_ROUTE_SMALLER = 0, GLAE_ROUTE_BIGGER = 1 /* Table IX ablation */ };

/* age[i] = sum_k k * p[i, k] */
int glae_expected_age(glae_ctx *ctx, float *age, const float *p, int64_t rows, int k);
/* out[i] = KL(p_i || q_i) = sum_k p_ik log(p_ik / q_ik), terms with p_ik = 0 contribute 0 */
int glae_kl_rows(glae_ctx *ctx, float *out, const float *p, const float *q, int64_t rows, int k);
/* prob (n, K): the chosen head's distribution, averaged with its flip's when
 * flip_average != 0 (GLAE V-A test-time flip), else the unflipped one; age (n) its
 * expectation; choice (n): 0 vanilla, 1 balanced; ups (n, 2) = (Upsilon_1, Upsilon_2) or NULL. */
int glae_adaptive_route(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *ups,
                        const float *p_van, const float *p_van_flip, const float *p_bal,
                        const float *p_bal_flip, int64_t n, int k, int mode, int flip_average);

/* Routing criteria beyond eq. 11 (issue 19; docs/training.md, "Long-tail study"). Each
 * reads one image's four distributions; q_van, q_bal are the heads' flip averages (or the
 * unflipped ones when flip_average == 0). The answer keeps the vanilla head unless:
 *   KL_MARGIN   Upsilon_1 >= Upsilon_2 + a (a = 0: eq. 11's "smaller", ties included)
 *   CONFIDENCE  max_j q_van[j] < a        (the vanilla head is unsure)
 *   ENTROPY     H(q_van) > a (nats)
 *   AGE         E[q_van] < a or E[q_van] > b (the vanilla head's age is in a tail)
 * BLEND answers with (1 - a) q_van + a q_bal for every image (a in [0, 1]); choice is
 * then 1 where a >= 0.5. score[i] (may be NULL) is the value the criterion compares:
 * Upsilon_1 - Upsilon_2, max q_van, H(q_van), E[q_van], or a for BLEND. */
enum {
    GLAE_SELECT_KL_MARGIN = 0,
    GLAE_SELECT_CONFIDENCE = 1,
    GLAE_SELECT_ENTROPY = 2,
    GLAE_SELECT_AGE = 3,
    GLAE_SELECT_BLEND = 4
};
int glae_route_select(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *score,
                      const float *p_van, const float *p_van_flip, const float *p_bal,
                      const float *p_bal_flip, int64_t n, int k, int criterion, float a, float b,
                      int flip_average);

/* The ops of this header in the op table (ops/backend.h): glae_<op> here is the
 * reference, glae_<op>_cuda its twin with the same signature (ops_cuda.h). A new op of
 * this family adds its name here. */
#define GLAE_OPS_ROUTE(X) \
    X(expected_age) X(kl_rows) X(adaptive_route) X(route_select)

#endif
