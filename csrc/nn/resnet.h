/* ResNet-18 (BasicBlock) and ResNet-50 (Bottleneck v1.5, stride on the 3x3) with
 * torchvision's topology and state_dict names, on the flat parameter buffer of
 * core/params.h. Conv weights are stored OHWI (torchvision's OIHW permuted); BN running
 * statistics live in the `buffers` array; num_batches_tracked is not kept (momentum is
 * fixed at 0.1, so PyTorch never reads it). Activations live in an arena planned per batch
 * shape (see glae_resnet_plan), in the plan's precision: float32, or bf16 (mixed
 * precision, docs/precision.md). One walk serves both: its layers call the op of that
 * precision (resnet.c). */
#ifndef GLAE_RESNET_H
#define GLAE_RESNET_H

#include <stdint.h>

#include "core/arena.h"
#include "core/ctx.h"
#include "core/params.h"
#include "ops/ops.h"

#define GLAE_BN_MOMENTUM 0.1f
#define GLAE_BN_EPS 1e-5f

/* a conv layer without bias (ResNet's) or with one (heads) */
typedef struct {
    int w, b; /* param indices; b = -1 when no bias */
    int c_in, c_out, k, stride, pad;
    glae_conv2d_shape s; /* for the planned batch shape */
} glae_conv_layer;

typedef struct {
    int g, b, rm, rv; /* param indices: weight, bias, running_mean, running_var */
    int c;
    float *mean, *invstd; /* saved by the forward (arena): (groups, c) */
} glae_bn_layer;

typedef struct {
    int nconv; /* 2 (BasicBlock) or 3 (Bottleneck) */
    glae_conv_layer conv[3];
    glae_bn_layer bn[3];
    int has_down;
    glae_conv_layer dconv;
    glae_bn_layer dbn;
    /* activations (arena), NHWC, float or glae_bf16 as glae_resnet.bf16 says */
    const void *in;         /* the previous block's out (or the stem's pool) */
    void *c[3];             /* conv outputs = BN inputs */
    void *a[2];             /* relu(bn) of the inner stages = next conv inputs */
    void *dc, *db;          /* downsample conv output, its BN output (the identity) */
    void *out;              /* relu(bn_last + identity) */
    int64_t in_numel, out_numel;
} glae_block;

typedef struct {
    int depth; /* 18 or 50 */
    glae_conv_layer conv1;
    glae_bn_layer bn1;
    glae_pool_shape pool;
    glae_block blocks[16];
    int nblocks;
    int out_c; /* 512 or 2048 */
    /* planned batch shape and activations (float or glae_bf16 as bf16 says) */
    int n, h, w;
    int fh, fw;           /* feature map size */
    const float *x;       /* the input of the last forward (caller's memory) */
    void *c1, *a1, *p1;   /* stem: conv, relu(bn), maxpool */
    int32_t *argmax;
    float *feat;          /* the head's input (n, fh, fw, out_c): float32 in both precisions
                           * (float32: == blocks[nblocks-1].out) */
    int64_t gmax;         /* largest activation, in values */
    void *g[4];           /* gradient work buffers of gmax values (training plans only) */
    /* Mixed precision: set before planning. Activations and their gradients are bf16;
     * parameters and gradients stay float32; the image is rounded once into x_h, feat is
     * a float32 copy of the last block's output, and the head's float32 gradient is
     * rounded into dfeat_h. NULL in a float32 plan. */
    int bf16;
    glae_bf16 *x_h, *dfeat_h;
    /* Set before planning: plans without a backward keep every activation as a training
     * plan does. Never faster; it is what the slot sharing is checked against. */
    int keep_all;
    /* Set before planning: ghost batch norm, the BN statistics over consecutive groups of
     * bn_batch images of the batch (the papers' 32 per GPU; 0: the whole batch). The
     * running statistics follow the first group (ops.h, batchnorm_ghost_forward). */
    int bn_batch;
} glae_resnet;

/* torchvision's stage table of a backbone, the one glae_resnet_build walks (Python reads it
 * as _C.RESNET_STAGES). */
typedef struct {
    int depth;      /* 18, 50 */
    int bottleneck; /* 0: BasicBlock; 1: Bottleneck v1.5 (expansion 4) */
    int blocks[4];  /* blocks per stage */
    int width[4];   /* the stage's inner width (planes) */
} glae_resnet_arch;

/* The table of `depth`, or NULL when glae builds no such ResNet. */
const glae_resnet_arch *glae_resnet_arch_of(int depth);
/* Every table; *n receives their number. */
const glae_resnet_arch *glae_resnet_archs(int *n);

/* Register the backbone's tensors (group GLAE_G_BACKBONE) in torchvision's order. */
int glae_resnet_build(glae_resnet *net, glae_params *p, int depth);
/* Torchvision init (kaiming_normal_ fan_out relu for convs, BN weight 1 bias 0, running
 * var 1), drawn from Philox keyed by (seed, tensor index). */
int glae_resnet_init(const glae_resnet *net, glae_params *p, uint64_t seed);
/* Output size of the feature map for an input of h x w; GLAE_ERR_VALUE when too small. */
int glae_resnet_out_size(int h, int w, int *fh, int *fw);
/* Allocate (or, on a measuring arena, count) the activations for a batch (n, h, w, 3);
 * grads != 0 keeps every activation and adds the backward's work buffers; grads == 0
 * (no backward) lets four slots, each as large as its largest tenant, take turns
 * (unless net->keep_all). */
int glae_resnet_plan(glae_resnet *net, glae_arena *a, int n, int h, int w, int grads);
/* x (n, h, w, 3) -> net->feat. training: batch-statistics BN (running stats updated). */
int glae_resnet_forward(glae_ctx *ctx, glae_resnet *net, glae_params *p, const float *x,
                        int training);
/* dfeat (n, fh, fw, out_c): overwritten in a float32 plan (used as work space), read once
 * in a bf16 one. Accumulates into p->grads. The gradient w.r.t. the image is not computed. */
int glae_resnet_backward(glae_ctx *ctx, glae_resnet *net, glae_params *p, float *dfeat);

/* shared helpers for the heads */
int glae_conv_layer_add(glae_conv_layer *l, glae_params *p, const char *prefix, int c_in,
                        int c_out, int k, int stride, int pad, int bias, int group);
int glae_bn_layer_add(glae_bn_layer *l, glae_params *p, const char *prefix, int c, int group);
/* kaiming_normal_(fan_out, relu): std = sqrt(2 / (c_out k k)) */
void glae_init_normal(glae_params *p, int index, uint64_t seed, double std);
/* PyTorch's default for Linear/Conv: uniform(-bound, bound) */
void glae_init_uniform(glae_params *p, int index, uint64_t seed, double bound);
void glae_init_const(glae_params *p, int index, float v);

/* weight layout conversion: OIHW (torchvision) <-> OHWI (ours) */
void glae_oihw_to_ohwi(float *dst, const float *src, int o, int i, int kh, int kw);
void glae_ohwi_to_oihw(float *dst, const float *src, int o, int i, int kh, int kw);

#endif
