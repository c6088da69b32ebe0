/* The CUDA execution context held by glae_ctx->cuda (device == GLAE_CUDA): the device,
 * a compute stream and a copy stream, cuDNN / cuBLAS / cuBLASLt handles bound to the
 * compute stream, a device workspace grown on demand, the per-shape cache of cuDNN
 * convolution algorithms, and the math mode. Every layer twin (`*_cuda`) runs on the
 * compute stream and returns without synchronising; glae_cuda_sync waits for it.
 *
 * A context is not thread-safe: one per host thread. C callers see an opaque struct;
 * the definition is only visible to nvcc (it needs the CUDA headers). */
#ifndef GLAE_CUDA_CTX_H
#define GLAE_CUDA_CTX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "core/ctx.h" /* a plain C header without its own extern "C" */
#include "core/status.h"

typedef enum {
    GLAE_MATH_FP32 = 0, /* float32 FMA math in cuDNN and cuBLAS (no tensor cores)*/
    GLAE_MATH_TF32 = 1, /* float32 tensors, TF32 tensor cores (10-bit mantissa products) */
    GLAE_MATH_BF16 = 2  /* bf16 tensor cores: bf16 conv twins; fp32 GEMMs via bf16 inputs */
} glae_math_mode;

typedef struct glae_cuda_ctx glae_cuda_ctx;

/* Make ctx a CUDA context on `device`: zeroes ctx (nthreads 0: its host work on the
 * process default), sets ctx->device = GLAE_CUDA and ctx->cuda. On failure everything created so far is released and ctx stays zeroed
 * (so glae_cuda_ctx_destroy on it is harmless). */
int glae_cuda_ctx_create(glae_ctx *ctx, int device, int math_mode);
/* Waits for the streams, releases everything; safe on a zeroed or CPU ctx. */
void glae_cuda_ctx_destroy(glae_ctx *ctx);
int glae_cuda_set_math(glae_ctx *ctx, int math_mode);
int glae_cuda_get_math(const glae_ctx *ctx);
/* benchmark != 0: choose conv algorithms with cudnnFind* (times them, like PyTorch's
 * cudnn.benchmark) instead of the cudnnGet*_v7 heuristics. Clears the algorithm cache. */
int glae_cuda_set_benchmark(glae_ctx *ctx, int benchmark);
/* Largest workspace a conv algorithm may ask for (bytes; default 1 GiB). */
int glae_cuda_set_workspace_limit(glae_ctx *ctx, size_t bytes);
/* Number of cached conv algorithm choices (for tests and reports). */
int glae_cuda_algo_cache_size(const glae_ctx *ctx);
/* Wait for the compute and copy streams; reports asynchronous kernel errors. */
int glae_cuda_sync(glae_ctx *ctx);
/* The context of ctx, or NULL with an error set when ctx is not a CUDA context. */
glae_cuda_ctx *glae_cuda_of(glae_ctx *ctx, const char *fn);
/* Device workspace of at least `bytes` (contents not preserved when it grows). The
 * pointer stays valid until the next call that grows it; stream ordering makes reuse by
 * consecutive ops on the compute stream safe. */
int glae_cuda_workspace(glae_ctx *ctx, size_t bytes, void **ptr);

/* ---- memory helpers (device pointers come from cudaMalloc) ------------------------- */
int glae_cuda_malloc(void **ptr, size_t bytes);
void glae_cuda_free(void *ptr);
/* pinned (page-locked) host memory for fast, asynchronous copies */
int glae_cuda_host_alloc(void **ptr, size_t bytes);
void glae_cuda_host_free(void *ptr);
/* Copies on the compute stream; the D2H copy waits for it so the host data is ready. */
int glae_cuda_h2d(glae_ctx *ctx, void *dst, const void *src, size_t bytes);
int glae_cuda_d2h(glae_ctx *ctx, void *dst, const void *src, size_t bytes);
int glae_cuda_memset(glae_ctx *ctx, void *dst, int value, size_t bytes);
/* D2H on the compute stream without waiting (dst should be pinned; read it after an
 * event recorded later on the compute stream, e.g. a slot's compute_done) */
int glae_cuda_d2h_async(glae_ctx *ctx, void *dst, const void *src, size_t bytes);
/* device-to-device copy on the compute stream */
int glae_cuda_d2d(glae_ctx *ctx, void *dst, const void *src, size_t bytes);
/* Asynchronous H2D on the copy stream (src should be pinned); glae_cuda_copy_wait makes
 * the compute stream wait for every copy issued so far (double-buffered input). */
int glae_cuda_h2d_async(glae_ctx *ctx, void *dst, const void *src, size_t bytes);
int glae_cuda_copy_wait(glae_ctx *ctx);

/* ---- double-buffered input: one slot per (pinned host buffer, device buffer) pair ---
 * glae_cuda_h2d_async + glae_cuda_copy_wait order a copy before the compute that reads
 * it, but not the other two hazards of double buffering: the copy stream overwriting a
 * device buffer that queued compute still reads, and the host refilling a pinned buffer
 * that a copy still reads. A slot holds the two events that close them:
 *   compute_done  recorded on the compute stream after the last op reading the slot's
 *                 device buffer; the copy stream waits on it before overwriting it;
 *   copy_done     recorded on the copy stream after the slot's copies; the compute
 *                 stream waits on it before reading, the host before refilling.
 * One step with slots s[0], s[1] (i = step % 2; never-recorded events count as done):
 *   glae_cuda_slot_host_sync(s[i]);                    host: pinned[i] may be refilled
 *   fill pinned[i] with batch k;
 *   glae_cuda_slot_h2d(ctx, s[i], dev[i], pinned[i], n);   waits compute_done, copies,
 *                                                          records copy_done (repeatable)
 *   glae_cuda_slot_wait_copy(ctx, s[i]);                compute stream waits copy_done
 *   ... ops reading dev[i] ...
 *   glae_cuda_slot_compute_done(ctx, s[i]);             compute stream records
 * A slot belongs to the context (and device) it was created with; destroy slots before
 * the context. Every call is checked; errors are statuses with a message. */
typedef struct glae_cuda_slot glae_cuda_slot;
int glae_cuda_slot_create(glae_ctx *ctx, glae_cuda_slot **slot);
void glae_cuda_slot_destroy(glae_cuda_slot *slot); /* waits for its events; NULL is harmless */
/* H2D of `bytes` on the copy stream after the slot's compute_done; records copy_done.
 * Several copies into one slot may follow each other (copy_done covers all of them). */
int glae_cuda_slot_h2d(glae_ctx *ctx, glae_cuda_slot *slot, void *dst, const void *src,
                       size_t bytes);
/* The compute stream waits for the slot's copies (copy_done). */
int glae_cuda_slot_wait_copy(glae_ctx *ctx, glae_cuda_slot *slot);
/* Records compute_done on the compute stream: every op queued so far that reads the
 * slot's device buffer is before it. */
int glae_cuda_slot_compute_done(glae_ctx *ctx, glae_cuda_slot *slot);
/* Host side of copy_done: *ready = 1 when the slot's copies have finished reading the
 * pinned buffer (query, does not block) ... */
int glae_cuda_slot_host_query(glae_cuda_slot *slot, int *ready);
/* ... or block until they have. */
int glae_cuda_slot_host_sync(glae_cuda_slot *slot);
/* Block until the compute stream has passed the slot's compute_done (the work of the
 * step that recorded it, and what it queued before, e.g. a D2H of its losses). */
int glae_cuda_slot_host_sync_compute(glae_cuda_slot *slot);

/* ---- CUDA graphs of a fixed-shape step ---------------------------------------------
 * Capture records what the context's ops queue on the compute stream (relaxed mode: the
 * host calls they make between launches are allowed) instead of running it. Only valid
 * while every pointer the ops used stays the same: the workspace generation changes when
 * the workspace is reallocated (a graph captured before must then be discarded) or the
 * algorithm cache is cleared (the next capture would have to search: warm up first).
 * cuBLAS gets a fixed workspace of its own for the lifetime of the context
 * (glae_cuda_graph_ready), so it allocates nothing while being captured. */
int glae_cuda_graph_ready(glae_ctx *ctx);
unsigned long long glae_cuda_ws_generation(glae_ctx *ctx);
int glae_cuda_capture_begin(glae_ctx *ctx);
/* Ends the capture (always, also after a failed op: the stream is usable again) and,
 * when keep, instantiates the graph into *exec. */
int glae_cuda_capture_end(glae_ctx *ctx, int keep, void **exec);
int glae_cuda_graph_launch(glae_ctx *ctx, void *exec);
void glae_cuda_graph_destroy(void *exec); /* NULL is harmless */

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

/* one cached conv algorithm choice */
typedef struct {
    int key[16];  /* op, dtype, math, shape (see conv.cu: conv_key) */
    int algo;     /* cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t */
    int math;     /* cudnnMathType_t to set on the descriptor */
    size_t ws;    /* workspace bytes */
} glae_conv_algo;

struct glae_cuda_ctx {
    int device;
    int math;      /* glae_math_mode */
    int benchmark; /* cudnnFind instead of heuristics */
    cudaStream_t stream, copy_stream;
    cudaEvent_t copy_done;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    cublasLtHandle_t cublaslt;
    void *ws;
    size_t ws_size, ws_limit;
    /* bumped when ws is reallocated (graphs hold its address) and when the algorithm
     * cache is cleared (a capture must find every choice made: cudnnFind cannot run in
     * one); part of a graph's key (nn/model.c) */
    unsigned long long ws_gen;
    void *cublas_ws;           /* cuBLAS's own workspace once graphs are used */
    glae_conv_algo *algos;
    int n_algos, cap_algos;
};
#endif

#endif
