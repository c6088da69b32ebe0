/* Face verification figures (verify.h). */
#include "metrics/verify.h"

#include <math.h>
#include <stdlib.h>

int glae_pair_cosines(float *scores, const float *emb, int64_t n, int d, const int64_t *a,
                      const int64_t *b, int64_t npairs) {
    const char *fn = "pair_cosines";
    if (n < 0 || d < 1 || npairs < 0)
        return glae_fail(GLAE_ERR_VALUE, "%s: bad sizes (n %lld, d %d, pairs %lld)", fn,
                         (long long)n, d, (long long)npairs);
    for (int64_t p = 0; p < npairs; p++)
        if (a[p] < 0 || a[p] >= n || b[p] < 0 || b[p] >= n)
            return glae_fail(GLAE_ERR_VALUE, "%s: pair %lld = (%lld, %lld) indexes outside the %lld "
                             "embeddings", fn, (long long)p, (long long)a[p], (long long)b[p],
                             (long long)n);
#pragma omp parallel for schedule(static) if (npairs * (int64_t)d > 65536)
    for (int64_t p = 0; p < npairs; p++) {
        const float *x = emb + a[p] * d, *y = emb + b[p] * d;
        double xy = 0.0, xx = 0.0, yy = 0.0;
        for (int k = 0; k < d; k++) {
            xy += (double)x[k] * y[k];
            xx += (double)x[k] * x[k];
            yy += (double)y[k] * y[k];
        }
        scores[p] = (xx > 0.0 && yy > 0.0) ? (float)(xy / sqrt(xx * yy)) : 0.0f;
    }
    return GLAE_OK;
}

/* pairs sorted by score, highest first (ties: the input order, so the result is defined) */
typedef struct {
    float s;
    int64_t i;
} scored;

static int by_score_desc(const void *pa, const void *pb) {
    const scored *a = pa, *b = pb;
    if (a->s != b->s) return a->s > b->s ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

int glae_verification_figures(glae_verification *out, const float *scores, const uint8_t *same,
                              int64_t n, double far) {
    const char *fn = "verification";
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "%s: negative n %lld", fn, (long long)n);
    if (!(far > 0.0 && far < 1.0))
        return glae_fail(GLAE_ERR_VALUE, "%s: far must lie in (0, 1), got %g", fn, far);
    out->n_same = out->n_diff = 0;
    out->accuracy = out->threshold = out->tar_at_far = NAN;
    double sum_same = 0.0, sum_diff = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(scores[i]))
            return glae_fail(GLAE_ERR_VALUE, "%s: scores[%lld] = %g is not finite", fn,
                             (long long)i, (double)scores[i]);
        if (same[i]) {
            out->n_same++;
            sum_same += scores[i];
        } else {
            out->n_diff++;
            sum_diff += scores[i];
        }
    }
    out->mean_same = out->n_same ? sum_same / (double)out->n_same : NAN;
    out->mean_diff = out->n_diff ? sum_diff / (double)out->n_diff : NAN;
    if (out->n_same == 0 || out->n_diff == 0) return GLAE_OK;
    scored *v = malloc((size_t)n * sizeof *v);
    if (!v) return glae_fail(GLAE_ERR_MEMORY, "%s: cannot sort %lld scores", fn, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        v[i].s = scores[i];
        v[i].i = i;
    }
    qsort(v, (size_t)n, sizeof *v, by_score_desc);
    /* call the top k pairs "same" (k = 0..n); only cuts between distinct scores */
    const double ns = (double)out->n_same, nd = (double)out->n_diff;
    int64_t same_top = 0, best_k = 0;
    double best = 0.5 * (0.0 / ns + nd / nd); /* k = 0: every pair called different */
    for (int64_t k = 1; k <= n; k++) {
        same_top += same[v[k - 1].i] != 0;
        if (k < n && v[k].s == v[k - 1].s) continue;
        const double diff_below = nd - (double)(k - same_top);
        const double acc = 0.5 * ((double)same_top / ns + diff_below / nd);
        if (acc > best) {
            best = acc;
            best_k = k;
        }
    }
    out->accuracy = best;
    if (best_k == 0) out->threshold = (double)v[0].s + 1e-6;
    else if (best_k == n) out->threshold = (double)v[n - 1].s - 1e-6;
    else out->threshold = 0.5 * ((double)v[best_k - 1].s + (double)v[best_k].s);
    if (nd * far >= 1.0) {
        /* the floor(far * n_diff)-th highest different-pair score (from 0) */
        const int64_t allowed = (int64_t)floor(far * nd);
        int64_t seen = -1;
        double thr = NAN;
        for (int64_t k = 0; k < n; k++)
            if (!same[v[k].i] && ++seen == allowed) {
                thr = v[k].s;
                break;
            }
        int64_t accepted = 0;
        for (int64_t i = 0; i < n; i++) accepted += same[i] && (double)scores[i] > thr;
        out->tar_at_far = (double)accepted / ns;
    }
    free(v);
    return GLAE_OK;
}
