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

struct glae_backend; /* ops/backend.h */

typedef struct glae_ctx {
    glae_device device;
    int nthreads;        /* CPU threads for OpenMP regions and BLAS */
    float *scratch;      /* CPU scratch, grown on demand, 64-byte aligned */
    size_t scratch_size; /* in floats */
    void *cuda;          /* CUDA handles (streams, cuDNN, cuBLAS) when device == GLAE_CUDA */
    const struct glae_backend *ops; /* the op table of `device`: model code calls through it */
} glae_ctx;

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
