#include "core/age.h"

#include <math.h>

int64_t glae_age_class(float age, int64_t num_classes) {
    const double r = floor((double)age + 0.5);
    if (!(r > 0.0)) return 0; /* negative ages and NaN */
    /* compare in double before the cast: inf or a huge age must not overflow int64 */
    if (r >= (double)(num_classes - 1)) return num_classes - 1;
    return (int64_t)r;
}
