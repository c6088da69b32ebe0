/* Instance-balanced and class-balanced samplers (GLAE Alg. 1, stages 1 and 2). */
#include "train/sampler.h"

#include <stdlib.h>

#include "core/rng.h"
#include "core/status.h"

int glae_sample_instance_balanced(int64_t *out, int64_t n, uint64_t seed, uint32_t epoch) {
    if (n < 0 || n > (int64_t)UINT32_MAX)
        return glae_fail(GLAE_ERR_VALUE,
                         "sample_instance_balanced: n must be in [0, 2^32), got %lld",
                         (long long)n);
    if (n > 0 && !out) return glae_fail(GLAE_ERR_VALUE, "sample_instance_balanced: NULL output");
    for (int64_t i = 0; i < n; i++) out[i] = i;
    glae_rng r;
    glae_rng_init(&r, seed, epoch, GLAE_RNG_TAG_INSTANCE, 0);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = glae_rng_below(&r, (uint32_t)(i + 1));
        int64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
    return GLAE_OK;
}

typedef struct {
    int64_t label, index;
} lab_idx;

static int cmp_lab_idx(const void *a, const void *b) {
    const lab_idx *x = a, *y = b;
    if (x->label != y->label) return x->label < y->label ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

int glae_sample_class_balanced(int64_t *out, int64_t length, const int64_t *labels, int64_t n,
                               uint64_t seed, uint32_t epoch) {
    if (n <= 0 || n > (int64_t)UINT32_MAX)
        return glae_fail(GLAE_ERR_VALUE,
                         "sample_class_balanced: need 1 <= len(labels) < 2^32, got %lld",
                         (long long)n);
    if (length < 0 || length > (int64_t)UINT32_MAX)
        return glae_fail(GLAE_ERR_VALUE,
                         "sample_class_balanced: length must be in [0, 2^32), got %lld",
                         (long long)length);
    if (!labels || (length > 0 && !out))
        return glae_fail(GLAE_ERR_VALUE, "sample_class_balanced: NULL argument");

    /* group indices by class: sort (label, index), then class k owns members[start[k] ..
     * start[k+1]) */
    lab_idx *members = malloc((size_t)n * sizeof *members);
    int64_t *start = malloc(((size_t)n + 1) * sizeof *start);
    if (!members || !start) {
        free(members);
        free(start);
        return glae_fail(GLAE_ERR_MEMORY, "sample_class_balanced: out of memory for %lld labels",
                         (long long)n);
    }
    for (int64_t i = 0; i < n; i++) members[i] = (lab_idx){labels[i], i};
    qsort(members, (size_t)n, sizeof *members, cmp_lab_idx);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (i == 0 || members[i].label != members[i - 1].label) start[k++] = i;
    start[k] = n;
    const uint32_t n_classes = (uint32_t)k;

#pragma omp parallel for schedule(static) if (length > 16384)
    for (int64_t t = 0; t < length; t++) {
        glae_rng r;
        glae_rng_init(&r, seed, epoch, GLAE_RNG_TAG_CLASS, (uint32_t)t);
        uint32_t c = glae_rng_below(&r, n_classes);
        int64_t size = start[c + 1] - start[c];
        out[t] = members[start[c] + glae_rng_below(&r, (uint32_t)size)].index;
    }
    free(members);
    free(start);
    return GLAE_OK;
}
