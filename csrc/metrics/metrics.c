/* Evaluation metrics (see metrics.h and docs/metrics.md). Every sum is a double and runs
 * serially in index order, so a metric does not depend on the thread count (a million
 * images take about a millisecond; parallel reductions would not pay). The grouped metrics
 * share one per-age histogram (sum of |error| and count per integer age). */
#include "metrics/metrics.h"

#include <math.h>
#include <stdlib.h>

#include "core/age.h"

/* the integer age of a true age (checked to lie in 0..GLAE_METRIC_MAX_AGE, so no clamping) */
static inline int64_t age_of(float y) { return glae_age_class(y, GLAE_METRIC_MAX_AGE + 1); }

static inline double abs_err(float y, float yhat) { return fabs((double)y - (double)yhat); }

static int check_n(const char *fn, int64_t n) {
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative size %lld", fn, (long long)n);
    if (n == 0) return glae_fail(GLAE_ERR_VALUE, "%s: empty input (no samples)", fn);
    return GLAE_OK;
}

/* True ages: finite, >= 0, <= GLAE_METRIC_MAX_AGE; *max_age receives the largest integer
 * age. Predictions (when given): finite. */
static int check_ages(const char *fn, const char *name, const float *y, int64_t n,
                      int64_t *max_age) {
    int64_t mx = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = y[i];
        if (!isfinite(v))
            return glae_fail(GLAE_ERR_VALUE, "%s: %s[%lld] is not finite (%g)", fn, name,
                             (long long)i, (double)v);
        if (v < 0.0f)
            return glae_fail(GLAE_ERR_VALUE, "%s: %s[%lld] is a negative age (%g)", fn, name,
                             (long long)i, (double)v);
        if (v > (float)GLAE_METRIC_MAX_AGE)
            return glae_fail(GLAE_ERR_VALUE, "%s: %s[%lld] = %g is above the largest age %d", fn,
                             name, (long long)i, (double)v, GLAE_METRIC_MAX_AGE);
        int64_t a = age_of(v);
        if (a > mx) mx = a;
    }
    if (max_age) *max_age = mx;
    return GLAE_OK;
}

static int check_finite(const char *fn, const char *name, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return glae_fail(GLAE_ERR_VALUE, "%s: %s[%lld] is not finite (%g)", fn, name,
                             (long long)i, (double)x[i]);
    return GLAE_OK;
}

static int check_pair(const char *fn, const float *y, const float *yhat, int64_t n,
                      int64_t *max_age) {
    GLAE_TRY(check_n(fn, n));
    GLAE_TRY(check_ages(fn, "y", y, n, max_age));
    return check_finite(fn, "yhat", yhat, n);
}

/* Per-age sums over ages 0..nages-1 (nages = max age + 1, so every sample lands). */
typedef struct {
    double *sum; /* sum of |y - yhat| */
    int64_t *cnt;
    int64_t nages;
} age_hist;

static void hist_free(age_hist *h) {
    free(h->sum);
    free(h->cnt);
    h->sum = NULL;
    h->cnt = NULL;
}

static int hist_build(age_hist *h, const char *fn, const float *y, const float *yhat,
                      int64_t n, int64_t nages) {
    h->nages = nages;
    h->sum = calloc((size_t)nages, sizeof *h->sum);
    h->cnt = calloc((size_t)nages, sizeof *h->cnt);
    if (!h->sum || !h->cnt) {
        hist_free(h);
        return glae_fail(GLAE_ERR_MEMORY, "%s: out of memory for %lld ages", fn,
                         (long long)nages);
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t a = age_of(y[i]);
        h->cnt[a]++;
        if (yhat) h->sum[a] += abs_err(y[i], yhat[i]);
    }
    return GLAE_OK;
}

static int check_ranges(const char *fn, const int32_t *lo, const int32_t *hi, int groups) {
    if (groups <= 0) return glae_fail(GLAE_ERR_VALUE, "%s: need at least one group", fn);
    for (int g = 0; g < groups; g++)
        if (lo[g] < 0 || hi[g] < lo[g])
            return glae_fail(GLAE_ERR_VALUE,
                             "%s: group %d = (%d, %d) must satisfy 0 <= low <= high", fn, g,
                             (int)lo[g], (int)hi[g]);
    return GLAE_OK;
}

int glae_metric_mae(double *mae, const float *y, const float *yhat, int64_t n) {
    GLAE_TRY(check_pair("mae", y, yhat, n, NULL));
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += abs_err(y[i], yhat[i]);
    *mae = s / (double)n; /* GLAE eq. 12 */
    return GLAE_OK;
}

int glae_metric_cmae(double *cmae, int64_t *n_ages, const float *y, const float *yhat,
                     int64_t n) {
    int64_t mx;
    GLAE_TRY(check_pair("cmae", y, yhat, n, &mx));
    age_hist h;
    GLAE_TRY(hist_build(&h, "cmae", y, yhat, n, mx + 1));
    /* GLAE eq. 13: CMAE = (1/M) sum_{k: N_k > 0} MAE_k */
    double s = 0.0;
    int64_t m = 0;
    for (int64_t k = 0; k < h.nages; k++)
        if (h.cnt[k]) {
            s += h.sum[k] / (double)h.cnt[k];
            m++;
        }
    hist_free(&h);
    *cmae = s / (double)m;
    if (n_ages) *n_ages = m;
    return GLAE_OK;
}

int glae_metric_per_age(double *mae, int64_t *count, int num_classes, const float *y,
                        const float *yhat, int64_t n) {
    int64_t mx;
    if (num_classes <= 0)
        return glae_fail(GLAE_ERR_VALUE, "per_age_mae: num_classes must be > 0, got %d",
                         num_classes);
    GLAE_TRY(check_pair("per_age_mae", y, yhat, n, &mx));
    if (mx >= num_classes)
        return glae_fail(GLAE_ERR_VALUE,
                         "per_age_mae: y holds age %lld, outside 0..num_classes-1 = 0..%d",
                         (long long)mx, num_classes - 1);
    age_hist h;
    GLAE_TRY(hist_build(&h, "per_age_mae", y, yhat, n, num_classes));
    for (int k = 0; k < num_classes; k++) {
        count[k] = h.cnt[k];
        mae[k] = h.cnt[k] ? h.sum[k] / (double)h.cnt[k] : NAN;
    }
    hist_free(&h);
    return GLAE_OK;
}

int glae_metric_group_mae(double *mae, double *cmae, int64_t *count, int64_t *n_ages,
                          const int32_t *lo, const int32_t *hi, int groups, const float *y,
                          const float *yhat, int64_t n) {
    int64_t mx;
    GLAE_TRY(check_ranges("group_mae", lo, hi, groups));
    GLAE_TRY(check_pair("group_mae", y, yhat, n, &mx));
    age_hist h;
    GLAE_TRY(hist_build(&h, "group_mae", y, yhat, n, mx + 1));
    for (int g = 0; g < groups; g++) {
        double s = 0.0, cs = 0.0;
        int64_t c = 0, m = 0;
        int64_t top = hi[g] < mx ? hi[g] : mx;
        for (int64_t k = lo[g]; k <= top; k++)
            if (h.cnt[k]) {
                s += h.sum[k];
                c += h.cnt[k];
                cs += h.sum[k] / (double)h.cnt[k];
                m++;
            }
        count[g] = c;
        n_ages[g] = m;
        mae[g] = c ? s / (double)c : NAN;
        cmae[g] = m ? cs / (double)m : NAN; /* GLAE Table IX: CMAE per age group */
    }
    hist_free(&h);
    return GLAE_OK;
}

int glae_metric_aar(double *aar, double *mae, double *sigma, double *group_mae,
                    int64_t *group_count, const int32_t *start, int groups, const float *y,
                    const float *yhat, int64_t n) {
    if (groups <= 0) return glae_fail(GLAE_ERR_VALUE, "aar: need at least one group");
    if (start[0] < 0) return glae_fail(GLAE_ERR_VALUE, "aar: group starts must be >= 0");
    for (int g = 1; g < groups; g++)
        if (start[g] <= start[g - 1])
            return glae_fail(GLAE_ERR_VALUE, "aar: group starts must increase strictly (%d: %d <= %d)",
                             g, (int)start[g], (int)start[g - 1]);
    int64_t mx;
    GLAE_TRY(check_pair("aar", y, yhat, n, &mx));
    age_hist h;
    GLAE_TRY(hist_build(&h, "aar", y, yhat, n, mx + 1));
    double total = 0.0;
    for (int g = 0; g < groups; g++) {
        group_mae[g] = 0.0;
        group_count[g] = 0;
    }
    /* ages below start[0] go to group 0, above the last start to the last group */
    int g = 0;
    for (int64_t k = 0; k < h.nages; k++) {
        while (g + 1 < groups && k >= start[g + 1]) g++;
        group_mae[g] += h.sum[k];
        group_count[g] += h.cnt[k];
        total += h.sum[k];
    }
    hist_free(&h);
    const double m = total / (double)n;
    double ss = 0.0;
    int present = 0;
    for (g = 0; g < groups; g++) {
        if (group_count[g]) {
            group_mae[g] /= (double)group_count[g];
            ss += (group_mae[g] - m) * (group_mae[g] - m);
            present++;
        } else {
            group_mae[g] = NAN;
        }
    }
    /* LAE eq. 7 / GLAE eq. 16 over the groups present (n >= 1 so present >= 1) */
    const double sd = sqrt(ss / (double)present);
    *mae = m;
    *sigma = sd;
    *aar = fmax(0.0, 7.0 - m) + fmax(0.0, 3.0 - sd); /* LAE eq. 6 / GLAE eq. 15 */
    return GLAE_OK;
}

int glae_metric_epsilon(double *eps, const float *y, const float *yhat, const float *sigma,
                        int64_t n) {
    GLAE_TRY(check_pair("epsilon_error", y, yhat, n, NULL));
    for (int64_t i = 0; i < n; i++)
        if (!(isfinite(sigma[i]) && sigma[i] > 0.0f))
            return glae_fail(GLAE_ERR_VALUE, "epsilon_error: sigma[%lld] must be finite and > 0, got %g",
                             (long long)i, (double)sigma[i]);
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)yhat[i] - (double)y[i], sd = (double)sigma[i];
        s += exp(-d * d / (2.0 * sd * sd));
    }
    *eps = 1.0 - s / (double)n; /* GLAE eq. 14, averaged over images as Chalearn does */
    return GLAE_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int glae_metric_cs(double *cs, const double *theta, int64_t ntheta, const float *y,
                   const float *yhat, int64_t n) {
    if (ntheta < 0) return glae_fail(GLAE_ERR_VALUE, "cs: negative number of thresholds");
    for (int64_t t = 0; t < ntheta; t++)
        if (!(isfinite(theta[t]) && theta[t] >= 0.0))
            return glae_fail(GLAE_ERR_VALUE, "cs: theta[%lld] must be finite and >= 0, got %g",
                             (long long)t, theta[t]);
    GLAE_TRY(check_pair("cs", y, yhat, n, NULL));
    if (ntheta <= 64) { /* a few thresholds (the usual 0..10): count directly, no sort */
        for (int64_t t = 0; t < ntheta; t++) {
            int64_t c = 0;
            for (int64_t i = 0; i < n; i++) c += abs_err(y[i], yhat[i]) <= theta[t];
            cs[t] = (double)c / (double)n;
        }
        return GLAE_OK;
    }
    /* a whole curve: sort the errors once, binary-search each threshold */
    double *e = malloc((size_t)n * sizeof *e);
    if (!e) return glae_fail(GLAE_ERR_MEMORY, "cs: out of memory for %lld errors", (long long)n);
    for (int64_t i = 0; i < n; i++) e[i] = abs_err(y[i], yhat[i]);
    qsort(e, (size_t)n, sizeof *e, cmp_double);
    for (int64_t t = 0; t < ntheta; t++) {
        int64_t a = 0, b = n; /* first index with e > theta */
        while (a < b) {
            int64_t mid = a + (b - a) / 2;
            if (e[mid] <= theta[t]) a = mid + 1;
            else b = mid;
        }
        cs[t] = (double)a / (double)n;
    }
    free(e);
    return GLAE_OK;
}

int glae_metric_shot(double mae[3], double cmae[3], int64_t count[3], int64_t n_ages[3],
                     const float *y, const float *yhat, int64_t n, const float *train_ages,
                     int64_t ntrain, int64_t many_thr, int64_t few_thr) {
    if (many_thr < 0 || few_thr < 0 || few_thr > many_thr + 1)
        return glae_fail(GLAE_ERR_VALUE,
                         "shot_mae: need 0 <= few_thr <= many_thr + 1, got many_thr=%lld few_thr=%lld",
                         (long long)many_thr, (long long)few_thr);
    int64_t mx;
    GLAE_TRY(check_pair("shot_mae", y, yhat, n, &mx));
    if (ntrain <= 0) return glae_fail(GLAE_ERR_VALUE, "shot_mae: train_ages is empty");
    GLAE_TRY(check_ages("shot_mae", "train_ages", train_ages, ntrain, NULL));
    age_hist h;
    GLAE_TRY(hist_build(&h, "shot_mae", y, yhat, n, mx + 1));
    int64_t *tc = calloc((size_t)(mx + 1), sizeof *tc);
    if (!tc) {
        hist_free(&h);
        return glae_fail(GLAE_ERR_MEMORY, "shot_mae: out of memory");
    }
    for (int64_t i = 0; i < ntrain; i++) {
        int64_t a = age_of(train_ages[i]);
        if (a <= mx) tc[a]++; /* training ages absent from the test set do not matter */
    }
    double s[3] = {0, 0, 0}, c[3] = {0, 0, 0};
    for (int j = 0; j < 3; j++) count[j] = n_ages[j] = 0;
    for (int64_t k = 0; k <= mx; k++) {
        if (!h.cnt[k]) continue;
        int j = tc[k] > many_thr ? GLAE_SHOT_MANY : tc[k] < few_thr ? GLAE_SHOT_FEW : GLAE_SHOT_MEDIUM;
        s[j] += h.sum[k];
        count[j] += h.cnt[k];
        c[j] += h.sum[k] / (double)h.cnt[k];
        n_ages[j]++;
    }
    for (int j = 0; j < 3; j++) {
        mae[j] = count[j] ? s[j] / (double)count[j] : NAN;
        cmae[j] = n_ages[j] ? c[j] / (double)n_ages[j] : NAN;
    }
    free(tc);
    hist_free(&h);
    return GLAE_OK;
}

int glae_metric_routing(double *frac_vanilla, double *frac_balanced, int64_t *count,
                        const int32_t *lo, const int32_t *hi, int groups, const float *y,
                        const int32_t *choice, int64_t n) {
    GLAE_TRY(check_ranges("routing_usage", lo, hi, groups));
    GLAE_TRY(check_n("routing_usage", n));
    GLAE_TRY(check_ages("routing_usage", "y", y, n, NULL));
    for (int64_t i = 0; i < n; i++)
        if (choice[i] != 0 && choice[i] != 1)
            return glae_fail(GLAE_ERR_VALUE,
                             "routing_usage: choice[%lld] = %d, must be 0 (vanilla) or 1 (balanced)",
                             (long long)i, (int)choice[i]);
    for (int g = 0; g < groups; g++) {
        int64_t c = 0, b = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t a = age_of(y[i]);
            if (a >= lo[g] && a <= hi[g]) {
                c++;
                b += choice[i];
            }
        }
        count[g] = c;
        frac_balanced[g] = c ? (double)b / (double)c : NAN;
        frac_vanilla[g] = c ? (double)(c - b) / (double)c : NAN;
    }
    return GLAE_OK;
}
