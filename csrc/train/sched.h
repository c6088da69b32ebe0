/* Learning-rate (and momentum) schedules as pure functions of the step, matching
 * PyTorch's torch.optim.lr_scheduler classes (docs/training-numerics.md). Computed in
 * double, as PyTorch computes them in Python floats. */
#ifndef GLAE_SCHED_H
#define GLAE_SCHED_H

#include <stdint.h>

typedef enum { GLAE_ANNEAL_COS = 0, GLAE_ANNEAL_LINEAR = 1 } glae_anneal;

typedef struct {
    int64_t total_steps;      /* > 0 */
    double max_lr;
    double pct_start;         /* in [0, 1]; PyTorch default 0.3 */
    double div_factor;        /* initial_lr = max_lr / div_factor (25) */
    double final_div_factor;  /* min_lr = initial_lr / final_div_factor (1e4) */
    int cycle_momentum;       /* momentum goes max -> base -> max against the lr */
    double base_momentum;     /* 0.85 */
    double max_momentum;      /* 0.95 */
    glae_anneal anneal;       /* cos (default) or linear */
    int three_phase;          /* 0: PyTorch default */
} glae_onecycle_cfg;

/* PyTorch's defaults for the fields other than total_steps and max_lr. */
glae_onecycle_cfg glae_onecycle_defaults(int64_t total_steps, double max_lr);

/* OneCycleLR (Smith & Topin; LAE 3.3, GLAE V-A) at scheduler step `step` in
 * [0, total_steps] (the lr of the step-th optimizer step; step == total_steps is what
 * PyTorch's last scheduler.step() computes). *momentum is written only when
 * cfg->cycle_momentum (it may be NULL otherwise). */
int glae_onecycle(const glae_onecycle_cfg *cfg, int64_t step, double *lr, double *momentum);

/* MultiStepLR closed form: base_lr * gamma^(number of milestones <= epoch), duplicates
 * counted (PyTorch keeps them in a Counter). `epoch` is whatever unit the scheduler is
 * stepped in (epochs in LAE's pre-training, or steps). Milestones need not be sorted. */
int glae_multistep(double *lr, int64_t epoch, double base_lr, const int64_t *milestones,
                   int n_milestones, double gamma);

/* Linear scaling rule (LAE 3.3): lr = base * batch / reference (reference = 256). */
int glae_linear_scaled_lr(double *lr, double base, int64_t batch, int64_t reference);

#endif
