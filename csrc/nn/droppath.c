#include "nn/droppath.h"

#include <math.h>

#include "core/rng.h"
#include "core/status.h"

/* counter word a of the draws: apart from the other users of a seed (augmentation, init) */
#define DROP_PATH_STREAM 0x64726f70u /* "drop" */

int glae_drop_path_scales(float *scale, int n, float p, uint64_t seed, uint64_t step,
                          uint32_t block) {
    if (n < 0) return glae_fail(GLAE_ERR_VALUE, "drop_path: negative batch %d", n);
    if (!(p >= 0.0f && p < 1.0f))
        return glae_fail(GLAE_ERR_VALUE, "drop_path: p must be in [0, 1), got %g", (double)p);
    const float keep = 1.0f / (1.0f - p);
    for (int i = 0; i < n; i++) {
        uint32_t w[4];
        glae_rand4(seed, DROP_PATH_STREAM, (uint32_t)step, (uint32_t)(step >> 32) ^ block,
                   (uint32_t)i, w);
        /* torchvision: noise.bernoulli_(1 - p), i.e. kept when u < 1 - p */
        scale[i] = glae_u01(w[0]) < 1.0f - p ? keep : 0.0f;
    }
    return GLAE_OK;
}

float glae_drop_path_prob(float stochastic_depth_prob, int block, int blocks) {
    return blocks > 0 ? stochastic_depth_prob * (float)block / (float)blocks : 0.0f;
}
