/* CUDA twins of route.c: expected age (GLAE eq. 3), KL rows and Adaptive Routing (GLAE
 * III-D, eq. 11, with the V-A flip average). One warp per row, sums and logs in double.
 * The probabilities are not checked for negatives / NaN on the GPU (route.c does). */
#include <cfloat>

#include "ops/kernels.cuh"

__device__ static double row_expect(const float *p, int k) {
    double a = 0.0;
    for (int j = threadIdx.x; j < k; j += 32) a += j * (double)p[j];
    return glae_warp_sum(a);
}

/* KL(p || q), 0 log 0 = 0, probabilities clamped at FLT_MIN inside the logs (route.c) */
__device__ static double row_kl(const float *p, const float *q, int k) {
    double s = 0.0;
    for (int j = threadIdx.x; j < k; j += 32)
        if (p[j] > 0.0f)
            s += p[j] * (log((double)fmaxf(p[j], FLT_MIN)) - log((double)fmaxf(q[j], FLT_MIN)));
    return glae_warp_sum(s);
}

__global__ static void expected_age_k(float *age, const float *p, int64_t rows, int k) {
    GLAE_FOR_ROWS(i, rows) {
        const double a = row_expect(p + i * k, k);
        if (threadIdx.x == 0) age[i] = (float)a;
    }
}

__global__ static void kl_rows_k(float *out, const float *p, const float *q, int64_t rows, int k) {
    GLAE_FOR_ROWS(i, rows) {
        const double v = row_kl(p + i * k, q + i * k, k);
        if (threadIdx.x == 0) out[i] = (float)v;
    }
}

__global__ static void route_k(float *prob, float *age, int32_t *choice, float *ups,
                               const float *pv, const float *pvf, const float *pb, const float *pbf,
                               int64_t n, int k, int mode, int flip_average) {
    GLAE_FOR_ROWS(i, n) {
        const int64_t o = i * k;
        const double u1 = row_kl(pv + o, pvf + o, k), u2 = row_kl(pb + o, pbf + o, k);
        /* Algorithm 1 lines 26-29: vanilla iff Upsilon_1 < Upsilon_2 (ties: balanced) */
        const int van = mode == GLAE_ROUTE_SMALLER ? (u1 < u2) : (u1 > u2);
        const float *a = van ? pv + o : pb + o, *b = van ? pvf + o : pbf + o;
        double yhat = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            const float v = flip_average ? 0.5f * (a[j] + b[j]) : a[j];
            if (prob) prob[o + j] = v;
            yhat += j * (double)v;
        }
        yhat = glae_warp_sum(yhat);
        if (threadIdx.x == 0) {
            choice[i] = van ? 0 : 1;
            if (ups) {
                ups[2 * i] = (float)u1;
                ups[2 * i + 1] = (float)u2;
            }
            if (age) age[i] = (float)yhat;
        }
    }
}

static int check_rk(const char *fn, int64_t rows, int k) {
    if (rows < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative rows %lld", fn, (long long)rows);
    if (k < 1) return glae_fail(GLAE_ERR_VALUE, "%s: number of classes must be >= 1, got %d", fn, k);
    return GLAE_OK;
}

extern "C" int glae_expected_age_cuda(glae_ctx *ctx, float *age, const float *p, int64_t rows, int k) {
    GLAE_STREAM(ctx, "expected_age_cuda", st);
    GLAE_TRY(check_rk("expected_age_cuda", rows, k));
    if (rows == 0) return GLAE_OK;
    expected_age_k<<<glae_warp_grid(rows), dim3(32, 8), 0, st>>>(age, p, rows, k);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_kl_rows_cuda(glae_ctx *ctx, float *out, const float *p, const float *q,
                                 int64_t rows, int k) {
    GLAE_STREAM(ctx, "kl_rows_cuda", st);
    GLAE_TRY(check_rk("kl_rows_cuda", rows, k));
    if (rows == 0) return GLAE_OK;
    kl_rows_k<<<glae_warp_grid(rows), dim3(32, 8), 0, st>>>(out, p, q, rows, k);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

extern "C" int glae_adaptive_route_cuda(glae_ctx *ctx, float *prob, float *age, int32_t *choice,
                                        float *ups, const float *p_van, const float *p_van_flip,
                                        const float *p_bal, const float *p_bal_flip, int64_t n,
                                        int k, int mode, int flip_average) {
    const char *fn = "adaptive_route_cuda";
    GLAE_STREAM(ctx, fn, st);
    GLAE_TRY(check_rk(fn, n, k));
    if (mode != GLAE_ROUTE_SMALLER && mode != GLAE_ROUTE_BIGGER)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown routing mode %d", fn, mode);
    if (!choice) return glae_fail(GLAE_ERR_VALUE, "%s: choice must not be NULL", fn);
    if (n == 0) return GLAE_OK;
    route_k<<<glae_warp_grid(n), dim3(32, 8), 0, st>>>(prob, age, choice, ups, p_van, p_van_flip,
                                                       p_bal, p_bal_flip, n, k, mode, flip_average);
    GLAE_LAUNCHED();
    return GLAE_OK;
}

/* route_select (route.h): one warp per row; the vanilla answer q_van is recomputed from
 * the two distributions where needed instead of being stored */
__device__ static float qmix(const float *p, const float *pf, int j, int flip_average) {
    return flip_average ? 0.5f * (p[j] + pf[j]) : p[j];
}

__global__ static void select_k(float *prob, float *age, int32_t *choice, float *score,
                                const float *pv, const float *pvf, const float *pb,
                                const float *pbf, int64_t n, int k, int criterion, float a,
                                float b, int flip_average) {
    GLAE_FOR_ROWS(i, n) {
        const int64_t o = i * k;
        double s;
        if (criterion == GLAE_SELECT_KL_MARGIN) {
            s = row_kl(pv + o, pvf + o, k) - row_kl(pb + o, pbf + o, k);
        } else if (criterion == GLAE_SELECT_CONFIDENCE) {
            float m = 0.0f;
            for (int j = threadIdx.x; j < k; j += 32) m = fmaxf(m, qmix(pv + o, pvf + o, j, flip_average));
            s = glae_warp_max(m);
        } else if (criterion == GLAE_SELECT_ENTROPY) {
            double h = 0.0;
            for (int j = threadIdx.x; j < k; j += 32) {
                const float q = qmix(pv + o, pvf + o, j, flip_average);
                if (q > 0.0f) h -= q * log((double)fmaxf(q, FLT_MIN));
            }
            s = glae_warp_sum(h);
        } else if (criterion == GLAE_SELECT_AGE) {
            double e = 0.0;
            for (int j = threadIdx.x; j < k; j += 32) e += j * (double)qmix(pv + o, pvf + o, j, flip_average);
            s = glae_warp_sum(e);
        } else {
            s = a;
        }
        int bal;
        switch (criterion) {
        case GLAE_SELECT_KL_MARGIN: bal = !(s < a); break;
        case GLAE_SELECT_CONFIDENCE: bal = s < a; break;
        case GLAE_SELECT_ENTROPY: bal = s > a; break;
        case GLAE_SELECT_AGE: bal = s < a || s > b; break;
        default: bal = a >= 0.5f; break;
        }
        const float wb = criterion == GLAE_SELECT_BLEND ? a : (float)bal;
        double yhat = 0.0;
        for (int j = threadIdx.x; j < k; j += 32) {
            const float qv = qmix(pv + o, pvf + o, j, flip_average);
            const float qb = qmix(pb + o, pbf + o, j, flip_average);
            const float v = wb == 0.0f ? qv : wb == 1.0f ? qb : (1.0f - wb) * qv + wb * qb;
            if (prob) prob[o + j] = v;
            yhat += j * (double)v;
        }
        yhat = glae_warp_sum(yhat);
        if (threadIdx.x == 0) {
            choice[i] = bal;
            if (score) score[i] = (float)s;
            if (age) age[i] = (float)yhat;
        }
    }
}

extern "C" int glae_route_select_cuda(glae_ctx *ctx, float *prob, float *age, int32_t *choice,
                                      float *score, const float *p_van, const float *p_van_flip,
                                      const float *p_bal, const float *p_bal_flip, int64_t n,
                                      int k, int criterion, float a, float b, int flip_average) {
    const char *fn = "route_select_cuda";
    GLAE_STREAM(ctx, fn, st);
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
    if (n == 0) return GLAE_OK;
    select_k<<<glae_warp_grid(n), dim3(32, 8), 0, st>>>(prob, age, choice, score, p_van,
                                                        p_van_flip, p_bal, p_bal_flip, n, k,
                                                        criterion, a, b, flip_average);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
