/* Inference: the expected age (GLAE eq. 3) and Adaptive Routing (GLAE III-D, eq. 11,
 * Algorithm 1 lines 24-30) with the test-time flip average of GLAE V-A.
 * Choices (ties, flip averaging, KL direction) are explained in docs/losses.md. */
#include "ops/route.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

#define ROUTE_PAR_WORK 32768

static int check_rk(const char *fn, int64_t rows, int k) {
    if (rows < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative rows %lld", fn, (long long)rows);
    if (k < 1) return glae_fail(GLAE_ERR_VALUE, "%s: number of classes must be >= 1, got %d", fn, k);
    return GLAE_OK;
}

/* Probabilities must be finite and >= 0; otherwise log() would turn them into NaNs that
 * then silently lose every routing comparison. */
static int check_prob(const char *fn, const char *name, const float *p, int64_t rows, int k) {
    const int64_t n = rows * (int64_t)k;
    for (int64_t i = 0; i < n; i++)
        if (!(p[i] >= 0.0f) || !isfinite(p[i]))
            return glae_fail(GLAE_ERR_VALUE, "%s: %s[%lld, %lld] = %g; probabilities must be finite and >= 0",
                             fn, name, (long long)(i / k), (long long)(i % k), (double)p[i]);
    return GLAE_OK;
}

static inline double expect(const float *p, int k) {
    double a = 0.0;
    for (int j = 0; j < k; j++) a += j * (double)p[j];
    return a;
}

/* KL(p || q), 0 log 0 = 0. Inside the logs a probability below FLT_MIN counts as FLT_MIN:
 * a softmax of sharp logits underflows to subnormals or to 0 depending on the engine
 * (ONNX Runtime flushes subnormals), and the routing decision must not hinge on that;
 * it also keeps KL finite where q = 0 (docs/losses.md). */
static inline double kl(const float *p, const float *q, int k) {
    double s = 0.0;
    for (int j = 0; j < k; j++)
        if (p[j] > 0.0f)
            s += p[j] * (log((double)fmaxf(p[j], FLT_MIN)) - log((double)fmaxf(q[j], FLT_MIN)));
    return s;
}

/* GLAE eq. 3: y_hat = sum_k k p_k */
int glae_expected_age(glae_ctx *ctx, float *age, const float *p, int64_t rows, int k) {
    (void)ctx; /* the CPU needs no handle; the signature is the twins' */
    GLAE_TRY(check_rk("expected_age", rows, k));
#pragma omp parallel for schedule(static) if (rows * (int64_t)k > ROUTE_PAR_WORK)
    for (int64_t i = 0; i < rows; i++) age[i] = (float)expect(p + i * k, k);
    return GLAE_OK;
}

int glae_kl_rows(glae_ctx *ctx, float *out, const float *p, const float *q, int64_t rows, int k) {
    (void)ctx; /* the CPU needs no handle; the signature is the twins' */
    const char *fn = "kl_rows";
    GLAE_TRY(check_rk(fn, rows, k));
    GLAE_TRY(check_prob(fn, "p", p, rows, k));
    GLAE_TRY(check_prob(fn, "q", q, rows, k));
#pragma omp parallel for schedule(static) if (rows * (int64_t)k > ROUTE_PAR_WORK)
    for (int64_t i = 0; i < rows; i++) out[i] = (float)kl(p + i * k, q + i * k, k);
    return GLAE_OK;
}

int glae_adaptive_route(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *ups,
                        const float *p_van, const float *p_van_flip, const float *p_bal,
                        const float *p_bal_flip, int64_t n, int k, int mode, int flip_average) {
    (void)ctx; /* the CPU needs no handle; the signature is the twins' */
    const char *fn = "adaptive_route";
    GLAE_TRY(check_rk(fn, n, k));
    if (mode != GLAE_ROUTE_SMALLER && mode != GLAE_ROUTE_BIGGER)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown routing mode %d", fn, mode);
    if (!choice) return glae_fail(GLAE_ERR_VALUE, "%s: choice must not be NULL", fn);
    GLAE_TRY(check_prob(fn, "p_van", p_van, n, k));
    GLAE_TRY(check_prob(fn, "p_van_flip", p_van_flip, n, k));
    GLAE_TRY(check_prob(fn, "p_bal", p_bal, n, k));
    GLAE_TRY(check_prob(fn, "p_bal_flip", p_bal_flip, n, k));
#pragma omp parallel for schedule(static) if (n * (int64_t)k > ROUTE_PAR_WORK / 4)
    for (int64_t i = 0; i < n; i++) {
        const int64_t o = i * k;
        /* GLAE eq. 11: Upsilon_1 = KL(p_hol || p_hol_flip), Upsilon_2 = KL(p_ban || p_ban_flip) */
        const double u1 = kl(p_van + o, p_van_flip + o, k);
        const double u2 = kl(p_bal + o, p_bal_flip + o, k);
        /* Algorithm 1 lines 26-29 literally: vanilla iff Upsilon_1 < Upsilon_2, so a tie
         * goes to the balanced head; "bigger" (Table IX) mirrors it: vanilla iff
         * Upsilon_1 > Upsilon_2. */
        const int van = mode == GLAE_ROUTE_SMALLER ? (u1 < u2) : (u1 > u2);
        choice[i] = van ? 0 : 1;
        if (ups) {
            ups[2 * i] = (float)u1;
            ups[2 * i + 1] = (float)u2;
        }
        const float *a = van ? p_van + o : p_bal + o;
        const float *b = van ? p_van_flip + o : p_bal_flip + o;
        /* GLAE V-A: the chosen head's prediction is averaged over the image and its flip */
        double yhat = 0.0;
        for (int j = 0; j < k; j++) {
            const float v = flip_average ? 0.5f * (a[j] + b[j]) : a[j];
            if (prob) prob[o + j] = v;
            yhat += j * (double)v;
        }
        if (age) age[i] = (float)yhat;
    }
    return GLAE_OK;
}
