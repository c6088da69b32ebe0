/* Instance-balanced and class-balanced samplers (GLAE Alg. 1, stages 1 and 2). */
#include "train/sampler.h"

#include <math.h>
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

/* classes as runs of sorted (label, index): start[k] .. start[k+1] are class k's members;
 * returns the number of classes, or -1 out of memory (members / start then NULL) */
static int64_t group_classes(const int64_t *labels, int64_t n, lab_idx **members_out,
                             int64_t **start_out) {
    lab_idx *members = malloc((size_t)n * sizeof *members);
    int64_t *start = malloc(((size_t)n + 1) * sizeof *start);
    if (!members || !start) {
        free(members);
        free(start);
        *members_out = NULL;
        *start_out = NULL;
        return -1;
    }
    for (int64_t i = 0; i < n; i++) members[i] = (lab_idx){labels[i], i};
    qsort(members, (size_t)n, sizeof *members, cmp_lab_idx);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (i == 0 || members[i].label != members[i - 1].label) start[k++] = i;
    start[k] = n;
    *members_out = members;
    *start_out = start;
    return k;
}

int glae_sample_class_power(int64_t *out, int64_t length, const int64_t *labels, int64_t n,
                            double power, double alpha, uint64_t seed, uint32_t epoch) {
    const char *fn = "sample_class_power";
    if (n <= 0 || n > (int64_t)UINT32_MAX)
        return glae_fail(GLAE_ERR_VALUE, "%s: need 1 <= len(labels) < 2^32, got %lld", fn,
                         (long long)n);
    if (length < 0 || length > (int64_t)UINT32_MAX)
        return glae_fail(GLAE_ERR_VALUE, "%s: length must be in [0, 2^32), got %lld", fn,
                         (long long)length);
    if (!(power >= 0.0 && power <= 1.0))
        return glae_fail(GLAE_ERR_VALUE, "%s: power must be in [0, 1], got %g", fn, power);
    if (!(alpha >= 0.0 && alpha <= 1.0))
        return glae_fail(GLAE_ERR_VALUE, "%s: alpha must be in [0, 1], got %g", fn, alpha);
    if (!labels || (length > 0 && !out))
        return glae_fail(GLAE_ERR_VALUE, "%s: NULL argument", fn);
    lab_idx *members;
    int64_t *start;
    const int64_t k = group_classes(labels, n, &members, &start);
    double *cum = k > 0 ? malloc((size_t)k * sizeof *cum) : NULL;
    if (k < 0 || !cum) {
        free(members);
        free(start);
        return glae_fail(GLAE_ERR_MEMORY, "%s: out of memory for %lld labels", fn, (long long)n);
    }
    /* the class distribution as a cumulative sum; a draw u in [0, 1) picks the first class
     * whose cumulative weight exceeds u * total (the last class catches rounding) */
    double zpow = 0.0;
    for (int64_t c = 0; c < k; c++) zpow += pow((double)(start[c + 1] - start[c]), power);
    double acc = 0.0;
    for (int64_t c = 0; c < k; c++) {
        const double size = (double)(start[c + 1] - start[c]);
        acc += (1.0 - alpha) * size / (double)n + alpha * pow(size, power) / zpow;
        cum[c] = acc;
    }
#pragma omp parallel for schedule(static) if (length > 16384)
    for (int64_t t = 0; t < length; t++) {
        glae_rng r;
        glae_rng_init(&r, seed, epoch, GLAE_RNG_TAG_POWER, (uint32_t)t);
        const uint32_t a = glae_rng_u32(&r), b = glae_rng_u32(&r);
        const double u = glae_u01d(a, b) * cum[k - 1];
        int64_t lo = 0, hi = k - 1; /* smallest c with cum[c] > u */
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (cum[mid] > u) hi = mid;
            else lo = mid + 1;
        }
        const int64_t size = start[lo + 1] - start[lo];
        out[t] = members[start[lo] + glae_rng_below(&r, (uint32_t)size)].index;
    }
    free(cum);
    free(members);
    free(start);
    return GLAE_OK;
}
