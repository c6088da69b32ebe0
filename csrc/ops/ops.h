/* Layer functions of the CPU engine. Each layer is a forward/backward pair; the CUDA
 * twin (ops/<family>.cu) has the same signature with a `_cuda` suffix.
 *
 * Conventions (STYLE.md, llm.c):
 *  - argument order: ctx, outputs, saved values, inputs, parameters, sizes;
 *    backward: ctx, input grads, parameter grads, output grad, saved values, ...
 *  - activations are NHWC float32; semantics follow PyTorch's logical NCHW definitions;
 *  - outputs and input gradients are overwritten (=); parameter gradients accumulate
 *    (+=), cleared by an explicit zero-grad. Any gradient pointer may be NULL: it is
 *    then not computed;
 *  - every function returns a glae_status (0 = ok) and never aborts.
 */
#ifndef GLAE_OPS_H
#define GLAE_OPS_H

#include <stdint.h>

#include "core/ctx.h"
#include "core/status.h"

/* ---- conv2d (conv.c) -------------------------------------------------------------
 * in (N, H, W, Cin), weight (Cout, KH, KW, Cin) [torchvision OIHW permuted to OHWI],
 * bias (Cout) or NULL, out (N, OH, OW, Cout); zero padding. */
typedef struct {
    int n, h, w, c_in, c_out, kh, kw, stride_h, stride_w, pad_h, pad_w;
    int oh, ow; /* filled by glae_conv2d_shape_init */
} glae_conv2d_shape;

int glae_conv2d_shape_init(glae_conv2d_shape *s, int n, int h, int w, int c_in, int c_out, int kh,
                           int kw, int stride_h, int stride_w, int pad_h, int pad_w);
int glae_conv2d_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                        const float *bias, const glae_conv2d_shape *s);
int glae_conv2d_backward(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                         const float *dout, const float *in, const float *weight,
                         const glae_conv2d_shape *s);

/* ---- batch norm 2d (norm.c) --------------------------------------------------------
 * x viewed as (rows = N*H*W, C). Training: batch statistics, biased variance for the
 * normalisation, running_var updated with the unbiased one, running = (1-m)*running +
 * m*batch (PyTorch). Eval: running statistics. save_mean / save_invstd (C) are written
 * in both modes (eval: running mean and 1/sqrt(running_var+eps)) so the backward needs
 * no branches on the caller's side. running_* may be NULL in training (not updated). */
int glae_batchnorm_forward(glae_ctx *ctx, float *out, float *save_mean, float *save_invstd,
                           const float *in, const float *gamma, const float *beta,
                           float *running_mean, float *running_var, int64_t rows, int c,
                           float momentum, float eps, int training);
int glae_batchnorm_backward(glae_ctx *ctx, float *din, float *dgamma, float *dbeta,
                            const float *dout, const float *in, const float *save_mean,
                            const float *save_invstd, const float *gamma, int64_t rows, int c,
                            int training);

/* ---- ghost batch norm (norm.c): the statistics over consecutive groups of rows ----------
 * The papers' per-GPU batch norm on one device (LAE 2.3: 8 GPUs x 32 images): rows are
 * split into groups of group_rows (the last may be shorter, but never a single row in
 * training), each normalised with its own batch statistics as glae_batchnorm_forward
 * would. save_mean / save_invstd hold (groups, C), groups = ceil(rows / group_rows).
 * running_mean / running_var are fed by group 0 only: what rank 0 of a data-parallel run
 * keeps and saves (docs/distributed.md). Eval mode is glae_batchnorm_forward's (every
 * group's saved statistics are the running ones). group_rows >= rows is the plain op. */
int glae_batchnorm_ghost_forward(glae_ctx *ctx, float *out, float *save_mean,
                                 float *save_invstd, const float *in, const float *gamma,
                                 const float *beta, float *running_mean, float *running_var,
                                 int64_t rows, int c, int64_t group_rows, float momentum,
                                 float eps, int training);
/* Its backward, group by group; dgamma, dbeta accumulate over the groups (+=). */
int glae_batchnorm_ghost_backward(glae_ctx *ctx, float *din, float *dgamma, float *dbeta,
                                  const float *dout, const float *in, const float *save_mean,
                                  const float *save_invstd, const float *gamma, int64_t rows,
                                  int c, int64_t group_rows, int training);

/* ---- ReLU (act.c); out may alias in, din may alias dout --------------------------- */
int glae_relu_forward(glae_ctx *ctx, float *out, const float *in, int64_t n);
/* uses the forward output: d/dx relu = [out > 0] */
int glae_relu_backward(glae_ctx *ctx, float *din, const float *dout, const float *out, int64_t n);

/* ---- residual add (act.c) --------------------------------------------------------- */
int glae_add_forward(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n);
/* da = dout, db = dout (either may be NULL) */
int glae_add_backward(glae_ctx *ctx, float *da, float *db, const float *dout, int64_t n);

/* ---- SiLU, sigmoid, channel scale (act.c): EfficientNetV2's activations and SE ----------
 * silu: out = x * sigmoid(x) = x / (1 + exp(-x)) (PyTorch); its backward reads the input.
 * sigmoid: out = 1 / (1 + exp(-x)); its backward reads the output: din = dout*out*(1-out).
 * channel_scale: out[i, p, j] = in[i, p, j] * scale[i, j] over (N, HW, C), the excitation of
 * squeeze-and-excitation; with C = 1 and HW the whole sample it scales each sample (the
 * stochastic-depth drop). Its backward writes din = dout * scale and dscale[i, j] = sum_p
 * dout * in (an activation gradient: written, not accumulated); either may be NULL. */
int glae_silu_forward(glae_ctx *ctx, float *out, const float *in, int64_t n);
int glae_silu_backward(glae_ctx *ctx, float *din, const float *dout, const float *in, int64_t n);
int glae_sigmoid_forward(glae_ctx *ctx, float *out, const float *in, int64_t n);
int glae_sigmoid_backward(glae_ctx *ctx, float *din, const float *dout, const float *out,
                          int64_t n);
int glae_channel_scale_forward(glae_ctx *ctx, float *out, const float *in, const float *scale,
                               int n, int64_t hw, int c);
int glae_channel_scale_backward(glae_ctx *ctx, float *din, float *dscale, const float *dout,
                                const float *in, const float *scale, int n, int64_t hw, int c);

/* ---- max pool 2d (pool.c) ----------------------------------------------------------
 * in (N, H, W, C) -> out (N, OH, OW, C); padding counts as -inf (PyTorch). argmax
 * (N, OH, OW, C) holds the winning input position h*W + w, used by the backward. */
typedef struct {
    int n, h, w, c, k, stride, pad, ceil_mode;
    int oh, ow; /* filled by glae_pool_shape_init (PyTorch's output-size rule) */
} glae_pool_shape;

int glae_pool_shape_init(glae_pool_shape *s, int n, int h, int w, int c, int k, int stride,
                         int pad, int ceil_mode);
int glae_maxpool2d_forward(glae_ctx *ctx, float *out, int32_t *argmax, const float *in,
                           const glae_pool_shape *s);
int glae_maxpool2d_backward(glae_ctx *ctx, float *din, const float *dout, const int32_t *argmax,
                            const glae_pool_shape *s);

/* ---- global average pool (pool.c): (N, HW, C) -> (N, C) ---------------------------- */
int glae_avgpool_forward(glae_ctx *ctx, float *out, const float *in, int n, int hw, int c);
int glae_avgpool_backward(glae_ctx *ctx, float *din, const float *dout, int n, int hw, int c);

/* ---- linear (linear.c): out (N, OUT) = in (N, IN) W^T + b, W (OUT, IN) like PyTorch - */
int glae_linear_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                        const float *bias, int n, int in_f, int out_f);
int glae_linear_backward(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                         const float *dout, const float *in, const float *weight, int n,
                         int in_f, int out_f);

/* ---- pixel shuffle (shuffle.c) -----------------------------------------------------
 * PyTorch PixelShuffle(r) on the logical NCHW tensor (N, C*r*r, H, W) -> (N, C, H*r, W*r):
 *   out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]
 * stored NHWC: in (N, H, W, C*r*r) -> out (N, H*r, W*r, C). */
int glae_pixel_shuffle_forward(glae_ctx *ctx, float *out, const float *in, int n, int h, int w,
                               int c_in, int r);
int glae_pixel_shuffle_backward(glae_ctx *ctx, float *din, const float *dout, int n, int h,
                                int w, int c_in, int r);

/* ---- softmax / log-softmax over the last axis (softmax.c): (rows, K) --------------- */
int glae_softmax_forward(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k);
int glae_softmax_backward(glae_ctx *ctx, float *din, const float *dout, const float *out,
                          int64_t rows, int k);
int glae_log_softmax_forward(glae_ctx *ctx, float *out, const float *in, int64_t rows, int k);
int glae_log_softmax_backward(glae_ctx *ctx, float *din, const float *dout, const float *out,
                              int64_t rows, int k);

/* ---- PReLU (prelu.c), PyTorch semantics, one slope per channel: (rows, C) --------------
 * out = x > 0 ? x : weight[c] * x; weight (C). nn.PReLU() with one shared slope: c = 1. */
int glae_prelu_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                       int64_t rows, int c);
/* din = x > 0 ? dout : weight[c] * dout; dweight[c] += sum over x <= 0 of dout * x */
int glae_prelu_backward(glae_ctx *ctx, float *din, float *dweight, const float *dout,
                        const float *in, const float *weight, int64_t rows, int c);

/* ---- horizontal flip of an NHWC batch (act.c): out[n, h, w, c] = in[n, h, W-1-w, c] - */
int glae_hflip_forward(glae_ctx *ctx, float *out, const float *in, int n, int h, int w, int c);

/* ---- small ops that replace host loops in the model code (util.c) ------------------
 * fill: out[i] = value.
 * flatten_nchw: (N, P, C) stored NHWC -> (N, C, P), PyTorch's flatten order of an NCHW
 * map (P = H*W); the backward is the inverse permutation (din written, not accumulated).
 * avg2: out[i] = 0.5f * (a[i] + b[i]) (the test-time flip average). */
int glae_fill(glae_ctx *ctx, float *out, float value, int64_t n);
int glae_flatten_nchw_forward(glae_ctx *ctx, float *out, const float *in, int n, int64_t p, int c);
int glae_flatten_nchw_backward(glae_ctx *ctx, float *din, const float *dout, int n, int64_t p,
                               int c);
int glae_avg2_forward(glae_ctx *ctx, float *out, const float *a, const float *b, int64_t n);

/* ---- input normalisation (util.c): uint8 RGB pixels -> the float32 the network reads --
 * out[i] = (float)in[i] * scale[c] + offset[c], c = i % 3, the two float operations
 * rounded separately (no FMA), so the CPU, the CUDA twin and the data loader's float
 * output (augment.c) agree bitwise. n = the number of values (pixels * 3). Norms:
 *   GLAE_NORM_GLAE      (x - 127.5) / 128            GLAE sec. V-A
 *   GLAE_NORM_IMAGENET  (x / 255 - mean[c]) / std[c] LAE sec. 2.2, torchvision's constants
 *   GLAE_NORM_NONE      x                            */
enum { GLAE_NORM_GLAE = 0, GLAE_NORM_IMAGENET = 1, GLAE_NORM_NONE = 2 };
int glae_norm_coeffs(int norm, float scale[3], float offset[3]);
int glae_normalise_u8(glae_ctx *ctx, float *out, const uint8_t *in, int64_t n, int norm);

/* ---- mixed precision: bf16 activations (bf16.c) -------------------------------------
 * The backbone's activations and their gradients stored as bfloat16, parameters and
 * their gradients float32 (autocast's split). Each op computes in float32 (double for
 * the batch-norm sums) and rounds its result to bf16 once, round to nearest even; the
 * CUDA twins (bf16.cu, conv.cu) do the same on tensor cores. See docs/precision.md. */
static inline glae_bf16 glae_f2bf(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (glae_bf16)((v.u >> 16) | 0x40u); /* quiet NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (glae_bf16)(v.u >> 16);
}
static inline float glae_bf2f(glae_bf16 h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
int glae_f32_to_bf16(glae_ctx *ctx, glae_bf16 *out, const float *in, int64_t n);
int glae_bf16_to_f32(glae_ctx *ctx, float *out, const glae_bf16 *in, int64_t n);
/* conv2d with bf16 activations: the float32 weight is rounded to bf16 per call (as
 * autocast does), the product accumulated in float32 and rounded; a bias is added to
 * the rounded output and rounded again (cuDNN's output, then our bias kernel).
 * dweight += the bf16-rounded weight gradient; dbias += sum of dout. */
int glae_conv2d_forward_bf16(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *in,
                             const float *weight, const float *bias, const glae_conv2d_shape *s);
int glae_conv2d_backward_bf16(glae_ctx *ctx, glae_bf16 *din, float *dweight, float *dbias,
                              const glae_bf16 *dout, const glae_bf16 *in, const float *weight,
                              const glae_conv2d_shape *s);
/* Fused batch norm + residual + ReLU (ResNet's "bn", "bn, relu" and "bn, + identity,
 * relu"): out = act(BN(in) + residual), act = ReLU when relu != 0, residual NULL for
 * none; BN as glae_batchnorm_forward (statistics of the bf16 inputs, float32 math). */
int glae_bn_act_forward_bf16(glae_ctx *ctx, glae_bf16 *out, float *save_mean,
                             float *save_invstd, const glae_bf16 *in, const glae_bf16 *residual,
                             const float *gamma, const float *beta, float *running_mean,
                             float *running_var, int64_t rows, int c, float momentum, float eps,
                             int training, int relu);
/* Its backward: g = relu ? dout * [out > 0] : dout; dres = g (the residual's gradient,
 * NULL: not written; may alias dout); dgamma, dbeta += as glae_batchnorm_backward on g;
 * din = BN's input gradient of g. out is only read when relu != 0. */
int glae_bn_act_backward_bf16(glae_ctx *ctx, glae_bf16 *din, glae_bf16 *dres, float *dgamma,
                              float *dbeta, const glae_bf16 *dout, const glae_bf16 *out,
                              const glae_bf16 *in, const float *save_mean,
                              const float *save_invstd, const float *gamma, int64_t rows, int c,
                              int training, int relu);
int glae_add_forward_bf16(glae_ctx *ctx, glae_bf16 *out, const glae_bf16 *a, const glae_bf16 *b,
                          int64_t n);
int glae_maxpool2d_forward_bf16(glae_ctx *ctx, glae_bf16 *out, int32_t *argmax,
                                const glae_bf16 *in, const glae_pool_shape *s);
/* din summed in float32 over the windows that chose each input, rounded once */
int glae_maxpool2d_backward_bf16(glae_ctx *ctx, glae_bf16 *din, const glae_bf16 *dout,
                                 const int32_t *argmax, const glae_pool_shape *s);

/* The ops of this header in the op table (ops/backend.h): glae_<op> here is the
 * reference, glae_<op>_cuda its twin with the same signature (ops_cuda.h). A new op of
 * this family adds its name here. */
#define GLAE_OPS_LAYERS(X) \
    X(conv2d_forward) X(conv2d_backward) X(batchnorm_forward) X(batchnorm_backward) \
    X(relu_forward) X(relu_backward) X(add_forward) X(add_backward) X(maxpool2d_forward) \
    X(maxpool2d_backward) X(avgpool_forward) X(avgpool_backward) X(linear_forward) \
    X(linear_backward) X(pixel_shuffle_forward) X(pixel_shuffle_backward) X(softmax_forward) \
    X(softmax_backward) X(log_softmax_forward) X(log_softmax_backward) X(prelu_forward) \
    X(prelu_backward) X(hflip_forward) X(silu_forward) X(silu_backward) X(sigmoid_forward) \
    X(sigmoid_backward) X(channel_scale_forward) X(channel_scale_backward) X(fill) \
    X(flatten_nchw_forward) X(flatten_nchw_backward) X(avg2_forward) X(normalise_u8) \
    X(f32_to_bf16) X(bf16_to_f32) X(conv2d_forward_bf16) X(conv2d_backward_bf16) \
    X(bn_act_forward_bf16) X(bn_act_backward_bf16) X(add_forward_bf16) \
    X(maxpool2d_forward_bf16) X(maxpool2d_backward_bf16) \
    X(batchnorm_ghost_forward) X(batchnorm_ghost_backward)

#endif
