/* Face alignment (5-point similarity onto the ArcFace template), affine warps and the
 * antialiased box resampler shared with the augmentations. */
#include "data/align.h"
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

const float glae_arcface_template[10] = {
    38.2946f, 51.6963f, 73.5318f, 51.5014f, 56.0252f, 71.7366f, 41.5493f, 92.3655f, 70.7299f, 92.2041f,
};

static inline uint8_t clamp_u8(double v) {
    if (!(v > 0.0)) return 0; /* also NaN */
    if (v >= 255.0) return 255;
    return (uint8_t)(v + 0.5);
}

int glae_similarity_transform(double M[6], const float *src, const float *dst, int n) {
    if (n < 2) return glae_fail(GLAE_ERR_VALUE, "similarity_transform: need >= 2 points, got %d", n);
    double msx = 0, msy = 0, mdx = 0, mdy = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(src[2 * i]) || !isfinite(src[2 * i + 1]) || !isfinite(dst[2 * i]) ||
            !isfinite(dst[2 * i + 1]))
            return glae_fail(GLAE_ERR_VALUE, "similarity_transform: point %d is not finite", i);
        msx += src[2 * i]; msy += src[2 * i + 1];
        mdx += dst[2 * i]; mdy += dst[2 * i + 1];
    }
    msx /= n; msy /= n; mdx /= n; mdy /= n;
    /* With centred points, the best s R = [[a, -b], [b, a]] minimises
     * sum |d - (a, -b; b, a) s|^2: a = sum(s.d) / sum|s|^2, b = sum(s x d) / sum|s|^2. This is
     * Umeyama's solution in 2-D (a rotation, never a reflection). */
    double ss = 0, dot = 0, crs = 0;
    for (int i = 0; i < n; i++) {
        double sx = src[2 * i] - msx, sy = src[2 * i + 1] - msy;
        double dx = dst[2 * i] - mdx, dy = dst[2 * i + 1] - mdy;
        ss += sx * sx + sy * sy;
        dot += sx * dx + sy * dy;
        crs += sx * dy - sy * dx;
    }
    if (!(ss > 1e-12))
        return glae_fail(GLAE_ERR_VALUE, "similarity_transform: source points coincide");
    double a = dot / ss, b = crs / ss;
    M[0] = a; M[1] = -b; M[2] = mdx - (a * msx - b * msy);
    M[3] = b; M[4] = a;  M[5] = mdy - (b * msx + a * msy);
    return GLAE_OK;
}

int glae_template_points(float out[10], int size, float margin) {
    if (size <= 0) return glae_fail(GLAE_ERR_VALUE, "template_points: size must be > 0, got %d", size);
    if (!(margin >= 0.0f) || !isfinite(margin))
        return glae_fail(GLAE_ERR_VALUE, "template_points: margin must be >= 0, got %g", (double)margin);
    /* the 112-box shrunk to size / (1 + 2 margin), centred in the output */
    double s = (double)size / (112.0 * (1.0 + 2.0 * margin));
    double off = (double)size * margin / (1.0 + 2.0 * margin);
    for (int i = 0; i < 10; i++) out[i] = (float)(glae_arcface_template[i] * s + off);
    return GLAE_OK;
}

int glae_affine_invert(double inv[6], const double M[6]) {
    double det = M[0] * M[4] - M[1] * M[3];
    if (!isfinite(det) || fabs(det) < 1e-12)
        return glae_fail(GLAE_ERR_VALUE, "warp_affine: matrix is singular (det %g)", det);
    double i0 = M[4] / det, i1 = -M[1] / det, i3 = -M[3] / det, i4 = M[0] / det;
    inv[0] = i0; inv[1] = i1; inv[2] = -(i0 * M[2] + i1 * M[5]);
    inv[3] = i3; inv[4] = i4; inv[5] = -(i3 * M[2] + i4 * M[5]);
    return GLAE_OK;
}

static int check_img(const char *fn, int h, int w) {
    if (h <= 0 || w <= 0) return glae_fail(GLAE_ERR_VALUE, "%s: empty image (%d x %d)", fn, h, w);
    return GLAE_OK;
}

int glae_warp_affine_inv(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w,
                         const double Mi[6], int border, int interp) {
    GLAE_TRY(check_img("warp_affine", h, w));
    if (oh <= 0 || ow <= 0)
        return glae_fail(GLAE_ERR_VALUE, "warp_affine: output size must be > 0, got %d x %d", oh, ow);
    if (border != GLAE_BORDER_CONSTANT && border != GLAE_BORDER_REPLICATE)
        return glae_fail(GLAE_ERR_VALUE, "warp_affine: unknown border %d", border);
    for (int k = 0; k < 6; k++)
        if (!isfinite(Mi[k])) return glae_fail(GLAE_ERR_VALUE, "warp_affine: matrix is not finite");
    const int rep = border == GLAE_BORDER_REPLICATE;
    for (int y = 0; y < oh; y++) {
        uint8_t *o = out + (size_t)y * ow * 3;
        for (int x = 0; x < ow; x++, o += 3) {
            double sx = Mi[0] * x + Mi[1] * y + Mi[2];
            double sy = Mi[3] * x + Mi[4] * y + Mi[5];
            if (interp == GLAE_INTERP_NEAREST) {
                double rx = floor(sx + 0.5), ry = floor(sy + 0.5);
                if (rep) {
                    rx = rx < 0 ? 0 : rx > w - 1 ? w - 1 : rx;
                    ry = ry < 0 ? 0 : ry > h - 1 ? h - 1 : ry;
                } else if (rx < 0 || ry < 0 || rx > w - 1 || ry > h - 1) {
                    o[0] = o[1] = o[2] = 0;
                    continue;
                }
                const uint8_t *p = in + ((size_t)ry * w + (size_t)rx) * 3;
                o[0] = p[0]; o[1] = p[1]; o[2] = p[2];
                continue;
            }
            /* far outside: skip the arithmetic (and keep int conversions in range) */
            if (!(sx > -2.0 && sy > -2.0 && sx < w + 1.0 && sy < h + 1.0)) {
                if (!rep) { o[0] = o[1] = o[2] = 0; continue; }
                sx = sx < -1.0 ? -1.0 : sx > w ? w : sx;
                sy = sy < -1.0 ? -1.0 : sy > h ? h : sy;
            }
            double fx = floor(sx), fy = floor(sy);
            double ax = sx - fx, ay = sy - fy;
            int x0 = (int)fx, y0 = (int)fy;
            double acc[3] = {0, 0, 0};
            for (int dy = 0; dy < 2; dy++) {
                double wy = dy ? ay : 1.0 - ay;
                int yy = y0 + dy;
                if (yy < 0 || yy >= h) {
                    if (!rep) continue; /* contributes the constant 0 */
                    yy = yy < 0 ? 0 : h - 1;
                }
                for (int dx = 0; dx < 2; dx++) {
                    double wgt = wy * (dx ? ax : 1.0 - ax);
                    int xx = x0 + dx;
                    if (xx < 0 || xx >= w) {
                        if (!rep) continue;
                        xx = xx < 0 ? 0 : w - 1;
                    }
                    const uint8_t *p = in + ((size_t)yy * w + xx) * 3;
                    acc[0] += wgt * p[0]; acc[1] += wgt * p[1]; acc[2] += wgt * p[2];
                }
            }
            o[0] = clamp_u8(acc[0]); o[1] = clamp_u8(acc[1]); o[2] = clamp_u8(acc[2]);
        }
    }
    return GLAE_OK;
}

int glae_warp_affine(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w,
                     const double M[6], int border) {
    double Mi[6];
    for (int k = 0; k < 6; k++)
        if (!isfinite(M[k])) return glae_fail(GLAE_ERR_VALUE, "warp_affine: matrix is not finite");
    GLAE_TRY(glae_affine_invert(Mi, M));
    return glae_warp_affine_inv(out, oh, ow, in, h, w, Mi, border, GLAE_INTERP_BILINEAR);
}

int glae_align_face(uint8_t *out, int size, const uint8_t *in, int h, int w, const float lm[10],
                    float margin) {
    float dst[10];
    double M[6];
    GLAE_TRY(check_img("align_face", h, w));
    GLAE_TRY(glae_template_points(dst, size, margin));
    GLAE_TRY(glae_similarity_transform(M, lm, dst, 5));
    return glae_warp_affine(out, size, size, in, h, w, M, GLAE_BORDER_CONSTANT);
}

/* One axis of the separable resampler: for each of n outputs, the first input index and
 * ntap weights (stored with stride `taps`). Triangle filter of radius fs = max(scale, 1),
 * taps falling outside [0, in_n) are dropped and the rest renormalised (edge replicate). */
static void axis_coeffs(int n, double x0, double len, int in_n, int taps, int *first, float *wt) {
    double scale = len / n, fs = scale > 1.0 ? scale : 1.0;
    for (int i = 0; i < n; i++) {
        double c = x0 + (i + 0.5) * scale;
        int lo = (int)floor(c - fs + 0.5), hi = (int)floor(c + fs + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_n) hi = in_n;
        if (hi - lo > taps) hi = lo + taps;
        if (hi <= lo) { /* box outside the image: clamp to the nearest pixel */
            lo = c < 0 ? 0 : in_n - 1;
            hi = lo + 1;
        }
        double sum = 0, tmp[hi - lo];
        for (int j = lo; j < hi; j++) {
            double t = fabs((j + 0.5 - c) / fs);
            tmp[j - lo] = t < 1.0 ? 1.0 - t : 0.0;
            sum += tmp[j - lo];
        }
        first[i] = lo;
        float *wi = wt + (size_t)i * taps;
        for (int k = 0; k < taps; k++) wi[k] = 0.0f;
        if (sum <= 0) { /* only zero weights (c exactly between far taps): nearest */
            wi[0] = 1.0f;
            int nn = (int)floor(c);
            first[i] = nn < 0 ? 0 : nn >= in_n ? in_n - 1 : nn;
            continue;
        }
        /* drop zero weights at both ends so the passes run over the real taps only (2 when
         * enlarging instead of 3) */
        int a = lo, b = hi;
        while (a < b && tmp[a - lo] == 0.0) a++;
        while (b > a && tmp[b - 1 - lo] == 0.0) b--;
        first[i] = a;
        for (int j = a; j < b; j++) wi[j - a] = (float)(tmp[j - lo] / sum);
    }
}

/* Inner loops with restrict pointers so they vectorise. */
static void axpy_u8(float *restrict acc, const uint8_t *restrict src, float wk, int n) {
    for (int i = 0; i < n; i++) acc[i] += wk * (float)src[i];
}
static void gather2(float *restrict o, const float *restrict v, const float *restrict w0,
                    const int *restrict i0, const float *restrict w1, int n) {
    for (int e = 0; e < n; e++) o[e] = w0[e] * v[i0[e]] + w1[e] * v[i0[e] + 3];
}
static void gather_axpy(float *restrict o, const float *restrict v, const float *restrict wk,
                        const int *restrict ik, int n) {
    for (int e = 0; e < n; e++) o[e] += wk[e] * v[ik[e]];
}
/* gather2 without gathers (AVX2's and AVX-512's gather instructions are slow): PERM_W
 * output elements at a time read a window of PERM_WIN = 2 PERM_W consecutive acc values
 * starting at base[b] and pick their taps with permutes (off0/off1 are the tap indices
 * minus base, in [0, PERM_WIN)). Same products and sum as gather2 (mul, mul, add; no FMA),
 * so the result is bitwise identical. */
#if defined(__AVX512F__)
#define PERM_W 16
static void gather2_perm(float *restrict o, const float *restrict v, const float *restrict w0,
                         const float *restrict w1, const int *restrict off0,
                         const int *restrict off1, const int *restrict base, int nblk) {
    for (int b = 0; b < nblk; b++) {
        const float *src = v + base[b];
        __m512 lo = _mm512_loadu_ps(src), hi = _mm512_loadu_ps(src + 16);
        __m512 a = _mm512_permutex2var_ps(lo, _mm512_loadu_si512(off0 + 16 * b), hi);
        __m512 c = _mm512_permutex2var_ps(lo, _mm512_loadu_si512(off1 + 16 * b), hi);
        __m512 r = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(w0 + 16 * b), a),
                                 _mm512_mul_ps(_mm512_loadu_ps(w1 + 16 * b), c));
        _mm512_storeu_ps(o + 16 * b, r);
    }
}
#elif defined(__AVX2__)
#define PERM_W 8
/* AVX2 has no two-register permute: permute each 8-float half by the offset's low 3 bits,
 * then take the half its bit 3 names (blendv reads the sign bit, hence the shift by 28). */
static inline __m256 pick16(__m256 lo, __m256 hi, __m256i off) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, off), _mm256_permutevar8x32_ps(hi, off),
                            _mm256_castsi256_ps(_mm256_slli_epi32(off, 28)));
}
static void gather2_perm(float *restrict o, const float *restrict v, const float *restrict w0,
                         const float *restrict w1, const int *restrict off0,
                         const int *restrict off1, const int *restrict base, int nblk) {
    for (int b = 0; b < nblk; b++) {
        const float *src = v + base[b];
        __m256 lo = _mm256_loadu_ps(src), hi = _mm256_loadu_ps(src + 8);
        __m256 a = pick16(lo, hi, _mm256_loadu_si256((const __m256i *)(off0 + 8 * b)));
        __m256 c = pick16(lo, hi, _mm256_loadu_si256((const __m256i *)(off1 + 8 * b)));
        __m256 r = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w0 + 8 * b), a),
                                 _mm256_mul_ps(_mm256_loadu_ps(w1 + 8 * b), c));
        _mm256_storeu_ps(o + 8 * b, r);
    }
}
#endif
#ifdef PERM_W
#define PERM_WIN (2 * PERM_W)
#else
#define PERM_W 16 /* only sizes the (unused) permute tables */
#endif
static void round_u8(uint8_t *restrict o, const float *restrict v, int n) {
    for (int i = 0; i < n; i++) {
        float t = v[i];
        t = t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t;
        o[i] = (uint8_t)(t + 0.5f);
    }
}

#define APAD 40 /* zeroed floats after the acc row: gather2 reads 3 past it, gather2_perm PERM_WIN */

/* Separable resampling: per output row, the vertical pass over the uint8 input rows
 * (contiguous, vectorised) gives one interleaved float row of the needed columns; the
 * horizontal pass gathers from it with per-element (x, channel) index and weight tables
 * (flip folded in); the row is rounded to uint8. *buf / *cap: reusable float workspace. */
int glae_resize_box_ws(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w, double x0,
                       double y0, double bw, double bh, int flip, float **buf, size_t *cap) {
    GLAE_TRY(check_img("resize", h, w));
    if (oh <= 0 || ow <= 0)
        return glae_fail(GLAE_ERR_VALUE, "resize: output size must be > 0, got %d x %d", oh, ow);
    if (!(bw > 0 && bh > 0) || !isfinite(x0) || !isfinite(y0) || !isfinite(bw) || !isfinite(bh))
        return glae_fail(GLAE_ERR_VALUE, "resize: bad box (%g, %g, %g, %g)", x0, y0, bw, bh);
    /* identity: a plain copy (also keeps it exact) */
    if (x0 == 0 && y0 == 0 && bw == w && bh == h && ow == w && oh == h && !flip) {
        memcpy(out, in, (size_t)h * w * 3);
        return GLAE_OK;
    }
    double fsx = bw / ow > 1.0 ? bw / ow : 1.0, fsy = bh / oh > 1.0 ? bh / oh : 1.0;
    int tx = (int)ceil(2.0 * fsx) + 2, ty = (int)ceil(2.0 * fsy) + 2;
    const size_t n3o = (size_t)ow * 3;
    /* workspace: per-axis tables, the per-element tables (ntx <= tx), one input row (+ pad), one output row */
    const int nblk = (int)(n3o / PERM_W);
    size_t need = (size_t)ow * tx + (size_t)oh * ty + (size_t)ow + oh + 2 * (size_t)tx * n3o +
                  (size_t)3 * w + APAD + n3o + 2 * (size_t)nblk * PERM_W + nblk + 64;
    if (*cap < need) {
        float *nb = realloc(*buf, need * sizeof(float));
        if (!nb) return glae_fail(GLAE_ERR_MEMORY, "resize: out of memory");
        *buf = nb;
        *cap = need;
    }
    float *wx = *buf, *wy = wx + (size_t)ow * tx;
    int *fx = (int *)(wy + (size_t)oh * ty), *fy = fx + ow;
    float *We = (float *)(fy + oh);
    int *Ie = (int *)(We + (size_t)tx * n3o);
    float *acc = (float *)(Ie + (size_t)tx * n3o), *orow = acc + (size_t)3 * w + APAD;
    int *poff = (int *)(orow + n3o), *pbase = poff + 2 * (size_t)nblk * PERM_W;
    axis_coeffs(ow, x0, bw, w, tx, fx, wx);
    axis_coeffs(oh, y0, bh, h, ty, fy, wy);
    /* effective tap counts and the column range the horizontal pass reads */
    int ntx = 1, nty = 1, clo = w, chi = 0;
    for (int i = 0; i < ow; i++)
        for (int k = 0; k < tx; k++)
            if (wx[(size_t)i * tx + k] != 0.0f) {
                if (k + 1 > ntx) ntx = k + 1;
                if (fx[i] + k + 1 > chi) chi = fx[i] + k + 1;
                if (fx[i] < clo) clo = fx[i];
            }
    for (int i = 0; i < oh; i++)
        for (int k = 0; k < ty; k++)
            if (wy[(size_t)i * ty + k] != 0.0f && k + 1 > nty) nty = k + 1;
    if (clo >= chi) { clo = 0; chi = 1; }
    const int cols = chi - clo, n3 = cols * 3;
    /* per output element e = 3 x + c: tap k reads acc[Ie] with weight We; a tap outside
     * the column range has weight 0 and a safe index */
    for (int k = 0; k < ntx; k++)
        for (int x = 0; x < ow; x++) {
            int sx = flip ? ow - 1 - x : x, j = fx[sx] + k - clo;
            float wk = wx[(size_t)sx * tx + k];
            if (j < 0 || j >= cols) { j = 0; wk = 0.0f; }
            for (int c = 0; c < 3; c++) {
                We[(size_t)k * n3o + 3 * x + c] = wk;
                Ie[(size_t)k * n3o + 3 * x + c] = 3 * j + c;
            }
        }
    for (int i = n3; i < n3 + APAD; i++) acc[i] = 0.0f; /* gather2 may read 3 past the last column */
    /* permute tables for the 2-tap pass: usable when every block's taps fit a PERM_WIN-float
     * window (always when enlarging or mildly shrinking). A zero-weight tap may read any
     * lane: acc is finite and >= 0, so its product is +0 either way. */
    int perm = 0;
#ifndef PERM_WIN
    (void)poff; (void)pbase;
#else
    if (ntx == 2 && nblk > 0) {
        perm = 1;
        for (int b = 0; perm && b < nblk; b++) {
            int lo = 1 << 30, hi = -1;
            for (int k = 0; k < 2; k++)
                for (int e = PERM_W * b; e < PERM_W * b + PERM_W; e++)
                    if (We[(size_t)k * n3o + e] != 0.0f) {
                        int ix = Ie[(size_t)k * n3o + e];
                        if (ix < lo) lo = ix;
                        if (ix > hi) hi = ix;
                    }
            if (hi < 0) lo = hi = 0;
            if (hi - lo >= PERM_WIN || lo + PERM_WIN > n3 + APAD) { perm = 0; break; }
            pbase[b] = lo;
            for (int k = 0; k < 2; k++)
                for (int e = PERM_W * b; e < PERM_W * b + PERM_W; e++)
                    poff[(size_t)k * nblk * PERM_W + e] =
                        We[(size_t)k * n3o + e] != 0.0f ? Ie[(size_t)k * n3o + e] - lo : 0;
        }
    }
#endif
    const size_t rs = (size_t)w * 3;
    for (int y = 0; y < oh; y++) {
        const float *wi = wy + (size_t)y * ty;
        for (int i = 0; i < n3; i++) acc[i] = 0.0f;
        for (int k = 0; k < nty; k++) {
            int yy = fy[y] + k;
            if (wi[k] == 0.0f || yy >= h) continue;
            axpy_u8(acc, in + (size_t)yy * rs + (size_t)clo * 3, wi[k], n3);
        }
        if (perm) {
#ifdef PERM_WIN
            gather2_perm(orow, acc, We, We + n3o, poff, poff + (size_t)nblk * PERM_W, pbase, nblk);
            int e0 = PERM_W * nblk;
            gather2(orow + e0, acc, We + e0, Ie + e0, We + n3o + e0, (int)n3o - e0);
#endif
        } else if (ntx == 2) {
            /* the common case (mild scaling): taps k and k + 1 are neighbours */
            gather2(orow, acc, We, Ie, We + n3o, (int)n3o);
        } else {
            for (size_t e = 0; e < n3o; e++) orow[e] = 0.0f;
            for (int k = 0; k < ntx; k++) gather_axpy(orow, acc, We + k * n3o, Ie + k * n3o, (int)n3o);
        }
        round_u8(out + (size_t)y * n3o, orow, (int)n3o);
    }
    return GLAE_OK;
}

int glae_resize_box(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w, double x0,
                    double y0, double bw, double bh, int flip) {
    float *buf = NULL;
    size_t cap = 0;
    int st = glae_resize_box_ws(out, oh, ow, in, h, w, x0, y0, bw, bh, flip, &buf, &cap);
    free(buf);
    return st;
}

int glae_center_crop_resize(uint8_t *out, int size, const uint8_t *in, int h, int w) {
    GLAE_TRY(check_img("center_crop_resize", h, w));
    if (size <= 0)
        return glae_fail(GLAE_ERR_VALUE, "center_crop_resize: size must be > 0, got %d", size);
    int side = h < w ? h : w;
    int x0 = (w - side) / 2, y0 = (h - side) / 2;
    return glae_resize_box(out, size, size, in, h, w, x0, y0, side, side, 0);
}
