/* The whole estimator: ResNet backbone + the vanilla head (group GLAE_G_HEAD) + the
 * balanced head (GLAE_G_BALANCED, names prefixed "balanced."), one flat parameter buffer,
 * one activation arena re-planned when the batch shape changes.
 *   stage 1: backbone + vanilla head trained (BN in training mode everywhere);
 *   stage 2: backbone frozen (its BN in eval mode, no backbone backward), the balanced
 *            head trained (GLAE III-D, LAE 2.4 classification stage);
 *   inference: image + horizontal flip through backbone and both heads, Adaptive Routing. */
#ifndef GLAE_MODEL_H
#define GLAE_MODEL_H

#include <stdint.h>

#include "core/arena.h"
#include "core/ctx.h"
#include "core/params.h"
#include "nn/effnet.h"
#include "nn/head.h"
#include "nn/resnet.h"

typedef struct {
    int backbone;       /* 18 or 50 (ResNet), GLAE_EFFNET_V2_S or _M (nn/effnet.h) */
    int head;           /* GLAE_HEAD_GAP / FR / FRPA */
    int r, k, s;        /* FR */
    int proj_depth;     /* 0..2 */
    int proj_width;     /* projection embedding width */
    int num_classes;    /* K, 101 */
    int input_size;     /* the FRPA projection's input length depends on it */
    float lam;          /* lambda of l_base */
    uint64_t seed;
    int device;         /* GLAE_CPU or GLAE_CUDA: where params, grads and the arena live */
    int cuda_device;    /* CUDA device index */
    int math;           /* 0 fp32 (default), 1 tf32 (CUDA), 2 bf16: mixed precision, the
                         * backbone's activations in bf16 (CUDA: tensor cores; CPU: the same
                         * rounding, for checking) */
    float stochastic_depth; /* EfficientNetV2's stochastic_depth_prob (0.2; 0: off) */
    int threads;        /* CPU threads of the model's context (its kernels; on CUDA its host
                         * work); 0: the process default, as it is at each call */
    int cpu_backend;    /* on the CPU: GLAE_CPU_REFERENCE (0) or GLAE_CPU_ONEDNN (ops/backend.h) */
} glae_model_config;

void glae_model_config_default(glae_model_config *cfg);

/* plan kinds */
enum { GLAE_PLAN_NONE = 0, GLAE_PLAN_INFER = 1, GLAE_PLAN_TRAIN1 = 2, GLAE_PLAN_TRAIN2 = 3 };

typedef struct {
    glae_model_config cfg;
    glae_params p;
    glae_resnet net;    /* the backbone when cfg.backbone is a ResNet */
    glae_effnet eff;    /* ... when it is an EfficientNetV2 (glae_model_is_effnet) */
    glae_head head, bal;
    glae_ctx ctx;
    glae_arena arena;
    int plan_kind, plan_n, plan_h, plan_w;
    float *z, *y, *xflip; /* labels (n, K), ages (n); input + flipped batch (inference) */
    float *xin, *sig;     /* the training batch and its sigmas, staged on the device */
    uint8_t *xu8;         /* a uint8 batch on its way to xin or xflip (glae_normalise_u8) */
    float *losses;        /* total, local, holistic of the last step (device) */
    float *o_prob, *o_age, *o_ups; /* predict's outputs before the copy back */
    int32_t *o_choice;
    float *dfeat;
    uint8_t *no_decay;    /* (p.n) 1 = no weight decay (GLAE_P_NO_DECAY), on the device */
    size_t peak_bytes;    /* largest arena ever reserved */
    /* the pipelined step (glae_model_train_step_async): two input slots on CUDA, each a
     * pinned host buffer and a device buffer of async_cap bytes (x, ages, sigma) */
    long long async_steps;
    int async_last;
    size_t async_cap;
    unsigned char *pin[2], *dslot[2];
    void *slot[2];        /* glae_cuda_slot */
    float cpu_losses[2][3]; /* CPU: the losses of the last two async steps */
    /* CUDA graph of the async step (glae_model_use_graph) */
    int graph_on, graph_state; /* GLAE_GRAPH_* */
    void *graph;               /* cudaGraphExec_t */
    unsigned long long graph_key[8];
    unsigned long long plan_gen; /* bumped on every re-plan: the arena's pointers moved */
    char graph_why[256];       /* why capturing failed */
} glae_model;

enum { GLAE_GRAPH_OFF = 0, GLAE_GRAPH_WARM = 1, GLAE_GRAPH_CAPTURED = 2, GLAE_GRAPH_FAILED = 3 };

int glae_model_init(glae_model *m, const glae_model_config *cfg);
void glae_model_free(glae_model *m);
/* The model's CPU thread count from the next call on (0: follow the process default): its
 * context's, so other threads' work (a detector, another model) neither sees nor changes it. */
int glae_model_set_threads(glae_model *m, int n);
/* Ghost batch norm of the backbone from the next step on: BN statistics over consecutive
 * groups of k images of each training batch (0: the whole batch; resnet.h). Re-plans. */
int glae_model_set_bn_batch(glae_model *m, int k);

/* the backbone is an EfficientNetV2; its feature map's channels */
int glae_model_is_effnet(const glae_model *m);
int glae_model_feat_channels(const glae_model *m);

/* feature map and FR map sizes for an h x w input (GLAE_ERR_VALUE when too small) */
int glae_model_shapes(const glae_model *m, int h, int w, int *fh, int *fw, int *hp, int *wp);

/* Every function below that takes a batch x (n, h, w, 3) NHWC on the host takes its
 * format in xnorm: GLAE_INPUT_F32 for float32 images already normalised, or a GLAE_NORM_*
 * (ops.h) for uint8 pixels, which are sent as bytes (a quarter of the copy) and normalised
 * on the model's device by glae_normalise_u8, to the same float32 values as the loader's. */
#define GLAE_INPUT_F32 (-1)

/* One training step on x: forward, loss (mode GLAE_LOSS_*), backward.
 * Gradients accumulate into m->p.grads (stage 1: backbone + head; stage 2: balanced head
 * only). sigma (n) or NULL (sigma 1). losses = total, local, holistic (batch means). */
int glae_model_train_step(glae_model *m, float losses[3], const void *x, int xnorm, int n, int h,
                          int w, const float *ages, const float *sigma, int stage, int mode,
                          float mae);

/* The same step, pipelined (CUDA): the batch is copied into a pinned buffer and sent on
 * the copy stream while the previous step may still run; the step is queued and the call
 * returns without waiting for the GPU. Two slots alternate, so the caller's next batch
 * (loaded meanwhile) overlaps this step's compute. x, ages, sigma may be reused as soon
 * as the call returns. On the CPU it is glae_model_train_step. */
int glae_model_train_step_async(glae_model *m, const void *x, int xnorm, int n, int h, int w,
                                const float *ages, const float *sigma, int stage, int mode,
                                float mae);
/* CUDA graphs for train_step_async (CUDA models; GLAE_ERR_VALUE on the CPU). With them on,
 * each step's batch is copied from its slot into fixed arena buffers and the step
 * (label distributions, forward, losses, backward: not zero_grad, not SGD) is one graph
 * launch. The first step of a shape, stage, loss and mae runs plainly (the workspace and
 * the algorithm choices settle), the second is captured and launched, the rest replay it;
 * any change (a re-plan after predict, a grown workspace) discards the graph and warms
 * up again. A failed capture turns graphs off for the model and says why
 * (glae_model_graph_state); the step then runs plainly. */
int glae_model_use_graph(glae_model *m, int on);
/* "off", "warming up", "captured", "failed: <why>" */
const char *glae_model_graph_state(const glae_model *m);
/* Plans without a backward keep every activation (on) or share four slots (off, the
 * default); the next call re-plans. A check of the slot sharing (glae_resnet.keep_all). */
void glae_model_keep_activations(glae_model *m, int on);

/* The losses of the last async step (back = 0) or of the one before (back = 1, which
 * lets the caller read a finished step's losses while the last one runs); waits for
 * that step only. */
int glae_model_async_losses(glae_model *m, float losses[3], int back);
void glae_model_async_free(glae_model *m);

/* Forward without loss. Outputs (any may be NULL): feat (n, fh, fw, C); p_van, p_bal (n, K);
 * map_van, map_bal (n, H', W', K) FR logits maps (FR heads); loc_van (n, H', W', K) local
 * branch distributions (FRPA). training: BN batch statistics (running stats updated, as
 * in PyTorch's train mode). */
int glae_model_forward(glae_model *m, const void *x, int xnorm, int n, int h, int w, int training,
                       float *feat, float *p_van, float *p_bal, float *map_van, float *map_bal,
                       float *loc_van);

enum { GLAE_PRED_SMALLER = 0, GLAE_PRED_BIGGER = 1, GLAE_PRED_VANILLA = 2, GLAE_PRED_BALANCED = 3 };

/* Inference (eval-mode BN): age (n), prob (n, K), head (n: 0 vanilla, 1 balanced), ups
 * (n, 2) Upsilon_1/2 or NULL, head_age (2, n) or NULL: the vanilla then the balanced
 * head's expected age, flip-averaged with flip (the evaluation reports all three answers
 * from this one pass). route SMALLER/BIGGER: Adaptive Routing (needs the flip: always
 * computed); VANILLA/BALANCED: that head alone. flip: average the distribution with the
 * flipped image's. */
int glae_model_predict(glae_model *m, float *age, float *prob, int32_t *head, float *ups,
                       float *head_age, const void *x, int xnorm, int n, int h, int w, int route,
                       int flip);

/* One SGD step (optim.h) on [begin, end) of the model's flat buffers, on its device.
 * wd_exclude: skip weight decay on the GLAE_P_NO_DECAY tensors (BN, biases). */
int glae_model_sgd_step(glae_model *m, float lr, float momentum, float dampening, float wd,
                        int nesterov, int first_step, size_t begin, size_t end, int wd_exclude);

/* Stage-2 start: balanced head := vanilla head (parameters and BN1d buffers). */
int glae_model_copy_head_to_balanced(glae_model *m);

#endif
