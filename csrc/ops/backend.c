/* The two op tables (backend.h). CPU: the reference kernels, plus thin wrappers for the
 * few CPU functions without a ctx argument. CUDA (when built): the `_cuda` twins. */
#include "ops/backend.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "nn/route.h"
#include "train/optim.h"
#include "ops/loss.h"

#ifdef GLAE_WITH_CUDA
#include "ops/ops_cuda.h"
#endif

/* ---- CPU memory: host allocations, memcpy ------------------------------------------- */

static int cpu_alloc(glae_ctx *ctx, void **ptr, size_t bytes) {
    (void)ctx;
    *ptr = calloc(bytes ? bytes : 1, 1);
    if (!*ptr) return glae_fail(GLAE_ERR_MEMORY, "cannot allocate %zu bytes", bytes);
    return GLAE_OK;
}

static void cpu_free(glae_ctx *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

static int cpu_memset(glae_ctx *ctx, void *dst, int value, size_t bytes) {
    (void)ctx;
    if (bytes) memset(dst, value, bytes);
    return GLAE_OK;
}

static int cpu_copy(glae_ctx *ctx, void *dst, const void *src, size_t bytes, int kind) {
    (void)ctx;
    (void)kind;
    if (bytes && dst != src) memcpy(dst, src, bytes);
    return GLAE_OK;
}

static int cpu_sync(glae_ctx *ctx) {
    (void)ctx;
    return GLAE_OK;
}

/* ---- CPU functions that take no ctx ------------------------------------------------- */

static int cpu_label_distribution(glae_ctx *ctx, float *z, const float *y, const float *sigma,
                                  float sigma0, int64_t n, int k, int normalize) {
    (void)ctx;
    return glae_label_distribution(z, y, sigma, sigma0, n, k, normalize);
}

static int cpu_expected_age(glae_ctx *ctx, float *age, const float *p, int64_t rows, int k) {
    (void)ctx;
    return glae_expected_age(age, p, rows, k);
}

static int cpu_kl_rows(glae_ctx *ctx, float *out, const float *p, const float *q, int64_t rows,
                       int k) {
    (void)ctx;
    return glae_kl_rows(out, p, q, rows, k);
}

static int cpu_adaptive_route(glae_ctx *ctx, float *prob, float *age, int32_t *choice, float *ups,
                              const float *p_van, const float *p_van_flip, const float *p_bal,
                              const float *p_bal_flip, int64_t n, int k, int mode,
                              int flip_average) {
    (void)ctx;
    return glae_adaptive_route(prob, age, choice, ups, p_van, p_van_flip, p_bal, p_bal_flip, n, k,
                               mode, flip_average);
}

static int cpu_sgd_step(glae_ctx *ctx, float *params, float *momentum_buf, const float *grads,
                        size_t begin, size_t end, const uint8_t *no_decay_mask, float lr,
                        float momentum, float dampening, float wd, int nesterov, int first_step) {
    (void)ctx;
    return glae_sgd_step(params, momentum_buf, grads, begin, end, no_decay_mask, lr, momentum,
                         dampening, wd, nesterov, first_step);
}

const glae_backend glae_backend_cpu = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset = cpu_memset,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .conv2d_forward = glae_conv2d_forward,
    .conv2d_backward = glae_conv2d_backward,
    .batchnorm_forward = glae_batchnorm_forward,
    .batchnorm_backward = glae_batchnorm_backward,
    .relu_forward = glae_relu_forward,
    .relu_backward = glae_relu_backward,
    .add_forward = glae_add_forward,
    .add_backward = glae_add_backward,
    .maxpool2d_forward = glae_maxpool2d_forward,
    .maxpool2d_backward = glae_maxpool2d_backward,
    .avgpool_forward = glae_avgpool_forward,
    .avgpool_backward = glae_avgpool_backward,
    .linear_forward = glae_linear_forward,
    .linear_backward = glae_linear_backward,
    .pixel_shuffle_forward = glae_pixel_shuffle_forward,
    .pixel_shuffle_backward = glae_pixel_shuffle_backward,
    .softmax_forward = glae_softmax_forward,
    .softmax_backward = glae_softmax_backward,
    .hflip_forward = glae_hflip_forward,
    .fill = glae_fill,
    .flatten_nchw_forward = glae_flatten_nchw_forward,
    .flatten_nchw_backward = glae_flatten_nchw_backward,
    .avg2_forward = glae_avg2_forward,
    .normalise_u8 = glae_normalise_u8,
    .f32_to_bf16 = glae_f32_to_bf16,
    .bf16_to_f32 = glae_bf16_to_f32,
    .conv2d_forward_bf16 = glae_conv2d_forward_bf16,
    .conv2d_backward_bf16 = glae_conv2d_backward_bf16,
    .bn_act_forward_bf16 = glae_bn_act_forward_bf16,
    .bn_act_backward_bf16 = glae_bn_act_backward_bf16,
    .add_forward_bf16 = glae_add_forward_bf16,
    .maxpool2d_forward_bf16 = glae_maxpool2d_forward_bf16,
    .maxpool2d_backward_bf16 = glae_maxpool2d_backward_bf16,
    .label_distribution = cpu_label_distribution,
    .ldl_loss_forward = glae_ldl_loss_forward,
    .ldl_loss_backward = glae_ldl_loss_backward,
    .expected_age = cpu_expected_age,
    .kl_rows = cpu_kl_rows,
    .adaptive_route = cpu_adaptive_route,
    .sgd_step = cpu_sgd_step,
};

#ifdef GLAE_WITH_CUDA
/* ---- CUDA memory: cudaMalloc'd buffers, copies on the compute stream ----------------- */

static int cuda_alloc(glae_ctx *ctx, void **ptr, size_t bytes) {
    *ptr = NULL;
    if (!glae_cuda_of(ctx, "alloc")) return GLAE_ERR_VALUE; /* also makes its device current */
    GLAE_TRY(glae_cuda_malloc(ptr, bytes));
    int st = glae_cuda_memset(ctx, *ptr, 0, bytes ? bytes : 1);
    if (st) {
        glae_cuda_free(*ptr);
        *ptr = NULL;
    }
    return st;
}

static void cuda_free(glae_ctx *ctx, void *ptr) {
    (void)ctx;
    glae_cuda_free(ptr); /* cudaFree waits for the device: no stream-ordered reuse hazard */
}

static int cuda_copy(glae_ctx *ctx, void *dst, const void *src, size_t bytes, int kind) {
    switch (kind) {
    case GLAE_COPY_H2D: return glae_cuda_h2d(ctx, dst, src, bytes);
    case GLAE_COPY_D2H: return glae_cuda_d2h(ctx, dst, src, bytes);
    case GLAE_COPY_D2D: return glae_cuda_d2d(ctx, dst, src, bytes);
    default: return glae_fail(GLAE_ERR_VALUE, "copy: unknown direction %d", kind);
    }
}

const glae_backend glae_backend_cuda = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memset = glae_cuda_memset,
    .copy = cuda_copy,
    .sync = glae_cuda_sync,
    .conv2d_forward = glae_conv2d_forward_cuda,
    .conv2d_backward = glae_conv2d_backward_cuda,
    .batchnorm_forward = glae_batchnorm_forward_cuda,
    .batchnorm_backward = glae_batchnorm_backward_cuda,
    .relu_forward = glae_relu_forward_cuda,
    .relu_backward = glae_relu_backward_cuda,
    .add_forward = glae_add_forward_cuda,
    .add_backward = glae_add_backward_cuda,
    .maxpool2d_forward = glae_maxpool2d_forward_cuda,
    .maxpool2d_backward = glae_maxpool2d_backward_cuda,
    .avgpool_forward = glae_avgpool_forward_cuda,
    .avgpool_backward = glae_avgpool_backward_cuda,
    .linear_forward = glae_linear_forward_cuda,
    .linear_backward = glae_linear_backward_cuda,
    .pixel_shuffle_forward = glae_pixel_shuffle_forward_cuda,
    .pixel_shuffle_backward = glae_pixel_shuffle_backward_cuda,
    .softmax_forward = glae_softmax_forward_cuda,
    .softmax_backward = glae_softmax_backward_cuda,
    .hflip_forward = glae_hflip_forward_cuda,
    .fill = glae_fill_cuda,
    .flatten_nchw_forward = glae_flatten_nchw_forward_cuda,
    .flatten_nchw_backward = glae_flatten_nchw_backward_cuda,
    .avg2_forward = glae_avg2_forward_cuda,
    .normalise_u8 = glae_normalise_u8_cuda,
    .f32_to_bf16 = glae_f32_to_bf16_cuda,
    .bf16_to_f32 = glae_bf16_to_f32_cuda,
    .conv2d_forward_bf16 = glae_conv2d_forward_bf16_cuda,
    .conv2d_backward_bf16 = glae_conv2d_backward_bf16_cuda,
    .bn_act_forward_bf16 = glae_bn_act_forward_bf16_cuda,
    .bn_act_backward_bf16 = glae_bn_act_backward_bf16_cuda,
    .add_forward_bf16 = glae_add_forward_bf16_cuda,
    .maxpool2d_forward_bf16 = glae_maxpool2d_forward_bf16_cuda,
    .maxpool2d_backward_bf16 = glae_maxpool2d_backward_bf16_cuda,
    .label_distribution = glae_label_distribution_cuda,
    .ldl_loss_forward = glae_ldl_loss_forward_cuda,
    .ldl_loss_backward = glae_ldl_loss_backward_cuda,
    .expected_age = glae_expected_age_cuda,
    .kl_rows = glae_kl_rows_cuda,
    .adaptive_route = glae_adaptive_route_cuda,
    .sgd_step = glae_sgd_step_cuda,
};
#endif
