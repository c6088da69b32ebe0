/* EfficientNetV2-S and -M backbones with torchvision's topology and state_dict names
 * (features.0 the stem, features.1..S the stages, features.S+1 the 1x1 head conv to 1280),
 * on the flat parameter buffer of core/params.h, float32 activations in an arena planned
 * per batch shape. Every layer runs through the op table (ops/backend.h), so the same walk
 * serves the CPU reference kernels and the CUDA twins.
 *
 * Blocks (torchvision's names under features.<stage>.<block>.block):
 *   Fused-MBConv, expansion 1: 0 = conv k x k (stride) + BN + SiLU
 *   Fused-MBConv, expansion e: 0 = conv k x k (stride) + BN + SiLU to e*C_in,
 *                              1 = conv 1x1 + BN to C_out
 *   MBConv:  0 = conv 1x1 + BN + SiLU to E = e*C_in, 1 = depthwise k x k (stride) + BN + SiLU,
 *            2 = squeeze-and-excitation (global average pool, fc1 1x1 conv with bias to
 *                max(1, C_in / 4), SiLU, fc2 1x1 conv with bias to E, sigmoid, channel scale),
 *            3 = conv 1x1 + BN to C_out
 * A block with stride 1 and C_in == C_out adds its input; its branch is dropped per sample
 * in training with p = stochastic_depth_prob * block / blocks (nn/droppath.h, torchvision's
 * "row" mode). BN eps 1e-3, momentum 0.1. Mixed precision (bf16) is not provided: the
 * model refuses math=bf16 with this backbone. */
#ifndef GLAE_EFFNET_H
#define GLAE_EFFNET_H

#include <stdint.h>

#include "core/arena.h"
#include "core/ctx.h"
#include "core/params.h"
#include "nn/resnet.h" /* glae_conv_layer, glae_bn_layer and their helpers */
#include "ops/ops.h"

#define GLAE_EFFNET_BN_EPS 1e-3f
#define GLAE_EFFNET_MAX_BLOCKS 64 /* -M has 57 */
#define GLAE_EFFNET_MAX_STAGES 8

/* backbone codes of glae_model_config.backbone beside ResNet's depths 18 and 50 */
enum { GLAE_EFFNET_V2_S = 1001, GLAE_EFFNET_V2_M = 1002 };

/* one row of torchvision's stage table */
typedef struct {
    int fused;              /* 1: Fused-MBConv, 0: MBConv */
    int expand, kernel, stride, c_in, c_out, layers;
} glae_effnet_stage;

typedef struct {
    int code;               /* GLAE_EFFNET_V2_* */
    const char *name;       /* "efficientnet_v2_s" */
    int nstages;
    glae_effnet_stage stage[GLAE_EFFNET_MAX_STAGES];
    int last;               /* the head conv's channels (1280) */
} glae_effnet_arch;

/* conv (plain or depthwise) + BN + optional SiLU: torchvision's Conv2dNormActivation */
typedef struct {
    glae_conv_layer conv;
    glae_bn_layer bn;
    int dw, act;
    const void *in;         /* its input (arena or the caller's image) */
    void *c, *b, *a;        /* conv output, BN output, SiLU output (a == b without SiLU) */
} glae_effnet_unit;

typedef struct {
    int fused, nunit, res, se;
    glae_effnet_unit u[3];  /* MBConv: expand, depthwise, project (SE between 1 and 2) */
    glae_conv_layer fc1, fc2; /* SE, stored (out, 1, 1, in) = a Linear's (out, in) */
    int e, sq;              /* SE channels: expanded, squeezed */
    float p;                /* stochastic depth probability */
    /* activations */
    const void *in;
    void *out;              /* the block's output (u[last].a itself without a residual) */
    float *pool, *f1, *f1a, *f2, *sg; /* SE (n, e | sq) */
    void *se_out;           /* u[1].a scaled by sg */
    void *drop;             /* the branch scaled per sample (training with p > 0) */
    float *scale;           /* (n) the drop scales on the device */
    int dropped;            /* the last forward dropped (the backward scales too) */
    int64_t hw;             /* output pixels per sample */
} glae_effnet_block;

typedef struct {
    const glae_effnet_arch *arch;
    glae_effnet_unit stem, head;
    glae_effnet_block blocks[GLAE_EFFNET_MAX_BLOCKS];
    int nblocks;
    int out_c;              /* 1280 */
    float drop_prob;        /* stochastic_depth_prob: 0.2 (torchvision), 0 turns it off */
    uint64_t seed;          /* of the drop masks */
    uint64_t step;          /* training forwards so far: the masks' counter (settable) */
    /* planned batch shape and activations */
    int n, h, w, fh, fw;
    const float *x;
    float *feat;            /* == head.a */
    int64_t gmax, emax, sqmax;
    void *g[3];             /* gradient work buffers of gmax values (training plans) */
    float *dsg, *dpool, *df1; /* SE gradient work (n, emax | sqmax) */
    int keep_all;           /* plans without a backward keep every activation */
} glae_effnet;

/* The table of `code` or of `name`, NULL when glae builds no such network. */
const glae_effnet_arch *glae_effnet_arch_of(int code);
const glae_effnet_arch *glae_effnet_arch_named(const char *name);
const glae_effnet_arch *glae_effnet_archs(int *n);

/* Register the backbone's tensors (group GLAE_G_BACKBONE) in torchvision's order. */
int glae_effnet_build(glae_effnet *net, glae_params *p, int code);
/* torchvision's init: conv weights kaiming_normal_(fan_out) (std sqrt(2 / (c_out k k)),
 * the depthwise ones too), conv biases 0, BN weight 1 bias 0, running var 1; Philox draws
 * keyed by (seed, tensor index). The drop masks use `seed` too. */
int glae_effnet_init(glae_effnet *net, glae_params *p, uint64_t seed);
/* feature map size for an h x w input: every stride-2 3x3 conv (pad 1) halves, rounding up */
int glae_effnet_out_size(const glae_effnet_arch *arch, int h, int w, int *fh, int *fw);
/* as glae_resnet_plan */
int glae_effnet_plan(glae_effnet *net, glae_arena *a, int n, int h, int w, int grads);
/* x (n, h, w, 3) -> net->feat. training: batch-statistics BN and stochastic depth (its
 * masks drawn for net->step, which then advances). */
int glae_effnet_forward(glae_ctx *ctx, glae_effnet *net, glae_params *p, const float *x,
                        int training);
/* dfeat (n, fh, fw, out_c) is overwritten (work space). Accumulates into p->grads. */
int glae_effnet_backward(glae_ctx *ctx, glae_effnet *net, glae_params *p, float *dfeat);

#endif
