/* Augmentations: random resized crop + flip (one resampling pass), colour jitter in a
 * random order, RandAugment (N, M) over torchvision's 14 ops, normalisation. Ops follow
 * torchvision's definitions on uint8 images (each op rounds back to uint8); the exact
 * rounding of intermediate values may differ by one level. */
#include "data/augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/rng.h"
#include "core/status.h"
#include "data/align.h"

#define PI 3.14159265358979323846

const char *const glae_op_names[GLAE_OP_COUNT] = {
    "identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
    "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
    "hue", "flip",
};

void glae_aug_config_default(glae_aug_config *c) {
    c->crop = 1;
    c->scale_min = 0.8f; c->scale_max = 1.0f; /* aligned faces: a small patch loses the face */
    c->ratio_min = 3.0f / 4.0f; c->ratio_max = 4.0f / 3.0f;
    c->flip_p = 0.5f;
    c->brightness = c->contrast = c->saturation = 0.4f;
    c->hue = 0.1f;
    c->randaug = 1;
    c->ra_n = 2; c->ra_m = 9; c->ra_bins = 31;
    c->norm = GLAE_NORM_GLAE;
}

int glae_aug_config_check(const glae_aug_config *c) {
    if (!(c->scale_min > 0 && c->scale_min <= c->scale_max && c->scale_max <= 1.0f))
        return glae_fail(GLAE_ERR_VALUE, "augment: scale must satisfy 0 < min <= max <= 1, got (%g, %g)",
                         (double)c->scale_min, (double)c->scale_max);
    if (!(c->ratio_min > 0 && c->ratio_min <= c->ratio_max && isfinite(c->ratio_max)))
        return glae_fail(GLAE_ERR_VALUE, "augment: ratio must satisfy 0 < min <= max, got (%g, %g)",
                         (double)c->ratio_min, (double)c->ratio_max);
    if (!(c->flip_p >= 0 && c->flip_p <= 1))
        return glae_fail(GLAE_ERR_VALUE, "augment: flip must be in [0, 1], got %g", (double)c->flip_p);
    if (!(c->brightness >= 0 && c->contrast >= 0 && c->saturation >= 0) ||
        !isfinite(c->brightness) || !isfinite(c->contrast) || !isfinite(c->saturation))
        return glae_fail(GLAE_ERR_VALUE, "augment: brightness, contrast, saturation must be >= 0");
    if (!(c->hue >= 0 && c->hue <= 0.5f))
        return glae_fail(GLAE_ERR_VALUE, "augment: hue must be in [0, 0.5], got %g", (double)c->hue);
    if (c->ra_bins < 2 || c->ra_m < 0 || c->ra_m >= c->ra_bins || c->ra_n < 0 || c->ra_n > 64)
        return glae_fail(GLAE_ERR_VALUE, "augment: need 0 <= ra_m < ra_bins, ra_bins >= 2, 0 <= ra_n <= 64; got n=%d m=%d bins=%d",
                         c->ra_n, c->ra_m, c->ra_bins);
    if (c->norm < GLAE_NORM_GLAE || c->norm > GLAE_NORM_NONE)
        return glae_fail(GLAE_ERR_VALUE, "augment: unknown normalisation %d", c->norm);
    return GLAE_OK;
}

/* torchvision's rgb_to_grayscale weights */
#define GR 0.2989f
#define GG 0.587f
#define GB 0.114f

void glae_aug_scratch_free(glae_aug_scratch *s) {
    free(s->a);
    free(s->f);
    free(s->rw);
    s->rw = NULL;
    s->rw_cap = 0;
    s->a = s->b = NULL;
    s->f = NULL;
    s->cap = 0;
}

static int scratch_reserve(glae_aug_scratch *s, size_t n) {
    if (s->cap >= n) return GLAE_OK;
    glae_aug_scratch_free(s);
    s->a = malloc(2 * n);
    s->f = malloc(n * sizeof(float));
    if (!s->a || !s->f) {
        glae_aug_scratch_free(s);
        return glae_fail(GLAE_ERR_MEMORY, "augment: out of memory (%zu bytes)", 6 * n);
    }
    s->b = s->a + n;
    s->cap = n;
    return GLAE_OK;
}

/* ---- colour jitter in float on three planes (vectorises); each adjustment clamps to
 * [0, 255] like the uint8 ops, the result is rounded to uint8 once at the end ---------- */

static inline float clamp255(float v) { return v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v; }

/* Planes are R = P[0..n), G = P[ps..), B = P[2 ps..): ps is the full image's pixel count,
 * so the pipeline can run each function on a chunk of pixels (P offset by the chunk start). */
static void to_planes(float *restrict P, size_t ps, const uint8_t *restrict img, size_t n) {
    float *restrict R = P, *restrict G = P + ps, *restrict B = P + 2 * ps;
    for (size_t i = 0; i < n; i++) {
        R[i] = img[3 * i]; G[i] = img[3 * i + 1]; B[i] = img[3 * i + 2];
    }
}

static void from_planes(uint8_t *restrict img, const float *restrict P, size_t ps, size_t n) {
    const float *restrict R = P, *restrict G = P + ps, *restrict B = P + 2 * ps;
    for (size_t i = 0; i < n; i++) {
        img[3 * i] = (uint8_t)(clamp255(R[i]) + 0.5f);
        img[3 * i + 1] = (uint8_t)(clamp255(G[i]) + 0.5f);
        img[3 * i + 2] = (uint8_t)(clamp255(B[i]) + 0.5f);
    }
}

static void f_blend_const(float *restrict P, size_t n, float f, float c) {
    const float k = (1.0f - f) * c;
    for (size_t i = 0; i < n; i++) P[i] = clamp255(f * P[i] + k);
}

/* Sum of the grey values in blocks of 1024 pixels (block boundaries relative to P, so chunks
 * must start at multiples of 1024 for the sum to be the whole image's, bit for bit). */
static double f_gray_sum(const float *P, size_t ps, size_t n) {
    double s = 0;
    for (size_t i0 = 0; i0 < n; i0 += 1024) { /* float partial sums vectorise, double across */
        size_t i1 = i0 + 1024 < n ? i0 + 1024 : n;
        float t[16] = {0};
        size_t i = i0;
        for (; i + 16 <= i1; i += 16)
            for (int j = 0; j < 16; j++) t[j] += GR * P[i + j] + GG * P[ps + i + j] + GB * P[2 * ps + i + j];
        for (; i < i1; i++) t[0] += GR * P[i] + GG * P[ps + i] + GB * P[2 * ps + i];
        for (int j = 0; j < 16; j++) s += t[j];
    }
    return s;
}

static void f_saturation(float *P, size_t ps, size_t n, float f) {
    float *restrict R = P, *restrict G = P + ps, *restrict B = P + 2 * ps;
    for (size_t i = 0; i < n; i++) {
        float g = (1.0f - f) * (GR * R[i] + GG * G[i] + GB * B[i]);
        R[i] = clamp255(f * R[i] + g); G[i] = clamp255(f * G[i] + g); B[i] = clamp255(f * B[i] + g);
    }
}

/* Hue rotation in HSV (torchvision adjust_hue) without branches: V = max and the chroma
 * C = max - min stay, H moves by `shift` turns, and channel n in {R: 5, G: 3, B: 1} is
 * V - C clamp(min(k, 4 - k), 0, 1) with k = (n + H) mod 6. */
/* plain compares: fminf/fmaxf are library calls without -ffinite-math-only */
#define MINF(a, b) ((a) < (b) ? (a) : (b))
#define MAXF(a, b) ((a) > (b) ? (a) : (b))

/* Inputs are finite (0..255), so these flags are safe here and let GCC turn the selects
 * into vector min/max/blends (5x faster); nowhere else in the file. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("finite-math-only", "no-signed-zeros", "no-trapping-math")))
#endif
static void f_hue(float *P, size_t ps, size_t n, float shift) {
    float *restrict R = P, *restrict G = P + ps, *restrict B = P + 2 * ps;
    const float s6 = 6.0f * shift;
    for (size_t i = 0; i < n; i++) {
        float r = R[i], g = G[i], b = B[i];
        float mx = MAXF(MAXF(r, g), b), mn = MINF(MINF(r, g), b), c = mx - mn;
        float inv = 1.0f / MAXF(c, 1e-6f); /* c == 0: every candidate below is 0 * inv */
        float h0 = (g - b) * inv, h1 = 2.0f + (b - r) * inv, h2 = 4.0f + (r - g) * inv;
        float h = mx == r ? h0 : mx == g ? h1 : h2;
        h += s6;
        h -= 6.0f * floorf(h * (1.0f / 6.0f));
        float kr = h + 5.0f, kg = h + 3.0f, kb = h + 1.0f;
        kr = kr >= 6.0f ? kr - 6.0f : kr;
        kg = kg >= 6.0f ? kg - 6.0f : kg;
        kb = kb >= 6.0f ? kb - 6.0f : kb;
        R[i] = mx - c * MINF(MAXF(MINF(kr, 4.0f - kr), 0.0f), 1.0f);
        G[i] = mx - c * MINF(MAXF(MINF(kg, 4.0f - kg), 0.0f), 1.0f);
        B[i] = mx - c * MINF(MAXF(MINF(kb, 4.0f - kb), 0.0f), 1.0f);
    }
}

/* ---- single ops, uint8 in place ------------------------------------------------------ */

static inline uint8_t to_u8(float v) {
    return v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)(v + 0.5f);
}

static void apply_lut(uint8_t *img, size_t n, const uint8_t lut[256]) {
    for (size_t i = 0; i < n; i++) img[i] = lut[img[i]];
}


static double mean_gray(const uint8_t *img, size_t npix) {
    uint64_t s[3] = {0, 0, 0};
    for (size_t i = 0; i < npix; i++) {
        s[0] += img[3 * i]; s[1] += img[3 * i + 1]; s[2] += img[3 * i + 2];
    }
    return npix ? (GR * (double)s[0] + GG * (double)s[1] + GB * (double)s[2]) / (double)npix : 0.0;
}

/* blend(img, constant c, f) = f x + (1 - f) c, as a table */
static void blend_const(uint8_t *img, size_t n, double f, double c) {
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) lut[v] = to_u8((float)(f * v + (1.0 - f) * c));
    apply_lut(img, n, lut);
}

static void op_color(uint8_t *img, size_t npix, float f) {
    for (size_t i = 0; i < npix; i++) {
        uint8_t *p = img + 3 * i;
        float g = (1.0f - f) * (GR * p[0] + GG * p[1] + GB * p[2]);
        p[0] = to_u8(f * p[0] + g); p[1] = to_u8(f * p[1] + g); p[2] = to_u8(f * p[2] + g);
    }
}

/* PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (3x3 kernel
 * [1 1 1; 1 5 1; 1 1 1] / 13), border pixels kept. */
static void op_sharpness(uint8_t *img, int h, int w, float f, uint8_t *tmp) {
    if (h < 3 || w < 3) return;
    memcpy(tmp, img, (size_t)h * w * 3);
    for (int y = 1; y < h - 1; y++)
        for (int x = 1; x < w - 1; x++)
            for (int c = 0; c < 3; c++) {
                const uint8_t *s = tmp + ((size_t)y * w + x) * 3 + c;
                size_t rs = (size_t)w * 3;
                int sum = s[-rs - 3] + s[-rs] + s[-rs + 3] + s[-3] + 5 * s[0] + s[3] + s[rs - 3] +
                          s[rs] + s[rs + 3];
                float deg = (float)(uint8_t)((sum + 6) / 13); /* rounded blur */
                img[((size_t)y * w + x) * 3 + c] = to_u8(deg + f * ((float)s[0] - deg));
            }
}

static void op_autocontrast(uint8_t *img, size_t npix) {
    for (int c = 0; c < 3; c++) {
        int lo = 255, hi = 0;
        for (size_t i = 0; i < npix; i++) {
            int v = img[3 * i + c];
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
        if (hi <= lo) continue;
        uint8_t lut[256];
        float sc = 255.0f / (float)(hi - lo);
        for (int v = 0; v < 256; v++) lut[v] = to_u8((v - lo) * sc);
        for (size_t i = 0; i < npix; i++) img[3 * i + c] = lut[img[3 * i + c]];
    }
}

/* torchvision/PIL equalize, per channel */
static void op_equalize(uint8_t *img, size_t npix) {
    for (int c = 0; c < 3; c++) {
        int64_t hist[256] = {0};
        for (size_t i = 0; i < npix; i++) hist[img[3 * i + c]]++;
        int last = 255;
        while (last > 0 && hist[last] == 0) last--;
        int64_t step = ((int64_t)npix - hist[last]) / 255;
        if (step == 0) continue;
        uint8_t lut[256];
        int64_t cum = 0;
        for (int v = 0; v < 256; v++) {
            int64_t l = (cum + step / 2) / step;
            lut[v] = (uint8_t)(l > 255 ? 255 : l);
            cum += hist[v];
        }
        for (size_t i = 0; i < npix; i++) img[3 * i + c] = lut[img[3 * i + c]];
    }
}

/* Geometric ops: nearest neighbour, fill 0 (torchvision RandAugment's defaults). Mi maps
 * output pixel coordinates to input ones. */
static int geometric(uint8_t *img, int h, int w, const double Mi[6], uint8_t *tmp) {
    memcpy(tmp, img, (size_t)h * w * 3);
    return glae_warp_affine_inv(img, h, w, tmp, h, w, Mi, GLAE_BORDER_CONSTANT, GLAE_INTERP_NEAREST);
}

int glae_augment_op(uint8_t *img, int h, int w, int op, double p, uint8_t *tmp) {
    if (h <= 0 || w <= 0) return glae_fail(GLAE_ERR_VALUE, "augment_op: empty image (%d x %d)", h, w);
    if (op < 0 || op >= GLAE_OP_COUNT) return glae_fail(GLAE_ERR_VALUE, "augment_op: unknown op %d", op);
    if (!isfinite(p)) return glae_fail(GLAE_ERR_VALUE, "augment_op: parameter is not finite");
    size_t npix = (size_t)h * w, n = npix * 3;
    uint8_t *own = NULL;
    int geo = op == GLAE_OP_ROTATE || op == GLAE_OP_SHEAR_X || op == GLAE_OP_SHEAR_Y ||
              op == GLAE_OP_TRANSLATE_X || op == GLAE_OP_TRANSLATE_Y || op == GLAE_OP_SHARPNESS;
    if (geo && !tmp) {
        tmp = own = malloc(n);
        if (!own) return glae_fail(GLAE_ERR_MEMORY, "augment_op: out of memory");
    }
    int st = GLAE_OK;
    double Mi[6] = {1, 0, 0, 0, 1, 0};
    switch (op) {
    case GLAE_OP_IDENTITY: break;
    case GLAE_OP_AUTOCONTRAST: op_autocontrast(img, npix); break;
    case GLAE_OP_EQUALIZE: op_equalize(img, npix); break;
    case GLAE_OP_ROTATE: { /* counter-clockwise on screen about the image centre */
        double a = p * PI / 180.0, ca = cos(a), sa = sin(a);
        double cx = (w - 1) * 0.5, cy = (h - 1) * 0.5;
        Mi[0] = ca; Mi[1] = -sa; Mi[2] = cx - ca * cx + sa * cy;
        Mi[3] = sa; Mi[4] = ca;  Mi[5] = cy - sa * cx - ca * cy;
        st = geometric(img, h, w, Mi, tmp);
        break;
    }
    case GLAE_OP_SOLARIZE: {
        uint8_t lut[256];
        for (int v = 0; v < 256; v++) lut[v] = (double)v >= p ? (uint8_t)(255 - v) : (uint8_t)v;
        apply_lut(img, n, lut);
        break;
    }
    case GLAE_OP_COLOR: op_color(img, npix, (float)p); break;
    case GLAE_OP_POSTERIZE: {
        if (p < 0 || p > 8) { st = glae_fail(GLAE_ERR_VALUE, "augment_op: posterize bits must be in [0, 8], got %g", p); break; }
        int bits = (int)p;
        uint8_t mask = (uint8_t)(0xFF00u >> bits);
        for (size_t i = 0; i < n; i++) img[i] &= mask;
        break;
    }
    case GLAE_OP_CONTRAST: blend_const(img, n, p, mean_gray(img, npix)); break;
    case GLAE_OP_BRIGHTNESS: blend_const(img, n, p, 0.0); break;
    case GLAE_OP_SHARPNESS: op_sharpness(img, h, w, (float)p, tmp); break;
    case GLAE_OP_SHEAR_X: Mi[1] = p; st = geometric(img, h, w, Mi, tmp); break; /* about (0, 0) as torchvision */
    case GLAE_OP_SHEAR_Y: Mi[3] = p; st = geometric(img, h, w, Mi, tmp); break;
    case GLAE_OP_TRANSLATE_X: Mi[2] = -p; st = geometric(img, h, w, Mi, tmp); break;
    case GLAE_OP_TRANSLATE_Y: Mi[5] = -p; st = geometric(img, h, w, Mi, tmp); break;
    case GLAE_OP_HUE:
        if (p < -0.5 || p > 0.5) { st = glae_fail(GLAE_ERR_VALUE, "augment_op: hue shift must be in [-0.5, 0.5], got %g", p); break; }
        {
            float *P = malloc(sizeof(float) * n);
            if (!P) { st = glae_fail(GLAE_ERR_MEMORY, "augment_op: out of memory"); break; }
            to_planes(P, npix, img, npix);
            f_hue(P, npix, npix, (float)p);
            from_planes(img, P, npix, npix);
            free(P);
        }
        break;
    case GLAE_OP_FLIP:
        for (int y = 0; y < h; y++) {
            uint8_t *r = img + (size_t)y * w * 3;
            for (int x = 0; x < w / 2; x++)
                for (int c = 0; c < 3; c++) {
                    uint8_t t = r[3 * x + c];
                    r[3 * x + c] = r[3 * (w - 1 - x) + c];
                    r[3 * (w - 1 - x) + c] = t;
                }
        }
        break;
    }
    free(own);
    return st;
}

/* torchvision RandAugment._augmentation_space(num_bins, (h, w)) at bin m */
double glae_randaug_magnitude(int op, int m, int bins, int h, int w) {
    double fr = (double)m / (double)(bins - 1);
    switch (op) {
    case GLAE_OP_SHEAR_X: case GLAE_OP_SHEAR_Y: return 0.3 * fr;
    case GLAE_OP_TRANSLATE_X: return trunc(150.0 / 331.0 * w * fr); /* int() in torchvision */
    case GLAE_OP_TRANSLATE_Y: return trunc(150.0 / 331.0 * h * fr);
    case GLAE_OP_ROTATE: return 30.0 * fr;
    case GLAE_OP_BRIGHTNESS: case GLAE_OP_COLOR: case GLAE_OP_CONTRAST: case GLAE_OP_SHARPNESS:
        return 0.9 * fr;
    case GLAE_OP_POSTERIZE: return 8.0 - nearbyint((double)m / ((bins - 1) / 4.0)); /* half-even like torch.round */
    case GLAE_OP_SOLARIZE: return 255.0 * (1.0 - fr);
    default: return 0.0;
    }
}

int glae_randaug_signed(int op) {
    return op == GLAE_OP_ROTATE || op == GLAE_OP_COLOR || op == GLAE_OP_CONTRAST ||
           op == GLAE_OP_BRIGHTNESS || op == GLAE_OP_SHARPNESS || op == GLAE_OP_SHEAR_X ||
           op == GLAE_OP_SHEAR_Y || op == GLAE_OP_TRANSLATE_X || op == GLAE_OP_TRANSLATE_Y;
}

/* ---- the pipeline -------------------------------------------------------------------- */

/* key: (seed; epoch, low index word, stream | repeat, counter starting at the high index
 * word << 20), see augment.h */
static void stream(glae_rng *r, uint64_t seed, uint32_t epoch, int64_t index, int op, uint32_t rep) {
    glae_rng_init(r, seed, epoch, (uint32_t)index, ((uint32_t)op << 24) | (rep & 0xFFFFFFu));
    r->d = (uint32_t)(((uint64_t)index >> 32) << 20);
}

/* torchvision RandomResizedCrop.get_params: 10 tries, then a centre crop of clamped ratio */
static void rrc_box(glae_rng *r, int h, int w, const glae_aug_config *c, int *bx, int *by, int *bw, int *bh) {
    double area = (double)h * w, lr0 = log(c->ratio_min), lr1 = log(c->ratio_max);
    for (int t = 0; t < 10; t++) {
        double ta = area * (c->scale_min + (c->scale_max - c->scale_min) * glae_rng_uniform(r));
        double ar = exp(lr0 + (lr1 - lr0) * glae_rng_uniform(r));
        int cw = (int)nearbyint(sqrt(ta * ar)), ch = (int)nearbyint(sqrt(ta / ar));
        if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
            *by = (int)glae_rng_below(r, (uint32_t)(h - ch + 1));
            *bx = (int)glae_rng_below(r, (uint32_t)(w - cw + 1));
            *bw = cw; *bh = ch;
            return;
        }
    }
    double in_ratio = (double)w / h;
    int cw, ch;
    if (in_ratio < c->ratio_min) { cw = w; ch = (int)nearbyint(w / c->ratio_min); }
    else if (in_ratio > c->ratio_max) { ch = h; cw = (int)nearbyint(h * c->ratio_max); }
    else { cw = w; ch = h; }
    if (ch < 1) ch = 1;
    if (cw < 1) cw = 1;
    *by = (h - ch) / 2; *bx = (w - cw) / 2; *bw = cw; *bh = ch;
}

#define JCHUNK 2048 /* pixels; a multiple of 1024 (f_gray_sum blocks) and of 16 (normalise rows) */

/* colour jitter adjustments order[k0..k1) on a chunk of m pixels (contrast excluded: it
 * needs the whole image's mean grey and is applied by the caller) */
static void jitter_ops(float *P, size_t ps, size_t m, const int order[4], int k0, int k1,
                       const double val[4], const glae_aug_config *cfg) {
    for (int k = k0; k < k1; k++) {
        int o = order[k];
        float v = (float)val[o];
        if (o == 0 && cfg->brightness > 0)
            for (int ch = 0; ch < 3; ch++) f_blend_const(P + ch * ps, m, v, 0.0f);
        else if (o == 2 && cfg->saturation > 0) f_saturation(P, ps, m, v);
        else if (o == 3 && cfg->hue > 0) f_hue(P, ps, m, v);
    }
}

int glae_augment_sample(void *dst, int out_u8, int size, const uint8_t *img, int h, int w,
                        const glae_aug_config *cfg, uint64_t seed, uint32_t epoch, int64_t index,
                        uint32_t rep, glae_aug_scratch *s) {
    if (size <= 0) return glae_fail(GLAE_ERR_VALUE, "augment: out_size must be > 0, got %d", size);
    size_t npix = (size_t)size * size;
    GLAE_TRY(scratch_reserve(s, npix * 3));
    /* uint8 output: every stage below works in place on `a`, so it can be the output */
    uint8_t *a = out_u8 ? dst : s->a;
    float *out = out_u8 ? NULL : dst;
    glae_rng r;
    /* 1. random resized crop + flip in one resampling pass (LAE 2.3) */
    int bx = 0, by = 0, bw = w, bh = h;
    if (cfg->crop) {
        stream(&r, seed, epoch, index, GLAE_STREAM_CROP, rep);
        rrc_box(&r, h, w, cfg, &bx, &by, &bw, &bh);
    }
    int flip = 0;
    if (cfg->flip_p > 0) {
        stream(&r, seed, epoch, index, GLAE_STREAM_FLIP, rep);
        flip = glae_rng_uniform(&r) < cfg->flip_p;
    }
    GLAE_TRY(glae_resize_box_ws(a, size, size, img, h, w, bx, by, bw, bh, flip, &s->rw, &s->rw_cap));
    /* 2. colour jitter, the four adjustments in a random order (torchvision ColorJitter) */
    if (cfg->brightness > 0 || cfg->contrast > 0 || cfg->saturation > 0 || cfg->hue > 0) {
        stream(&r, seed, epoch, index, GLAE_STREAM_JITTER, rep);
        int order[4] = {0, 1, 2, 3};
        for (int i = 3; i > 0; i--) { /* Fisher-Yates */
            int j = (int)glae_rng_below(&r, (uint32_t)(i + 1)), t = order[i];
            order[i] = order[j]; order[j] = t;
        }
        const float fac[3] = {cfg->brightness, cfg->contrast, cfg->saturation};
        double val[4];
        for (int k = 0; k < 3; k++) {
            double lo = fac[k] < 1.0f ? 1.0 - fac[k] : 0.0, hi = 1.0 + fac[k];
            val[k] = lo + (hi - lo) * glae_rng_uniform(&r);
        }
        val[3] = cfg->hue * (2.0 * glae_rng_uniform(&r) - 1.0);
        /* Chunks of JCHUNK pixels stay in L1/L2 across the adjustments: pass 1 runs those
         * before contrast (and sums the grey values contrast needs), pass 2 the rest, the
         * rounding to uint8 and, without RandAugment, the normalisation. Each pixel sees the
         * same operations in the same order as whole-image passes, so the output is
         * bitwise the same. */
        float *P = s->f;
        int kc = 4; /* position of contrast in the order (4: none) */
        for (int k = 0; k < 4; k++)
            if (order[k] == 1 && cfg->contrast > 0) kc = k;
        double gsum = 0;
        for (size_t c0 = 0; c0 < npix; c0 += JCHUNK) {
            size_t m = npix - c0 < JCHUNK ? npix - c0 : JCHUNK;
            to_planes(P + c0, npix, a + 3 * c0, m);
            jitter_ops(P + c0, npix, m, order, 0, kc, val, cfg);
            if (kc < 4) gsum += f_gray_sum(P + c0, npix, m);
        }
        const float mean = (float)(npix ? gsum / (double)npix : 0.0);
        const int fuse_norm = !out_u8 && !(cfg->randaug && cfg->ra_n > 0);
        for (size_t c0 = 0; c0 < npix; c0 += JCHUNK) {
            size_t m = npix - c0 < JCHUNK ? npix - c0 : JCHUNK;
            if (kc < 4) {
                for (int ch = 0; ch < 3; ch++) f_blend_const(P + c0 + ch * npix, m, (float)val[1], mean);
                jitter_ops(P + c0, npix, m, order, kc + 1, 4, val, cfg);
            }
            from_planes(a + 3 * c0, P + c0, npix, m);
            if (fuse_norm) GLAE_TRY(glae_normalise_u8(NULL, out + 3 * c0, a + 3 * c0, 3 * (int64_t)m, cfg->norm));
        }
        if (fuse_norm) return GLAE_OK;
    }
    /* 3. RandAugment: N ops drawn uniformly, magnitude bin M, random sign */
    if (cfg->randaug && cfg->ra_n > 0) {
        stream(&r, seed, epoch, index, GLAE_STREAM_RANDAUG, rep);
        for (int k = 0; k < cfg->ra_n; k++) {
            int op = (int)glae_rng_below(&r, GLAE_RANDAUG_OPS);
            int neg = (int)glae_rng_below(&r, 2);
            double m = glae_randaug_magnitude(op, cfg->ra_m, cfg->ra_bins, size, size);
            if (glae_randaug_signed(op)) {
                if (neg) m = -m;
                if (op >= GLAE_OP_COLOR && op <= GLAE_OP_SHARPNESS && op != GLAE_OP_POSTERIZE) m += 1.0;
            }
            GLAE_TRY(glae_augment_op(a, size, size, op, m, s->b));
        }
    }
    /* 4. normalisation to float32 (uint8 output: left to the model, Model.train_step) */
    return out_u8 ? GLAE_OK : glae_normalise_u8(NULL, out, a, 3 * (int64_t)npix, cfg->norm);
}

int glae_occurrences(uint32_t *repeat, const int64_t *idx, int64_t b, int64_t n) {
    uint32_t *cnt = calloc((size_t)(n > 0 ? n : 1), sizeof *cnt);
    if (!cnt) return glae_fail(GLAE_ERR_MEMORY, "augment: out of memory");
    for (int64_t i = 0; i < b; i++) {
        if (idx[i] < 0 || idx[i] >= n) {
            free(cnt);
            return glae_fail(GLAE_ERR_VALUE, "augment: index %lld at position %lld outside [0, %lld)",
                             (long long)idx[i], (long long)i, (long long)n);
        }
        repeat[i] = cnt[idx[i]]++;
    }
    free(cnt);
    return GLAE_OK;
}

int glae_augment_batch(void *out, int out_u8, int size, const uint8_t *images, int64_t n, int h, int w,
                       const int64_t *indices, int64_t b, const glae_aug_config *cfg,
                       uint64_t seed, uint32_t epoch, int nthreads) {
    if (size <= 0) return glae_fail(GLAE_ERR_VALUE, "augment_batch: out_size must be > 0, got %d", size);
    if (h <= 0 || w <= 0) return glae_fail(GLAE_ERR_VALUE, "augment_batch: empty images (%d x %d)", h, w);
    if (b < 0 || n < 0) return glae_fail(GLAE_ERR_VALUE, "augment_batch: negative size");
    GLAE_TRY(glae_aug_config_check(cfg));
    if (b == 0) return GLAE_OK;
    uint32_t *rep = malloc(sizeof *rep * (size_t)b);
    if (!rep) return glae_fail(GLAE_ERR_MEMORY, "augment_batch: out of memory");
    int st = glae_occurrences(rep, indices, b, n);
    if (st) { free(rep); return st; }
    const size_t img_sz = (size_t)h * w * 3;
    const size_t out_bytes = (size_t)size * size * 3 * (out_u8 ? 1 : sizeof(float));
    int64_t bad = b; /* first failing sample, so the error reported does not depend on threads */
    int bad_st = GLAE_OK;
    char bad_msg[256] = {0};
#ifdef _OPENMP
    if (nthreads <= 0) nthreads = omp_get_max_threads();
#else
    nthreads = 1;
#endif
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && b > 1)
    {
        glae_aug_scratch s = {0};
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < b; i++) {
            int e = glae_augment_sample((char *)out + (size_t)i * out_bytes, out_u8, size,
                                        images + (size_t)indices[i] * img_sz,
                                        h, w, cfg, seed, epoch, indices[i], rep[i], &s);
            if (e) {
#pragma omp critical(glae_augment_err)
                if (i < bad) {
                    bad = i;
                    bad_st = e;
                    strncpy(bad_msg, glae_last_error(), sizeof bad_msg - 1);
                }
            }
        }
        glae_aug_scratch_free(&s);
    }
    free(rep);
    if (bad_st) return glae_fail(bad_st, "%s", bad_msg);
    return GLAE_OK;
}
