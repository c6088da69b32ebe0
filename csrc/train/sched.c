/* OneCycleLR, MultiStepLR and the linear scaling rule, written from PyTorch's documented
 * definitions so that the lr of every step is the same number PyTorch would use. */
#include "train/sched.h"

#include <math.h>

#include "core/status.h"

#define GLAE_PI 3.14159265358979323846

glae_onecycle_cfg glae_onecycle_defaults(int64_t total_steps, double max_lr) {
    glae_onecycle_cfg c = {total_steps, max_lr, 0.3, 25.0, 1e4, 1, 0.85, 0.95, GLAE_ANNEAL_COS, 0};
    return c;
}

static double anneal(glae_anneal how, double start, double end, double pct) {
    if (how == GLAE_ANNEAL_COS) return end + (start - end) / 2.0 * (cos(GLAE_PI * pct) + 1.0);
    return (end - start) * pct + start;
}

int glae_onecycle(const glae_onecycle_cfg *c, int64_t step, double *lr, double *momentum) {
    if (!c || !lr) return glae_fail(GLAE_ERR_VALUE, "onecycle: NULL argument");
    if (c->total_steps <= 0)
        return glae_fail(GLAE_ERR_VALUE, "onecycle: total_steps must be > 0, got %lld",
                         (long long)c->total_steps);
    if (!(c->pct_start >= 0.0 && c->pct_start <= 1.0))
        return glae_fail(GLAE_ERR_VALUE, "onecycle: pct_start must be in [0, 1], got %g",
                         c->pct_start);
    if (!isfinite(c->max_lr) || !(c->div_factor > 0.0) || !isfinite(c->div_factor) ||
        !(c->final_div_factor > 0.0) || !isfinite(c->final_div_factor))
        return glae_fail(GLAE_ERR_VALUE,
                         "onecycle: max_lr must be finite, div_factor and final_div_factor "
                         "finite and > 0 (got %g, %g, %g)",
                         c->max_lr, c->div_factor, c->final_div_factor);
    if (c->anneal != GLAE_ANNEAL_COS && c->anneal != GLAE_ANNEAL_LINEAR)
        return glae_fail(GLAE_ERR_VALUE, "onecycle: unknown anneal strategy %d", (int)c->anneal);
    if (c->cycle_momentum && (!isfinite(c->base_momentum) || !isfinite(c->max_momentum)))
        return glae_fail(GLAE_ERR_VALUE, "onecycle: momenta must be finite");
    if (c->cycle_momentum && !momentum)
        return glae_fail(GLAE_ERR_VALUE, "onecycle: cycle_momentum needs a momentum output");
    if (step < 0 || step > c->total_steps)
        return glae_fail(GLAE_ERR_VALUE,
                         "onecycle: step %lld outside [0, total_steps=%lld]", (long long)step,
                         (long long)c->total_steps);

    const double initial = c->max_lr / c->div_factor;
    const double min_lr = initial / c->final_div_factor;
    const double T = (double)c->total_steps, p = c->pct_start;
    /* PyTorch's phase table: end steps are floats; phase i starts where i-1 ended */
    double end_step[3], lr0[3], lr1[3], m0[3], m1[3];
    int nph;
    if (c->three_phase) {
        nph = 3;
        end_step[0] = p * T - 1.0;       lr0[0] = initial;   lr1[0] = c->max_lr;
        end_step[1] = 2.0 * p * T - 2.0; lr0[1] = c->max_lr; lr1[1] = initial;
        end_step[2] = T - 1.0;           lr0[2] = initial;   lr1[2] = min_lr;
        m0[0] = c->max_momentum;  m1[0] = c->base_momentum;
        m0[1] = c->base_momentum; m1[1] = c->max_momentum;
        m0[2] = c->max_momentum;  m1[2] = c->max_momentum;
    } else {
        nph = 2;
        end_step[0] = p * T - 1.0; lr0[0] = initial;   lr1[0] = c->max_lr;
        end_step[1] = T - 1.0;     lr0[1] = c->max_lr; lr1[1] = min_lr;
        m0[0] = c->max_momentum;  m1[0] = c->base_momentum;
        m0[1] = c->base_momentum; m1[1] = c->max_momentum;
    }
    const double s = (double)step;
    double start = 0.0;
    for (int i = 0; i < nph; i++) {
        if (s <= end_step[i] || i == nph - 1) {
            const double span = end_step[i] - start;
            /* PyTorch raises ZeroDivisionError here (e.g. pct_start * total_steps == 1) */
            if (span == 0.0)
                return glae_fail(GLAE_ERR_VALUE,
                                 "onecycle: phase %d of the schedule is empty at step %lld "
                                 "(total_steps=%lld, pct_start=%g): PyTorch divides by zero here",
                                 i + 1, (long long)step, (long long)c->total_steps, p);
            const double pct = (s - start) / span;
            *lr = anneal(c->anneal, lr0[i], lr1[i], pct);
            if (c->cycle_momentum) *momentum = anneal(c->anneal, m0[i], m1[i], pct);
            return GLAE_OK;
        }
        start = end_step[i];
    }
    return glae_fail(GLAE_ERR_RUNTIME, "onecycle: unreachable");
}

int glae_multistep(double *lr, int64_t epoch, double base_lr, const int64_t *milestones,
                   int n_milestones, double gamma) {
    if (!lr || (n_milestones > 0 && !milestones) || n_milestones < 0)
        return glae_fail(GLAE_ERR_VALUE, "multistep: bad milestones");
    if (epoch < 0) return glae_fail(GLAE_ERR_VALUE, "multistep: epoch must be >= 0, got %lld",
                                    (long long)epoch);
    if (!isfinite(base_lr) || !isfinite(gamma))
        return glae_fail(GLAE_ERR_VALUE, "multistep: base_lr and gamma must be finite");
    int passed = 0;
    for (int i = 0; i < n_milestones; i++) {
        if (milestones[i] < 0)
            return glae_fail(GLAE_ERR_VALUE, "multistep: milestone %lld is negative",
                             (long long)milestones[i]);
        passed += milestones[i] <= epoch;
    }
    /* PyTorch's _get_closed_form_lr: base_lr * gamma ** bisect_right(milestones, epoch) */
    *lr = base_lr * pow(gamma, (double)passed);
    return GLAE_OK;
}

int glae_linear_scaled_lr(double *lr, double base, int64_t batch, int64_t reference) {
    if (!lr) return glae_fail(GLAE_ERR_VALUE, "linear_scaled_lr: NULL output");
    if (batch <= 0 || reference <= 0)
        return glae_fail(GLAE_ERR_VALUE,
                         "linear_scaled_lr: batch and reference must be > 0, got %lld and %lld",
                         (long long)batch, (long long)reference);
    if (!isfinite(base)) return glae_fail(GLAE_ERR_VALUE, "linear_scaled_lr: base must be finite");
    *lr = base * (double)batch / (double)reference; /* LAE 3.3: base x BatchSize / 256 */
    return GLAE_OK;
}
