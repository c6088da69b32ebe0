/* The two device tables (device.h). */
#include "core/device.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#ifdef GLAE_WITH_CUDA
#include "core/cuda_ctx.h"
#endif

/* ---- CPU: host allocations, memcpy ----------------------------------------------------- */

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

const glae_device_ops glae_device_cpu = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset = cpu_memset,
    .copy = cpu_copy,
    .sync = cpu_sync,
};

#ifdef GLAE_WITH_CUDA
/* ---- CUDA: cudaMalloc'd buffers, copies on the compute stream ---------------------------- */

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

const glae_device_ops glae_device_cuda = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memset = glae_cuda_memset,
    .copy = cuda_copy,
    .sync = glae_cuda_sync,
};
#endif
