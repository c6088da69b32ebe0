/* The two op tables (backend.h): the CPU reference kernels and, when built, their CUDA
 * twins, each with the signature of its CPU definition (a leading ctx everywhere). */
#include "ops/backend.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#ifdef GLAE_WITH_CUDA
#include "core/cuda_ctx.h"
#endif

#ifdef GLAE_WITH_CUDA
#include "ops/ops_cuda.h"
#endif
#include "ops/onednn.h"

const glae_backend glae_backend_cpu = {
    .name = "cpu",
#define GLAE_CPU_OP_(op) .op = glae_##op,
    GLAE_OPS(GLAE_CPU_OP_)
};

#ifdef GLAE_WITH_CUDA
const glae_backend glae_backend_cuda = {
    .name = "cuda",
#define GLAE_CUDA_OP_(op) .op = glae_##op##_cuda,
    GLAE_OPS(GLAE_CUDA_OP_)
#undef GLAE_CUDA_OP_
};
#endif

#ifdef GLAE_WITH_ONEDNN
/* every op the reference's, then the ones oneDNN runs (later initialisers win) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
const glae_backend glae_backend_onednn = {
    .name = "onednn",
    GLAE_OPS(GLAE_CPU_OP_)
    .conv2d_forward = glae_conv2d_forward_onednn,
    .conv2d_backward = glae_conv2d_backward_onednn,
    .conv2d_bn_act_forward = glae_conv2d_bn_act_forward_onednn,
};
#pragma GCC diagnostic pop
#endif

int glae_onednn_built(void) {
#ifdef GLAE_WITH_ONEDNN
    return 1;
#else
    return 0;
#endif
}

int glae_ctx_open(glae_ctx *ctx, glae_device device, int cuda_device, int math) {
    return glae_ctx_open_backend(ctx, device, cuda_device, math, GLAE_CPU_REFERENCE);
}

int glae_ctx_open_backend(glae_ctx *ctx, glae_device device, int cuda_device, int math,
                          int cpu_backend) {
    if (device == GLAE_CPU) {
        if (cpu_backend != GLAE_CPU_REFERENCE && cpu_backend != GLAE_CPU_ONEDNN) {
            memset(ctx, 0, sizeof *ctx);
            return glae_fail(GLAE_ERR_VALUE, "ctx: unknown CPU backend %d (0 reference, 1 onednn)",
                             cpu_backend);
        }
#ifndef GLAE_WITH_ONEDNN
        if (cpu_backend == GLAE_CPU_ONEDNN) {
            memset(ctx, 0, sizeof *ctx);
            return glae_fail(GLAE_ERR_RUNTIME, "ctx: glae was built without oneDNN (cpu_backend="
                             "'onednn'; pip install onednn-devel-cpu-gomp and rebuild)");
        }
#endif
        GLAE_TRY(glae_ctx_init(ctx, GLAE_CPU));
        ctx->ops = &glae_backend_cpu;
#ifdef GLAE_WITH_ONEDNN
        if (cpu_backend == GLAE_CPU_ONEDNN) {
            int st = glae_onednn_ctx_init(ctx);
            if (st) {
                glae_ctx_free(ctx);
                return st;
            }
            ctx->ops = &glae_backend_onednn;
        }
#endif
        return GLAE_OK;
    }
#ifdef GLAE_WITH_CUDA
    if (device == GLAE_CUDA) {
        GLAE_TRY(glae_cuda_ctx_create(ctx, cuda_device, math));
        ctx->ops = &glae_backend_cuda;
        return GLAE_OK;
    }
#else
    (void)cuda_device;
    (void)math;
#endif
    memset(ctx, 0, sizeof *ctx);
    return glae_fail(GLAE_ERR_VALUE, "ctx: device %d is not built (CPU = 0%s)", (int)device,
#ifdef GLAE_WITH_CUDA
                     ", CUDA = 1"
#else
                     "; glae was built without CUDA"
#endif
    );
}

void glae_ctx_close(glae_ctx *ctx) {
#ifdef GLAE_WITH_ONEDNN
    glae_onednn_ctx_free(ctx);
#endif
#ifdef GLAE_WITH_CUDA
    if (ctx->device == GLAE_CUDA) {
        glae_cuda_ctx_destroy(ctx);
        return;
    }
#endif
    glae_ctx_free(ctx);
}
