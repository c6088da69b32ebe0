/* The execution context passed explicitly to every layer function: device, thread
 * count and a growable scratch buffer (im2col columns and the like). No globals: the
 * one process-wide value is the default thread count of contexts without one. */
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
    int nthreads;        /* CPU threads of its work, OpenMP loops and glae_sgemm's split
                          * (glae_ctx_apply_threads); 0: the process default, at each call */
    float *scratch;      /* CPU scratch, grown on demand, 64-byte aligned */
    size_t scratch_size; /* in floats */
    void *cuda;          /* CUDA handles (streams, cuDNN, cuBLAS) when device == GLAE_CUDA */
    void *onednn;        /* the oneDNN backend's engine, stream and primitive cache (ops/onednn.c) */
    const struct glae_device_ops *dev; /* memory of `device`: alloc, free, memset, copy, sync */
    const struct glae_backend *ops; /* the op table of `device` (set by glae_ctx_open, ops/) */
} glae_ctx;

/* The core part of a CPU context (device table; nthreads starts at 0: the process default).
 * Layers above ops open contexts with glae_ctx_open (ops/backend.h), which also sets the op
 * table. */
int glae_ctx_init(glae_ctx *ctx, glae_device device);
void glae_ctx_free(glae_ctx *ctx);
/* At least `nfloat` floats of scratch; NULL with an error set if allocation fails.
 * The contents are not preserved across calls that grow it. */
float *glae_ctx_scratch(glae_ctx *ctx, size_t nfloat);

/* Threads. OpenMP keeps its thread count per calling thread (and glae_sgemm splits over
 * that count), so work done with a context runs on ctx->nthreads once the calling thread
 * has applied it: every entry of such work calls glae_ctx_apply_threads first (the
 * bindings' GLAE_NOGIL_CTX). Another thread's context, with another count, changes
 * nothing here: a detector on 1 thread beside a model training on 8. */
/* n >= 1: the context's own count; n < 1: follow the process default */
void glae_ctx_set_threads(glae_ctx *ctx, int n);
/* the count its work runs on now (the default's value when it follows it) */
int glae_ctx_threads(const glae_ctx *ctx);
void glae_ctx_apply_threads(const glae_ctx *ctx);

/* The process-wide default (OpenMP's until set): the count of contexts without one of
 * their own and of calls without a context. Nothing in glae sets it temporarily; work
 * that wants another count uses a context with that count. */
void glae_set_num_threads(int n);
int glae_get_num_threads(void);
/* The default in the calling thread: a thread that never applied a count (a Python
 * worker thread) would otherwise run with OpenMP's own default. */
void glae_apply_num_threads(void);

#endif
