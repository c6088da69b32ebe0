/* The device table of a context: where its memory lives and how to move it. Core knows
 * devices, not ops: arenas, parameter buffers and the op bindings allocate and copy through
 * ctx->dev, and the op table (ops/backend.h) is built on top of it. */
#ifndef GLAE_DEVICE_H
#define GLAE_DEVICE_H

#include <stddef.h>

#include "core/ctx.h"

/* copy directions; the CPU table treats them all as memcpy */
enum { GLAE_COPY_H2D = 0, GLAE_COPY_D2H = 1, GLAE_COPY_D2D = 2 };

typedef struct glae_device_ops {
    const char *name; /* "cpu" or "cuda" */
    /* zeroed allocations; a D2H copy returns once the host data is ready; sync waits for
     * every queued kernel of the context */
    int (*alloc)(glae_ctx *ctx, void **ptr, size_t bytes);
    void (*free)(glae_ctx *ctx, void *ptr);
    int (*memset)(glae_ctx *ctx, void *dst, int value, size_t bytes);
    int (*copy)(glae_ctx *ctx, void *dst, const void *src, size_t bytes, int kind);
    int (*sync)(glae_ctx *ctx);
} glae_device_ops;

extern const glae_device_ops glae_device_cpu;
#ifdef GLAE_WITH_CUDA
extern const glae_device_ops glae_device_cuda; /* cudaMalloc'd buffers, the compute stream */
#endif

#endif
