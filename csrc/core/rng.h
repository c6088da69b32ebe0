/* Counter-based random numbers (Philox4x32-10, Salmon et al. 2011): the value is a pure
 * function of (key, counter), so a sample's augmentation or a weight's initial value
 * does not depend on thread count or call order. Keys/counters are built from
 * (seed, epoch, sample, op). */
#ifndef GLAE_RNG_H
#define GLAE_RNG_H

#include <stdint.h>

void glae_philox4x32(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4]);

/* Four 32-bit words for (seed; a, b, c, d). */
void glae_rand4(uint64_t seed, uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t out[4]);
/* Uniform in [0, 1) with 24 random bits. */
static inline float glae_u01(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }
/* Uniform in [0, 1) with 53 random bits from two words. */
static inline double glae_u01d(uint32_t hi, uint32_t lo) {
    return (double)(((uint64_t)hi << 21) ^ (lo >> 11)) * (1.0 / 9007199254740992.0);
}

/* A stream: successive draws advance the counter's last word. */
typedef struct {
    uint64_t seed;
    uint32_t a, b, c, d;
    uint32_t buf[4];
    int pos;
} glae_rng;

void glae_rng_init(glae_rng *r, uint64_t seed, uint32_t a, uint32_t b, uint32_t c);
uint32_t glae_rng_u32(glae_rng *r);
float glae_rng_uniform(glae_rng *r);        /* [0, 1) */
double glae_rng_normal(glae_rng *r);        /* N(0, 1), Box-Muller */
uint32_t glae_rng_below(glae_rng *r, uint32_t n); /* uniform in [0, n), unbiased */

/* Counter word b of glae_rng_permutation, apart from the other users of a seed. */
#define GLAE_RNG_TAG_PERMUTATION 0x50524D31u /* "PRM1" */

/* A permutation of [0, n), n < 2^32, the same on every machine: Fisher-Yates from the last
 * position down, position i swapping with j = glae_rng_below(i + 1) of its own stream
 * (seed; stream, GLAE_RNG_TAG_PERMUTATION, i). For bookkeeping such as protocol splits. */
int glae_rng_permutation(int64_t *out, int64_t n, uint64_t seed, uint32_t stream);

#endif
