/* The execution context passed explicitly to every layer function: device, thread
 * count and a growable scratch buffer (im2col columns and the like). No globals. */
#ifndef GLAE_CTX_H
#define GLAE_CTX_H

#include <stddef.h>
#include <stdint.h>

/* bfloat16 storage (the upper 16 bits of a float32): the backbone's activations in mixed
 * precision (ops/bf16.c); the CUDA kernels view it as __nv_bfloat16 */
typedef uint16_t glae_bf16;

/* Where a context runs its kernels. Kernels themselves take raw pointers and explicit
 * sizes (see docs/architecture.md, "Kernels take pointers and sizes"). */
typedef enum { GLAE_CPU = 0, GLAE_CUDA = 1 } glae_device;

struct glae_device_ops; /* core/device.h */
struct glae_backend;    /* ops/backend.h: core stores the op table, never calls it */

typedef struct glae_ctx {
    glae_device device;
    int nthreads;        /* CPU threads for OpenMP regions and BLAS */
    float *scratch;      /* CPU scratch, grown on demand, 64-byte aligned */
    size_t scratch_size; /* in floats */
    void *cuda;          /* CUDA handles (streams, cuDNN, cuBLAS) when device == GLAE_CUDA */
    const struct glae_device_ops *dev; /* memory of `device`: alloc, free, memset, copy, sync */
    const struct glae_backend *ops; /* the op table of `device` (set by glae_ctx_open, ops/) */
} glae_ctx;

/* The core part of a CPU context (device table, threads). Layers above ops open contexts
 * with glae_ctx_open (ops/backend.h), which also sets the op table. */
int glae_ctx_init(glae_ctx *ctx, glae_device device);
void glae_ctx_free(glae_ctx *ctx);
/* At least `nfloat` floats of scratch; NULL with an error set if allocation fails.
 * The contents are not preserved across calls that grow it. */
float *glae_ctx_scratch(glae_ctx *ctx, size_t nfloat);

/* Process-wide CPU threads (OpenMP + OpenBLAS). */
void glae_set_num_threads(int n);
int glae_get_num_threads(void);
/* OpenMP keeps its thread count per calling thread: a thread that did not call
 * glae_set_num_threads (a Python worker thread) would run with OpenMP's default. Every
 * entry from Python calls this first, so the process-wide setting holds in every thread. */
void glae_apply_num_threads(void);

#endif
