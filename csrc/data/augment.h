/* Training augmentations on uint8 HWC RGB crops and the final normalisation to float32
 * NHWC (LAE sec. 2.3, GLAE sec. V-A; docs/data-pipeline.md).
 *
 * Randomness: every random choice for sample `index` in `epoch` is drawn from the Philox
 * stream keyed by (seed; epoch, index, op, repeat), op being the stage (crop, flip, jitter,
 * RandAugment), repeat the k-th occurrence of the index in the sequence being processed.
 * So a sample's output is independent of thread count, batch composition and order. */
#ifndef GLAE_AUGMENT_H
#define GLAE_AUGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h" /* GLAE_NORM_*, glae_normalise_u8 */


/* The 14 RandAugment ops in the order the RandAugment paper lists them (Cubuk et al.
 * 2020), not torchvision's (identity, shear x/y, translate x/y, rotate, brightness,
 * colour, contrast, sharpness, posterize, solarize, autocontrast, equalize); only the
 * magnitude ranges follow torchvision. Then the extra single ops that colour jitter and
 * the flip use (for the per-op test binding). */
enum {
    GLAE_OP_IDENTITY = 0, GLAE_OP_AUTOCONTRAST, GLAE_OP_EQUALIZE, GLAE_OP_ROTATE,
    GLAE_OP_SOLARIZE, GLAE_OP_COLOR, GLAE_OP_POSTERIZE, GLAE_OP_CONTRAST, GLAE_OP_BRIGHTNESS,
    GLAE_OP_SHARPNESS, GLAE_OP_SHEAR_X, GLAE_OP_SHEAR_Y, GLAE_OP_TRANSLATE_X,
    GLAE_OP_TRANSLATE_Y, /* 14 RandAugment ops above */
    GLAE_OP_HUE, GLAE_OP_FLIP, GLAE_OP_COUNT
};
#define GLAE_RANDAUG_OPS 14
extern const char *const glae_op_names[GLAE_OP_COUNT];

/* Random streams (the `op` part of the key). */
enum { GLAE_STREAM_CROP = 1, GLAE_STREAM_FLIP = 2, GLAE_STREAM_JITTER = 3, GLAE_STREAM_RANDAUG = 4 };

typedef struct {
    int crop;                         /* random resized crop on/off */
    float scale_min, scale_max;       /* fraction of the image area (default 0.8, 1.0) */
    float ratio_min, ratio_max;       /* aspect w/h, sampled log-uniformly (3/4, 4/3) */
    float flip_p;                     /* horizontal flip probability (0.5; 0 = off) */
    float brightness, contrast, saturation; /* jitter factor f: uniform in [max(0,1-f), 1+f]; 0 = off */
    float hue;                        /* hue shift uniform in [-hue, hue], hue <= 0.5; 0 = off */
    int randaug;                      /* RandAugment on/off */
    int ra_n, ra_m, ra_bins;          /* N ops, magnitude M of `bins` (2, 9, 31) */
    int norm;                         /* GLAE_NORM_* */
} glae_aug_config;

void glae_aug_config_default(glae_aug_config *c);
int glae_aug_config_check(const glae_aug_config *c);

/* The parameter RandAugment uses for `op` at magnitude m of `bins` on an h x w image
 * (torchvision's ranges), before the random sign. */
double glae_randaug_magnitude(int op, int m, int bins, int h, int w);
int glae_randaug_signed(int op);

/* Apply one op in place to img (h, w, 3) with its raw parameter: factor (brightness,
 * contrast, color = saturation, sharpness), degrees (rotate, counter-clockwise), shear
 * factor, pixels (translate), threshold (solarize), bits (posterize), hue shift in turns
 * (hue). tmp: h*w*3 bytes of scratch, or NULL to allocate. */
int glae_augment_op(uint8_t *img, int h, int w, int op, double param, uint8_t *tmp);

typedef struct {
    uint8_t *a, *b; /* two size*size*3 byte images */
    float *f;       /* three size*size float planes (colour jitter) */
    size_t cap;     /* bytes in a (and in b) */
    float *rw;      /* resampler workspace */
    size_t rw_cap;  /* floats in rw */
} glae_aug_scratch;
void glae_aug_scratch_free(glae_aug_scratch *s);

/* Augment one image (h, w, 3) into out (size, size, 3): float32 normalised with cfg->norm,
 * or (out_u8) the uint8 pixels before the normalisation, for a model that normalises on
 * its device (glae_normalise_u8 gives the float32 output from them, bit for bit). */
int glae_augment_sample(void *out, int out_u8, int size, const uint8_t *img, int h, int w,
                        const glae_aug_config *cfg, uint64_t seed, uint32_t epoch, int64_t index,
                        uint32_t repeat, glae_aug_scratch *s);

/* repeat[i] = number of earlier occurrences of idx[i] in idx[0..i) (idx in [0, n)). */
int glae_occurrences(uint32_t *repeat, const int64_t *idx, int64_t b, int64_t n);

/* out (b, size, size, 3) float32 or (out_u8) uint8, as glae_augment_sample, from images
 * (n, h, w, 3) at indices (b,), OpenMP with nthreads (<= 0: the OpenMP default). Fails on
 * an index outside [0, n). */
int glae_augment_batch(void *out, int out_u8, int size, const uint8_t *images, int64_t n, int h, int w,
                       const int64_t *indices, int64_t b, const glae_aug_config *cfg,
                       uint64_t seed, uint32_t epoch, int nthreads);

#endif
