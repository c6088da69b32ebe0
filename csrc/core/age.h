/* The whole-year class of an age: the one rounding rule of the engine (docs/metrics.md).
 * Metrics (CMAE, AAR, groups, shots, per-age, routing), the training-age histogram, the
 * class-balanced sampler's labels, the plots and the protocols' balanced subsets all use
 * it, through _C.age_class on the Python side. */
#ifndef GLAE_AGE_H
#define GLAE_AGE_H

#include <stdint.h>

/* floor(age + 0.5) (half up: 20.5 -> 21, 21.5 -> 22), clamped to [0, num_classes - 1];
 * num_classes >= 1. Computed in double from the float32 age, so the class of a float64
 * age is the class of its float32 value. Callers reject NaN first (NaN gives 0). */
int64_t glae_age_class(float age, int64_t num_classes);

#endif
