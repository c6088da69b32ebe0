/* Evaluation metrics of LAE / GLAE (all sums in double).
 *   MAE            GLAE eq. 12                       glae_metric_mae
 *   CMAE           GLAE eq. 13                       glae_metric_cmae
 *   AAR, sigma     LAE eq. 6-7 (Table 1 groups),
 *                  GLAE eq. 15-16 (10-year groups)   glae_metric_aar
 *   epsilon-error  GLAE eq. 14 (Chalearn, averaged)  glae_metric_epsilon
 *   group MAE/CMAE GLAE Tables VIII, IX              glae_metric_group_mae
 *   CS(theta)      cumulative score                  glae_metric_cs
 *   shot MAE/CMAE  DIR (Yang et al. 2021)            glae_metric_shot
 *   routing usage  GLAE Fig. 4                       glae_metric_routing
 * Conventions (docs/metrics.md): a true age y is assigned to the integer age
 * floor(y + 0.5) (glae_age_class, core/age.h); true ages must be finite, >= 0 and
 * <= GLAE_METRIC_MAX_AGE; predictions must be finite (any sign). An empty group has count
 * 0 and NaN in its double outputs; the caller must read the count. Every function rejects
 * n <= 0. */
#ifndef GLAE_METRICS_H
#define GLAE_METRICS_H

#include <stdint.h>

#include "core/ctx.h"
#include "core/status.h"

#define GLAE_METRIC_MAX_AGE 100000
enum { GLAE_SHOT_MANY = 0, GLAE_SHOT_MEDIUM = 1, GLAE_SHOT_FEW = 2 };

/* GLAE eq. 12: mean |y - yhat|. */
int glae_metric_mae(double *mae, const float *y, const float *yhat, int64_t n);

/* GLAE eq. 13: mean over the integer ages present of each age's MAE; *n_ages = M. */
int glae_metric_cmae(double *cmae, int64_t *n_ages, const float *y, const float *yhat, int64_t n);

/* mae[k], count[k] for k = 0..num_classes-1 (mae[k] = NaN where count[k] == 0); an age
 * >= num_classes is an error. */
int glae_metric_per_age(double *mae, int64_t *count, int num_classes, const float *y,
                        const float *yhat, int64_t n);

/* Group g holds the samples whose integer age lies in [lo[g], hi[g]] (inclusive; groups may
 * overlap, samples outside every group are ignored). mae[g]: sample-weighted MAE; cmae[g]:
 * CMAE restricted to the group's ages; count[g]: samples; n_ages[g]: ages present. */
int glae_metric_group_mae(double *mae, double *cmae, int64_t *count, int64_t *n_ages,
                          const int32_t *lo, const int32_t *hi, int groups, const float *y,
                          const float *yhat, int64_t n);

/* LAE eq. 6-7 / GLAE eq. 15-16. Contiguous groups given by strictly increasing starts:
 * group g = [start[g], start[g+1] - 1], the first group also takes every age below start[0]
 * and the last every age above (an age outside the table goes to the nearest end group).
 * sigma = sqrt(sum over non-empty groups (MAE^g - MAE)^2 / (non-empty groups)),
 * AAR = max(0, 7 - MAE) + max(0, 3 - sigma). group_mae (groups) is NaN where
 * group_count is 0. */
int glae_metric_aar(double *aar, double *mae, double *sigma, double *group_mae,
                    int64_t *group_count, const int32_t *start, int groups, const float *y,
                    const float *yhat, int64_t n);

/* GLAE eq. 14 as Chalearn defines it: 1 - (1/N) sum_i exp(-(yhat_i - y_i)^2 / (2 s_i^2)),
 * s_i > 0 and finite. */
int glae_metric_epsilon(double *eps, const float *y, const float *yhat, const float *sigma,
                        int64_t n);

/* cs[t] = fraction of samples with |y - yhat| <= theta[t] (theta finite, >= 0). */
int glae_metric_cs(double *cs, const double *theta, int64_t ntheta, const float *y,
                   const float *yhat, int64_t n);

/* DIR shots by the number of training images of each integer age c:
 * many c > many_thr, few c < few_thr, medium otherwise (DIR: 100 and 20). Outputs indexed
 * by GLAE_SHOT_*: sample-weighted MAE, CMAE over the shot's ages, test samples, ages. */
int glae_metric_shot(double mae[3], double cmae[3], int64_t count[3], int64_t n_ages[3],
                     const float *y, const float *yhat, int64_t n, const float *train_ages,
                     int64_t ntrain, int64_t many_thr, int64_t few_thr);

/* GLAE Fig. 4: per group [lo[g], hi[g]] of true ages, the fraction of images answered by
 * the vanilla (choice 0) and the balanced (choice 1) head; NaN where count[g] == 0. */
int glae_metric_routing(double *frac_vanilla, double *frac_balanced, int64_t *count,
                        const int32_t *lo, const int32_t *hi, int groups, const float *y,
                        const int32_t *choice, int64_t n);

#ifdef GLAE_WITH_CUDA
/* metrics.cu: the sums behind MAE (GLAE eq. 12) and epsilon-error (eq. 14) on a GPU */
int glae_metric_mae_cuda(glae_ctx *ctx, double *mae, const float *y, const float *yhat, int64_t n);
int glae_metric_epsilon_cuda(glae_ctx *ctx, double *eps, const float *y, const float *yhat,
                             const float *sigma, int64_t n);
#endif

#endif
