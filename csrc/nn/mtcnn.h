/* MTCNN face detector (Zhang et al. 2016, "Joint Face Detection and Alignment using
 * Multi-task Cascaded Convolutional Networks"), CPU inference on the layer functions of
 * ops.h. The three networks, the pyramid, the box arithmetic and the NMS variants follow
 * the facenet-pytorch pipeline, whose published weights (Caffe-converted) this loads.
 * Activations are NHWC; the weights are given in PyTorch layouts (OIHW, dense (OUT, IN)
 * over the Caffe-order flatten) and converted once by glae_mtcnn_create. */
#ifndef GLAE_MTCNN_H
#define GLAE_MTCNN_H

#include <stdint.h>

#include "core/ctx.h"
#include "core/status.h"

enum { GLAE_MTCNN_PNET = 0, GLAE_MTCNN_RNET = 1, GLAE_MTCNN_ONET = 2 };

/* The weight tensors of network `net` in state-dict order: name, rank and shape of
 * tensor i (0 <= i < glae_mtcnn_tensor_count(net)). Returns NULL name past the end. */
int glae_mtcnn_tensor_count(int net);
const char *glae_mtcnn_tensor_spec(int net, int i, int *ndim, int64_t dims[4]);

typedef struct glae_mtcnn glae_mtcnn; /* opaque: the converted weights of the 3 networks */

/* weights[net][i]: tensor i of network net in PyTorch layout (shapes as the spec says).
 * The data is copied; the caller keeps ownership of its arrays. */
int glae_mtcnn_create(glae_mtcnn **out, const float *const *pnet, const float *const *rnet,
                      const float *const *onet);
void glae_mtcnn_free(glae_mtcnn *m);

/* ---- the networks (inputs already scaled by (x - 127.5) * 0.0078125) ----------------
 * P-Net: in (N, H, W, 3), H, W >= 12 -> prob (N, OH, OW) face probability, reg (N, OH, OW, 4)
 * with OH = ceil((H - 2) / 2) - 4 (3x3 conv, 2x2/2 ceil pool, two 3x3 convs). */
int glae_mtcnn_pnet_size(int h, int w, int *oh, int *ow);
int glae_mtcnn_pnet_forward(glae_ctx *ctx, float *prob, float *reg, const float *in,
                            const glae_mtcnn *m, int n, int h, int w);
/* R-Net: in (N, 24, 24, 3) -> prob (N), reg (N, 4) */
int glae_mtcnn_rnet_forward(glae_ctx *ctx, float *prob, float *reg, const float *in,
                            const glae_mtcnn *m, int n);
/* O-Net: in (N, 48, 48, 3) -> prob (N), reg (N, 4), landmarks (N, 10): 5 x then 5 y,
 * relative to the box (0..1) */
int glae_mtcnn_onet_forward(glae_ctx *ctx, float *prob, float *reg, float *landmarks,
                            const float *in, const glae_mtcnn *m, int n);

/* ---- box arithmetic; boxes are rows of `ld` >= 5 floats: x1, y1, x2, y2, score ------ */
enum { GLAE_NMS_UNION = 0, GLAE_NMS_MIN = 1 };
/* Greedy NMS in descending score order (ties: lower index first). keep (n) receives the
 * kept row indices in that order, *nkeep their count.
 *  UNION (torchvision.ops.nms): area (x2-x1)(y2-y1), drop when inter/union > thresh;
 *  MIN (the reference's final stage): area (x2-x1+1)(y2-y1+1), drop when
 *  inter/min(area) > thresh. */
int glae_mtcnn_nms(int64_t *keep, int64_t *nkeep, const float *boxes, int64_t n, int ld,
                   float thresh, int mode);
/* Box regression with the +1 width convention: x1 += r0 (x2-x1+1), y1 += r1 (y2-y1+1),
 * x2 += r2 (x2-x1+1), y2 += r3 (y2-y1+1). reg (n, 4). In place. */
int glae_mtcnn_bbreg(float *boxes, int64_t n, int ld, const float *reg);
/* Square the boxes about their centre with side max(x2-x1, y2-y1). In place. */
int glae_mtcnn_rerec(float *boxes, int64_t n, int ld);
/* PyTorch interpolate(mode="area") = adaptive average pooling: output cell (i, j) is the
 * mean of input rows [floor(i H/OH), ceil((i+1) H/OH)) and the same for columns.
 * in: a (rh, rw, c) window with row stride `in_stride` floats; out (oh, ow, c). */
int glae_mtcnn_resize_area(float *out, int oh, int ow, const float *in, int rh, int rw, int c,
                           int64_t in_stride);

/* ---- the whole detector ------------------------------------------------------------ */
typedef struct {
    float min_face;    /* smallest face side in pixels (20) */
    float factor;      /* pyramid scale step (0.709) */
    float thresh[3];   /* face probability thresholds of P-, R-, O-Net (0.6, 0.7, 0.7) */
    float nms_scale;   /* P-Net NMS within one pyramid level, union (0.5) */
    float nms[3];      /* after P-Net (union), R-Net (union), O-Net (min) (0.7 each) */
} glae_mtcnn_opts;

void glae_mtcnn_default_opts(glae_mtcnn_opts *o);

typedef struct {
    int64_t n;
    float *boxes;  /* (n, 5): x1, y1, x2, y2, score; malloc'd */
    float *points; /* (n, 5, 2): (x, y) of left eye, right eye, nose, mouth left, right */
} glae_mtcnn_result;

/* img (h, w, 3) uint8 RGB, rows of `row_stride` bytes. h or w of 0 gives zero faces.
 * On success res holds the faces in descending score order; free with
 * glae_mtcnn_result_free (also safe after a failure). */
int glae_mtcnn_detect(glae_ctx *ctx, glae_mtcnn_result *res, const uint8_t *img, int h, int w,
                      int64_t row_stride, const glae_mtcnn *m, const glae_mtcnn_opts *o);
void glae_mtcnn_result_free(glae_mtcnn_result *res);

#endif
