/* The identity pre-training model of LAE sec. 2.3: the ResNet backbone of the age model
 * (same code, same torchvision tensor names, so its tensors load into an age model as
 * `pretrained=`), an embedding layer and the AM-softmax classifier (ops/amsoftmax.h):
 *
 *   image -> backbone -> global average pool (n, C) -> embedding.0: Linear(C, d, no bias)
 *         -> embedding.1: BatchNorm1d(d) = the embedding e (n, d)
 *         -> AM-softmax against amsoftmax.weight (num_ids, d), labels = identities
 *
 * (the Linear has no bias: the BatchNorm right after it would cancel one.) The names are
 * PyTorch's for nn.Sequential(nn.Linear(C, d, bias=False), nn.BatchNorm1d(d)) saved as
 * `embedding` beside a parameter `amsoftmax.weight`. One flat parameter buffer (params,
 * grads, momentum, BN buffers; core/params.h): the backbone's tensors in GLAE_G_BACKBONE,
 * the embedding's and the classifier's in GLAE_G_HEAD. Every op runs through ctx->ops,
 * so the same code trains on the CPU or on a GPU. */
#ifndef GLAE_PRETRAIN_H
#define GLAE_PRETRAIN_H

#include <stdint.h>

#include "core/arena.h"
#include "core/ctx.h"
#include "core/params.h"
#include "nn/resnet.h"

typedef struct {
    int backbone;    /* 18 or 50 */
    int embed_dim;   /* d, 512 */
    int num_ids;     /* classes of the AM-softmax layer: the identities of the training set */
    float s, m;      /* AM-softmax scale and margin (30, 0.35) */
    uint64_t seed;
    int device;      /* GLAE_CPU or GLAE_CUDA */
    int cuda_device;
    int math;        /* 0 fp32, 1 tf32, 2 bf16 backbone activations (as glae_model_config) */
} glae_pretrain_config;

void glae_pretrain_config_default(glae_pretrain_config *cfg);

typedef struct {
    glae_pretrain_config cfg;
    glae_params p;
    glae_resnet net;
    int fc_w;             /* embedding.0.weight (d, C) */
    glae_bn_layer bn;     /* embedding.1 */
    int cls_w;            /* amsoftmax.weight (num_ids, d) */
    glae_ctx ctx;
    glae_arena arena;
    int plan_train, plan_n, plan_h, plan_w; /* plan_n == 0: not planned */
    /* activations (arena, on the device) */
    float *xin;           /* the normalised batch (n, h, w, 3) */
    uint8_t *xu8;         /* a uint8 batch on its way to xin */
    int32_t *labels;      /* (n) */
    float *pooled, *h, *emb;       /* (n, C), (n, d), (n, d) */
    float *loss, *prob, *cos;      /* (n), (n, K), (n, K) */
    float *dloss, *demb, *dh, *dpooled, *dfeat, *mean_loss;
    uint8_t *no_decay;    /* (p.n) GLAE_P_NO_DECAY mask on the device */
    size_t peak_bytes;
} glae_pretrain_model;

int glae_pretrain_init(glae_pretrain_model *m, const glae_pretrain_config *cfg);
void glae_pretrain_free(glae_pretrain_model *m);

/* One training step on x (n, h, w, 3) (xnorm: GLAE_INPUT_F32 = -1 for normalised float32
 * images, or a GLAE_NORM_* for uint8 pixels, as glae_model_train_step) with identity
 * labels (n) in [0, num_ids): forward (BN in training mode), the batch-mean AM-softmax
 * loss into *loss, backward; gradients accumulate into m->p.grads. n >= 2 (BatchNorm1d). */
int glae_pretrain_train_step(glae_pretrain_model *m, float *loss, const void *x, int xnorm, int n,
                             int h, int w, const int32_t *labels);
/* The embeddings e (n, d) of x, BN in eval mode (running statistics), into emb (host). */
int glae_pretrain_embed(glae_pretrain_model *m, float *emb, const void *x, int xnorm, int n, int h,
                        int w);
/* One SGD step (optim.h) on the whole flat buffer, on the model's device; wd_exclude: no
 * weight decay on the GLAE_P_NO_DECAY tensors (BN). */
int glae_pretrain_sgd_step(glae_pretrain_model *m, float lr, float momentum, float dampening,
                           float wd, int nesterov, int first_step, int wd_exclude);

#endif
