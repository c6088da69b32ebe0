#include "core/rng.h"

#include <math.h>

#include "core/status.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void glae_philox4x32(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void glae_rand4(uint64_t seed, uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t out[4]) {
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {a, b, c, d};
    glae_philox4x32(key, ctr, out);
}

void glae_rng_init(glae_rng *r, uint64_t seed, uint32_t a, uint32_t b, uint32_t c) {
    r->seed = seed;
    r->a = a;
    r->b = b;
    r->c = c;
    r->d = 0;
    r->pos = 4;
}

uint32_t glae_rng_u32(glae_rng *r) {
    if (r->pos == 4) {
        glae_rand4(r->seed, r->a, r->b, r->c, r->d++, r->buf);
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

float glae_rng_uniform(glae_rng *r) { return glae_u01(glae_rng_u32(r)); }

double glae_rng_normal(glae_rng *r) {
    uint32_t w0 = glae_rng_u32(r), w1 = glae_rng_u32(r), w2 = glae_rng_u32(r), w3 = glae_rng_u32(r);
    double u1 = 1.0 - glae_u01d(w0, w1); /* (0, 1] so log is finite */
    double u2 = glae_u01d(w2, w3);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

uint32_t glae_rng_below(glae_rng *r, uint32_t n) {
    if (n <= 1) return 0;
    /* Lemire's rejection keeps the result exactly uniform */
    uint64_t m = (uint64_t)glae_rng_u32(r) * n;
    uint32_t l = (uint32_t)m;
    if (l < n) {
        uint32_t t = (uint32_t)(-n) % n;
        while (l < t) {
            m = (uint64_t)glae_rng_u32(r) * n;
            l = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

int glae_rng_permutation(int64_t *out, int64_t n, uint64_t seed, uint32_t stream) {
    if (n < 0 || n > (int64_t)UINT32_MAX)
        return glae_fail(GLAE_ERR_VALUE, "rng_permutation: n must be in [0, 2^32), got %lld",
                         (long long)n);
    if (n > 0 && !out) return glae_fail(GLAE_ERR_VALUE, "rng_permutation: NULL output");
    for (int64_t i = 0; i < n; i++) out[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        glae_rng r; /* one stream per position: j depends on (seed, stream, i) alone */
        glae_rng_init(&r, seed, stream, GLAE_RNG_TAG_PERMUTATION, (uint32_t)i);
        int64_t j = glae_rng_below(&r, (uint32_t)(i + 1));
        int64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
    return GLAE_OK;
}
