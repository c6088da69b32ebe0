/* Stochastic depth in torchvision's "row" mode (EfficientNetV2's MBConv blocks): in
 * training, each sample's residual branch is dropped with probability p and the survivors
 * are scaled by 1 / (1 - p); p = 0.2 * block / blocks. The draw is a pure function of (seed,
 * step, block, sample) through the counter-based generator (core/rng.h), so it does not
 * depend on threads, devices or batch order; the branch is then scaled per sample with
 * channel_scale over one channel (ops.h). */
#ifndef GLAE_NN_DROPPATH_H
#define GLAE_NN_DROPPATH_H

#include <stdint.h>

/* scale[i] = 0 (dropped) or 1 / (1 - p) (kept) for the n samples of `step` in `block`;
 * p in [0, 1). Host memory: the caller copies it to the device with ctx->dev. */
int glae_drop_path_scales(float *scale, int n, float p, uint64_t seed, uint64_t step,
                          uint32_t block);
/* torchvision's schedule: p = stochastic_depth_prob * block / blocks */
float glae_drop_path_prob(float stochastic_depth_prob, int block, int blocks);

#endif
