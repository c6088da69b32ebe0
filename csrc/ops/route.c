/* Inference: the expected age (GLAE eq. 3) and Adaptive Routing (GLAE III-D, eq. 11,
 * Algorithm 1 lines 24-30) with the test-time flip average of GLAE V-A.
 * Choices (ties, flip averaging, KL direction) are explained in docs/losses.md. */
#include "ops/route.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

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

/* the criterion's value for one image (route.h): q_van the vanilla head's answer
 * distribution (flip-averaged or not), written into qv by the caller */
static double select_score(int criterion, const float *pv, const float *pvf, const float *pb,
                           const float *pbf, const float *qv, int k, float a) {
    switch (criterion) {
    case GLAE_SELECT_KL_MARGIN:
        return kl(pv, pvf, k) - kl(pb, pbf, k);
    case GLAE_SELECT_CONFIDENCE: {
        float m = 0.0f;
        for (int j = 0; j < k; j++) m = fmaxf(m, qv[j]);
        return m;
    }
    case GLAE_SELECT_ENTROPY: {
        double h = 0.0;
        for (int j = 0; j < k; j++)
            if (qv[j] > 0.0f) h -= qv[j] * log((double)fmaxf(qv[j], FLT_MIN));
        return h;
    }
    case GLAE_SELECT_AGE:
        return expect(qv, k);
    default: /* BLEND */
        return a;
    }
}

/* 1: the balanced head answers (route.h) */
static int select_balanced(int criterion, double score, float a, float b) {
    switch (criterion) {
    case GLAE_SELECT_KL_MARGIN: return !(score < a); /* vanilla iff U1 < U2 + a */
    case GLAE_SELECT_CONFIDENCE: return score < a;
    case GLAE_SELECT_ENTROPY: return score > a;
    case GLAE_SELECT_AGE: return score < a || score > b;
    default: return a >= 0.5f;
    }
}

int glae_route_select(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *score,
                      const float *p_van, const float *p_van_flip, const float *p_bal,
                      const float *p_bal_flip, int64_t n, int k, int criterion, float a, float b,
                      int flip_average) {
    (void)ctx; /* the CPU needs no handle; the signature is the twins' */
    const char *fn = "route_select";
    GLAE_TRY(check_rk(fn, n, k));
    if (criterion < GLAE_SELECT_KL_MARGIN || criterion > GLAE_SELECT_BLEND)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown criterion %d", fn, criterion);
    if (!isfinite(a) || !isfinite(b))
        return glae_fail(GLAE_ERR_VALUE, "%s: thresholds must be finite, got %g and %g", fn,
                         (double)a, (double)b);
    if (criterion == GLAE_SELECT_BLEND && !(a >= 0.0f && a <= 1.0f))
        return glae_fail(GLAE_ERR_VALUE, "%s: the blend weight must be in [0, 1], got %g", fn,
                         (double)a);
    if (!choice) return glae_fail(GLAE_ERR_VALUE, "%s: choice must not be NULL", fn);
    GLAE_TRY(check_prob(fn, "p_van", p_van, n, k));
    GLAE_TRY(check_prob(fn, "p_van_flip", p_van_flip, n, k));
    GLAE_TRY(check_prob(fn, "p_bal", p_bal, n, k));
    GLAE_TRY(check_prob(fn, "p_bal_flip", p_bal_flip, n, k));
    int st = GLAE_OK;
#pragma omp parallel if (n * (int64_t)k > ROUTE_PAR_WORK / 4)
    {
        float *qv = malloc((size_t)k * sizeof *qv); /* the vanilla answer of one image */
        if (!qv) {
#pragma omp atomic write
            st = 1;
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            if (!qv) continue;
            const int64_t o = i * k;
            for (int j = 0; j < k; j++)
                qv[j] = flip_average ? 0.5f * (p_van[o + j] + p_van_flip[o + j]) : p_van[o + j];
            const double s = select_score(criterion, p_van + o, p_van_flip + o, p_bal + o,
                                          p_bal_flip + o, qv, k, a);
            const int bal = select_balanced(criterion, s, a, b);
            choice[i] = bal;
            if (score) score[i] = (float)s;
            /* the answer: the chosen head's (flip-averaged) distribution, or the blend */
            const float wb = criterion == GLAE_SELECT_BLEND ? a : (float)bal;
            double yhat = 0.0;
            for (int j = 0; j < k; j++) {
                const float qb = flip_average ? 0.5f * (p_bal[o + j] + p_bal_flip[o + j])
                                              : p_bal[o + j];
                const float v = wb == 0.0f ? qv[j] : wb == 1.0f ? qb : (1.0f - wb) * qv[j] + wb * qb;
                if (prob) prob[o + j] = v;
                yhat += j * (double)v;
            }
            if (age) age[i] = (float)yhat;
        }
        free(qv);
    }
    if (st) return glae_fail(GLAE_ERR_MEMORY, "%s: out of memory for a row of %d classes", fn, k);
    return GLAE_OK;
}
