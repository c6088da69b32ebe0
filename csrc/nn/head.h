/* Classifier heads on the backbone's feature map F (N, h, w, C), NHWC:
 *   GAP : global average pool + linear to K                       (fc.*)
 *   FR  : Feature Rearrangement (GLAE III-B): pixel shuffle by r, k x k stride s conv to
 *         K channels (fr.*); one distribution per image = softmax of the H'W'-averaged
 *         logits (the FR conv *is* the classifier: no linear layer)
 *   FRPA: FR + Pixel-level Auxiliary learning (GLAE III-C): local branch = per-position
 *         softmax + l_kl + l_er averaged over H'W' (eq. 6-7, training only); holistic
 *         branch = MLP projection of the FR map flattened in PyTorch's NCHW order
 *         (proj.*, eq. 8) + linear classifier (cls.*, eq. 9); loss L_loc + L_hol (eq. 10).
 * A head's tensors are registered under a name prefix ("" or "balanced.") in one group. */
#ifndef GLAE_HEAD_H
#define GLAE_HEAD_H

#include <stdint.h>

#include "nn/resnet.h"

enum { GLAE_HEAD_GAP = 0, GLAE_HEAD_FR = 1, GLAE_HEAD_FRPA = 2 };

#define GLAE_PROJ_MAX_DEPTH 2

typedef struct {
    int kind, k_cls;          /* head kind, number of classes K */
    int c;                    /* backbone channels */
    int r, k, s;              /* FR: shuffle factor, conv kernel, stride */
    int depth, width;         /* FRPA projection */
    /* parameters */
    int fc_w, fc_b;           /* GAP */
    glae_conv_layer fr;       /* FR, FRPA */
    int lin_w[GLAE_PROJ_MAX_DEPTH + 1], lin_b[GLAE_PROJ_MAX_DEPTH + 1];
    glae_bn_layer bn[GLAE_PROJ_MAX_DEPTH];
    int cls_w, cls_b;
    /* planned shapes */
    int n, fh, fw, hp, wp;    /* feature map h x w, FR output H' x W' */
    int64_t flat;             /* K * H' * W' */
    /* activations (arena) */
    float *pooled;            /* GAP (n, C) */
    float *shuf;              /* (n, fh r, fw r, C / r^2) */
    float *map;               /* FR logits map (n, H', W', K) */
    float *flatv;             /* (n, K H' W'), NCHW order */
    float *h[GLAE_PROJ_MAX_DEPTH + 1];  /* linear outputs (n, width) */
    float *hb[GLAE_PROJ_MAX_DEPTH];     /* relu(bn(h)) (n, width) */
    float *logits, *prob;     /* (n, K) the image-level classifier */
    float *loc_prob;          /* (n H' W', K) */
    float *loss, *loc_loss, *dloss, *dloc_loss; /* per row */
    /* gradient work (training plans) */
    float *dlogits, *dmap, *dmap2, *dflat, *dh, *dh2, *dpooled, *dshuf;
} glae_head;

typedef struct {
    int kind, num_classes, r, k, s, depth, width;
} glae_head_config;

/* Register the head's tensors under `prefix` in `group`; c = backbone channels, fh x fw the
 * feature map of the model's input size (FRPA's projection input is K*H'*W'). */
int glae_head_build(glae_head *hd, glae_params *p, const glae_head_config *cfg, int c, int fh,
                    int fw, const char *prefix, int group);
/* PyTorch default init for the conv/linear layers, BN1d weight 1 bias 0 var 1. */
int glae_head_init(const glae_head *hd, glae_params *p, uint64_t seed);
/* FR output size for a feature map fh x fw (GLAE_ERR_VALUE when it does not fit). */
int glae_head_out_size(const glae_head *hd, int fh, int fw, int *hp, int *wp);
int glae_head_plan(glae_head *hd, glae_arena *a, int n, int fh, int fw, int grads);
/* Inference/forward: fills hd->logits and hd->prob (softmax); FR heads also hd->map and,
 * for FRPA, hd->loc_prob. training: BN1d batch statistics. */
int glae_head_forward(glae_ctx *ctx, glae_head *hd, glae_params *p, const float *feat,
                      int training);
/* Loss of the last forward against (z, y) and its backward. losses[0..2] = total, local,
 * holistic (batch means; the single-classifier heads report their loss as holistic),
 * written on ctx's device like the activations (3 floats of the arena, say).
 * dfeat (n, fh, fw, C) is written when not NULL. */
int glae_head_loss_backward(glae_ctx *ctx, glae_head *hd, glae_params *p, float *losses,
                            float *dfeat, const float *feat, const float *z, const float *y,
                            int mode, float lambda, float mae);

#endif
