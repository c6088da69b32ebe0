/* Face alignment and resampling on uint8 HWC RGB images (docs/data-pipeline.md).
 *
 * Coordinates: pixel (row i, column j) is the point (x = j, y = i) (OpenCV's convention,
 * the one MTCNN/InsightFace landmarks use). An affine matrix M (2x3, row-major doubles)
 * maps (x, y) to (M0 x + M1 y + M2, M3 x + M4 y + M5). */
#ifndef GLAE_ALIGN_H
#define GLAE_ALIGN_H

#include <stddef.h>
#include <stdint.h>

enum { GLAE_BORDER_CONSTANT = 0, GLAE_BORDER_REPLICATE = 1 };
enum { GLAE_INTERP_BILINEAR = 0, GLAE_INTERP_NEAREST = 1 };

/* The ArcFace/InsightFace 5-point reference for 112x112 (left eye, right eye, nose,
 * left mouth corner, right mouth corner), as (x, y). */
extern const float glae_arcface_template[10];

/* Least-squares similarity (rotation, uniform scale, translation; no reflection) taking
 * the n points src (n, 2) onto dst (n, 2): the 2-D closed form of Umeyama (1991).
 * M (2, 3) maps src -> dst. Fails when src points coincide or n < 2. */
int glae_similarity_transform(double M[6], const float *src, const float *dst, int n);

/* The template scaled to a size x size output with `margin` (>= 0) extra border: the
 * 112-box is scaled to size / (1 + 2 margin) and centred, so margin = 0.1 adds 10% of
 * the face box on each side. out: (5, 2). */
int glae_template_points(float out[10], int size, float margin);

/* Invert an affine matrix. Fails when singular. */
int glae_affine_invert(double inv[6], const double M[6]);

/* out (oh, ow, 3) = in (h, w, 3) warped by M, which maps INPUT coordinates to OUTPUT
 * coordinates (each output pixel samples the input at M^-1 (x, y)). border: outside
 * samples are 0 (CONSTANT) or the nearest edge pixel (REPLICATE). Bilinear, rounded to
 * nearest. */
int glae_warp_affine(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w,
                     const double M[6], int border);
/* Same with the inverse (output -> input) matrix given and a choice of interpolation. */
int glae_warp_affine_inv(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w,
                         const double Minv[6], int border, int interp);

/* Similarity-align a face with 5 landmarks lm (5, 2) onto the template of
 * glae_template_points(size, margin); constant-0 border. out: (size, size, 3). */
int glae_align_face(uint8_t *out, int size, const uint8_t *in, int h, int w, const float lm[10],
                    float margin);

/* Resample the box [x0, x0 + bw) x [y0, y0 + bh) of in (h, w, 3) (pixel-edge coordinates,
 * inside the image) to out (oh, ow, 3): a separable triangle filter whose support widens
 * with the shrink factor (bilinear when enlarging, area-like antialiasing when shrinking,
 * as PIL's BILINEAR resize). flip != 0 mirrors the output horizontally. */
int glae_resize_box(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w, double x0,
                    double y0, double bw, double bh, int flip);

/* Same with a reusable float workspace (*buf grown with realloc to *cap floats). */
int glae_resize_box_ws(uint8_t *out, int oh, int ow, const uint8_t *in, int h, int w, double x0,
                       double y0, double bw, double bh, int flip, float **buf, size_t *cap);

/* Centre crop of the largest square, resized to size x size with glae_resize_box. */
int glae_center_crop_resize(uint8_t *out, int size, const uint8_t *in, int h, int w);

#endif
