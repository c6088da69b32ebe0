/* Epoch samplers, reproducible from (seed, epoch) alone through the Philox counter RNG
 * (core/rng.h), whatever the thread count (docs/training-numerics.md). */
#ifndef GLAE_SAMPLER_H
#define GLAE_SAMPLER_H

#include <stdint.h>

/* Philox counter word b that tells the sampler streams apart from other users of
 * (seed, epoch, ...): counter = (epoch, GLAE_RNG_TAG_*, draw, 0..). */
#define GLAE_RNG_TAG_INSTANCE 0x53504931u /* "SPI1" */
#define GLAE_RNG_TAG_CLASS 0x53504331u    /* "SPC1" */
#define GLAE_RNG_TAG_POWER 0x53505031u    /* "SPP1" */

/* Instance-balanced (GLAE Alg. 1 l. 3, stage 1): a permutation of [0, n) for this epoch,
 * Fisher-Yates from the last position down, j = glae_rng_below(i + 1), one stream
 * (seed; epoch, GLAE_RNG_TAG_INSTANCE, 0). n < 2^32. */
int glae_sample_instance_balanced(int64_t *out, int64_t n, uint64_t seed, uint32_t epoch);

/* Class-balanced (LAE 2.4; GLAE III-D stage 2, Alg. 1 l. 19; Shen et al.): draw t picks a
 * class uniformly among the distinct labels present (sorted ascending), then an instance
 * uniformly among that class's indices (ascending). Draw t uses its own stream
 * (seed; epoch, GLAE_RNG_TAG_CLASS, t), so draws are independent of thread count.
 * labels: n integer labels (ages); out: `length` indices into labels. Needs 0 < n < 2^32
 * and length < 2^32. */
int glae_sample_class_balanced(int64_t *out, int64_t length, const int64_t *labels, int64_t n,
                               uint64_t seed, uint32_t epoch);

/* Class-aware sampling between instance- and class-balanced (Kang et al., ICLR 2020,
 * "Decoupling representation and classifier", eq. 1 and the progressively-balanced mix):
 * class c (n_c members) is drawn with probability
 *     p_c = (1 - alpha) * n_c / n + alpha * n_c^power / sum_j n_j^power,
 * then an instance uniformly among its members. power = 0, alpha = 1: class-balanced
 * (the same distribution as glae_sample_class_balanced, another stream); power = 1/2,
 * alpha = 1: square-root sampling; power = 0 with alpha = t / T rising over the epochs:
 * progressively balanced. Draw t uses its own stream (seed; epoch, GLAE_RNG_TAG_POWER, t).
 * Needs power in [0, 1], alpha in [0, 1], 0 < n < 2^32, length < 2^32. */
int glae_sample_class_power(int64_t *out, int64_t length, const int64_t *labels, int64_t n,
                            double power, double alpha, uint64_t seed, uint32_t epoch);

#endif
