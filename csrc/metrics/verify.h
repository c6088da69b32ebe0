/* Face verification figures for identity pre-training (docs/pretraining.md): cosine
 * similarities of pairs of embeddings, and from the scores of pairs of the same person and
 * of different people the accuracy at the best threshold and the true-accept rate at a
 * false-accept rate. Sums in double; host memory (the embeddings come back from the model's
 * device anyway). */
#ifndef GLAE_VERIFY_H
#define GLAE_VERIFY_H

#include <stdint.h>

#include "core/status.h"

/* scores[p] = cos(emb[a[p]], emb[b[p]]) for emb (n, d); a row of norm 0 gives 0 (its
 * direction is undefined). Indices outside [0, n) are an error. */
int glae_pair_cosines(float *scores, const float *emb, int64_t n, int d, const int64_t *a,
                      const int64_t *b, int64_t npairs);

typedef struct {
    int64_t n_same, n_diff;
    /* At the best threshold t (pairs scoring above t are called the same person): the mean
     * of the accuracy on same pairs and the accuracy on different pairs, so chance is 0.5
     * whatever the counts. NaN (and threshold NaN) without pairs of both kinds. Only cuts
     * between distinct scores count; t is the midpoint of the two scores around the cut. */
    double accuracy, threshold;
    /* The fraction of same pairs scoring above the floor(far * n_diff)-th highest score
     * of different pairs (counted from 0): at most far * n_diff different pairs are above
     * it. NaN when n_diff * far < 1 (too few different pairs for that rate). */
    double tar_at_far;
    double mean_same, mean_diff; /* NaN for a kind without pairs */
} glae_verification;

/* scores (n) finite; same (n): nonzero = a pair of one person; 0 < far < 1. */
int glae_verification_figures(glae_verification *out, const float *scores, const uint8_t *same,
                              int64_t n, double far);

#endif
