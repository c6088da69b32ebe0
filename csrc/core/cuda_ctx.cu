/* The CUDA context: creation and destruction with every call checked, the workspace,
 * memory helpers. Errors become a status and a message, never an abort. */
#include <stdlib.h>
#include <string.h>

#include "core/cuda.h"
#include "core/cuda_ctx.h"
extern "C" {
#include "core/device.h" /* a plain C header */
}

#define DEFAULT_WS_LIMIT ((size_t)1 << 30)

glae_cuda_ctx *glae_cuda_of(glae_ctx *ctx, const char *fn) {
    if (!ctx || ctx->device != GLAE_CUDA || !ctx->cuda) {
        glae_fail(GLAE_ERR_VALUE, "%s: not a CUDA context (create it with glae_cuda_ctx_create)",
                  fn);
        return NULL;
    }
    glae_cuda_ctx *c = (glae_cuda_ctx *)ctx->cuda;
    /* the current device is per host thread: a model made on cuda:N may be called from
     * another thread (cudaGetDevice is a cheap query) */
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != c->device) {
        cudaError_t e = cudaSetDevice(c->device);
        if (e != cudaSuccess) {
            glae_fail(GLAE_ERR_CUDA, "%s: cudaSetDevice(%d) failed: %s", fn, c->device,
                      cudaGetErrorString(e));
            return NULL;
        }
    }
    return c;
}

/* cuBLAS math for the fp32 GEMMs; the compute type of each GEMM is chosen per call too
 * (gemm_compute, linear.cu), this keeps plain cublasSgemm callers consistent with it:
 * TF32 only in TF32 mode (the GEMMs are the heads', float32 under bf16 too) */
static int apply_math(glae_cuda_ctx *c) {
    cublasMath_t m = c->math == GLAE_MATH_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    GLAE_CUBLAS_CHECK(cublasSetMathMode(c->cublas, m));
    return GLAE_OK;
}

/* release what exists; every handle may be NULL (partial creation) */
static void release(glae_cuda_ctx *c) {
    int prev = -1;
    cudaGetDevice(&prev);
    cudaSetDevice(c->device);
    if (c->ws && c->stream) cudaFreeAsync(c->ws, c->stream); /* it came from cudaMallocAsync */
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream);
    if (c->cublaslt) cublasLtDestroy(c->cublaslt);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->cublas_ws) cudaFree(c->cublas_ws); /* after the handle that used it */
    if (c->cudnn) cudnnDestroy(c->cudnn);
    if (c->copy_done) cudaEventDestroy(c->copy_done);
    if (c->copy_stream) cudaStreamDestroy(c->copy_stream);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->algos);
    free(c);
    cudaGetLastError(); /* errors while tearing down are not the caller's next error */
    if (prev >= 0) cudaSetDevice(prev);
}

static int create(glae_cuda_ctx *c, int device, int math) {
    int count = 0;
    GLAE_TRY(glae_cuda_device_count(&count));
    if (count == 0) {
        char why[512];
        glae_cuda_probe(NULL, NULL, NULL, why, (int)sizeof why);
        return glae_fail(GLAE_ERR_CUDA, "cuda_ctx_create: no CUDA device is available (%s)", why);
    }
    if (device < 0 || device >= count)
        return glae_fail(GLAE_ERR_VALUE, "cuda_ctx_create: device %d does not exist (%d device(s))",
                         device, count);
    c->device = device;
    c->math = math;
    c->ws_limit = DEFAULT_WS_LIMIT;
    GLAE_CUDA_CHECK(cudaSetDevice(device));
    /* stream-ordered allocations (the workspace, the bf16 fallback's temporaries) stay in
     * the device's pool instead of going back to the driver at every synchronisation */
    cudaMemPool_t pool;
    unsigned long long keep = ~0ULL;
    if (cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess)
        cudaGetLastError(); /* only a speed matter: the pool then returns blocks at syncs */
    GLAE_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    GLAE_CUDA_CHECK(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking));
    GLAE_CUDA_CHECK(cudaEventCreateWithFlags(&c->copy_done, cudaEventDisableTiming));
    GLAE_CUDNN_CHECK(cudnnCreate(&c->cudnn));
    GLAE_CUDNN_CHECK(cudnnSetStream(c->cudnn, c->stream));
    GLAE_CUBLAS_CHECK(cublasCreate(&c->cublas));
    GLAE_CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
    GLAE_CUBLAS_CHECK(cublasLtCreate(&c->cublaslt));
    return apply_math(c);
}

static int check_math(const char *fn, int m) {
    if (m != GLAE_MATH_FP32 && m != GLAE_MATH_TF32 && m != GLAE_MATH_BF16)
        return glae_fail(GLAE_ERR_VALUE, "%s: unknown math mode %d (0 fp32, 1 tf32, 2 bf16)", fn, m);
    return GLAE_OK;
}

extern "C" int glae_cuda_ctx_create(glae_ctx *ctx, int device, int math_mode) {
    if (!ctx) return glae_fail(GLAE_ERR_VALUE, "cuda_ctx_create: ctx is NULL");
    memset(ctx, 0, sizeof *ctx);
    GLAE_TRY(check_math("cuda_ctx_create", math_mode));
    glae_cuda_ctx *c = (glae_cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return glae_fail(GLAE_ERR_MEMORY, "cuda_ctx_create: out of host memory");
    int st = create(c, device, math_mode);
    if (st) {
        /* keep the message of the failing call: release() never calls glae_fail */
        release(c);
        return st;
    }
    ctx->device = GLAE_CUDA;
    ctx->dev = &glae_device_cuda;
    ctx->nthreads = 0; /* its host work (init, pinned copies): the process default */
    ctx->cuda = c;
    return GLAE_OK;
}

extern "C" void glae_cuda_ctx_destroy(glae_ctx *ctx) {
    if (!ctx) return;
    if (ctx->device == GLAE_CUDA && ctx->cuda) release((glae_cuda_ctx *)ctx->cuda);
    free(ctx->scratch);
    memset(ctx, 0, sizeof *ctx);
}

extern "C" int glae_cuda_set_math(glae_ctx *ctx, int math_mode) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_set_math");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(check_math("cuda_set_math", math_mode));
    c->math = math_mode; /* the algorithm cache is keyed by math mode: no flush needed, */
    c->ws_gen++;         /* but the new mode's choices are yet to be made (not in a capture) */
    return apply_math(c);
}

extern "C" int glae_cuda_get_math(const glae_ctx *ctx) {
    return ctx && ctx->device == GLAE_CUDA && ctx->cuda ? ((glae_cuda_ctx *)ctx->cuda)->math : -1;
}

extern "C" int glae_cuda_set_benchmark(glae_ctx *ctx, int benchmark) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_set_benchmark");
    if (!c) return GLAE_ERR_VALUE;
    c->benchmark = benchmark != 0;
    c->n_algos = 0;
    c->ws_gen++; /* a captured step would now search for algorithms: warm up again */
    return GLAE_OK;
}

extern "C" int glae_cuda_set_workspace_limit(glae_ctx *ctx, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_set_workspace_limit");
    if (!c) return GLAE_ERR_VALUE;
    c->ws_limit = bytes;
    c->n_algos = 0; /* choices were made under the old limit */
    c->ws_gen++;
    return GLAE_OK;
}

extern "C" int glae_cuda_algo_cache_size(const glae_ctx *ctx) {
    return ctx && ctx->device == GLAE_CUDA && ctx->cuda ? ((glae_cuda_ctx *)ctx->cuda)->n_algos : 0;
}

extern "C" int glae_cuda_sync(glae_ctx *ctx) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_sync");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_CUDA_CHECK(cudaStreamSynchronize(c->copy_stream));
    GLAE_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    GLAE_CUDA_CHECK(cudaGetLastError());
    return GLAE_OK;
}

extern "C" int glae_cuda_workspace(glae_ctx *ctx, size_t bytes, void **ptr) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_workspace");
    if (!c) return GLAE_ERR_VALUE;
    *ptr = NULL;
    if (bytes == 0) bytes = 1;
    if (bytes > c->ws_size) {
        /* never while a graph is being captured: the new buffer would be the graph's own
         * allocation, the old one cannot be freed inside it (the capture then fails
         * cleanly and the step runs plainly) */
        cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(c->stream, &cap) == cudaSuccess && cap != cudaStreamCaptureStatusNone)
            return glae_fail(GLAE_ERR_CUDA, "cuda_workspace: cannot grow the workspace (%zu -> %zu "
                             "bytes) while capturing a CUDA graph", c->ws_size, bytes);
        /* stream-ordered free / malloc: work already queued keeps the old buffer alive */
        if (c->ws) GLAE_CUDA_CHECK(cudaFreeAsync(c->ws, c->stream));
        c->ws = NULL;
        c->ws_size = 0;
        size_t grown = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1); /* 1 MiB steps */
        GLAE_CUDA_CHECK(cudaMallocAsync(&c->ws, grown, c->stream));
        c->ws_size = grown;
        c->ws_gen++;
    }
    *ptr = c->ws;
    return GLAE_OK;
}

/* ---- memory helpers ---------------------------------------------------------------- */

extern "C" int glae_cuda_malloc(void **ptr, size_t bytes) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1; /* a valid, distinct pointer even for empty tensors */
    cudaError_t e = cudaMalloc(ptr, bytes);
    if (e == cudaErrorMemoryAllocation) {
        /* the stream-ordered pool keeps freed blocks (release threshold): give them back
         * to the driver and try once more */
        cudaGetLastError();
        int dev = 0;
        cudaMemPool_t pool;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess &&
            cudaDeviceSynchronize() == cudaSuccess && cudaMemPoolTrimTo(pool, 0) == cudaSuccess)
            e = cudaMalloc(ptr, bytes);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        *ptr = NULL;
        return glae_fail(e == cudaErrorMemoryAllocation ? GLAE_ERR_MEMORY : GLAE_ERR_CUDA,
                         "cudaMalloc(%zu bytes) failed: %s", bytes, cudaGetErrorString(e));
    }
    return GLAE_OK;
}

extern "C" void glae_cuda_free(void *ptr) {
    if (ptr) cudaFree(ptr);
}

extern "C" int glae_cuda_host_alloc(void **ptr, size_t bytes) {
    *ptr = NULL;
    if (bytes == 0) bytes = 1;
    cudaError_t e = cudaMallocHost(ptr, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *ptr = NULL;
        return glae_fail(GLAE_ERR_MEMORY, "cudaMallocHost(%zu bytes) failed: %s", bytes,
                         cudaGetErrorString(e));
    }
    return GLAE_OK;
}

extern "C" void glae_cuda_host_free(void *ptr) {
    if (ptr) cudaFreeHost(ptr);
}

extern "C" int glae_cuda_h2d(glae_ctx *ctx, void *dst, const void *src, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_h2d");
    if (!c) return GLAE_ERR_VALUE;
    if (bytes == 0) return GLAE_OK;
    /* from pageable memory cudaMemcpyAsync returns once src has been staged, so the
     * caller may reuse src right away; from pinned memory it is truly asynchronous and
     * src must stay untouched until the stream reaches the copy */
    GLAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_d2h(glae_ctx *ctx, void *dst, const void *src, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_d2h");
    if (!c) return GLAE_ERR_VALUE;
    if (bytes) GLAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    GLAE_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_d2h_async(glae_ctx *ctx, void *dst, const void *src, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_d2h_async");
    if (!c) return GLAE_ERR_VALUE;
    if (bytes) GLAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_memset(glae_ctx *ctx, void *dst, int value, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_memset");
    if (!c) return GLAE_ERR_VALUE;
    if (bytes == 0) return GLAE_OK;
    GLAE_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, c->stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_d2d(glae_ctx *ctx, void *dst, const void *src, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_d2d");
    if (!c) return GLAE_ERR_VALUE;
    if (bytes == 0 || dst == src) return GLAE_OK;
    GLAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_h2d_async(glae_ctx *ctx, void *dst, const void *src, size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_h2d_async");
    if (!c) return GLAE_ERR_VALUE;
    if (bytes == 0) return GLAE_OK;
    GLAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->copy_stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_copy_wait(glae_ctx *ctx) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_copy_wait");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_CUDA_CHECK(cudaEventRecord(c->copy_done, c->copy_stream));
    GLAE_CUDA_CHECK(cudaStreamWaitEvent(c->stream, c->copy_done, 0));
    return GLAE_OK;
}

/* ---- double-buffered input slots ----------------------------------------------------- */

struct glae_cuda_slot {
    int device;
    cudaEvent_t compute_done; /* compute stream is done reading the device buffer */
    cudaEvent_t copy_done;    /* copy stream is done reading the pinned buffer */
};

/* run on the slot's device, restoring the caller's current device afterwards */
static int slot_events_create(glae_cuda_slot *s) {
    GLAE_CUDA_CHECK(cudaEventCreateWithFlags(&s->compute_done, cudaEventDisableTiming));
    GLAE_CUDA_CHECK(cudaEventCreateWithFlags(&s->copy_done, cudaEventDisableTiming));
    return GLAE_OK;
}

static void slot_release(glae_cuda_slot *s) {
    if (s->copy_done) {
        cudaEventSynchronize(s->copy_done);
        cudaEventDestroy(s->copy_done);
    }
    if (s->compute_done) {
        cudaEventSynchronize(s->compute_done);
        cudaEventDestroy(s->compute_done);
    }
    cudaGetLastError(); /* errors while tearing down are not the caller's next error */
    free(s);
}

extern "C" int glae_cuda_slot_create(glae_ctx *ctx, glae_cuda_slot **slot) {
    if (!slot) return glae_fail(GLAE_ERR_VALUE, "cuda_slot_create: slot is NULL");
    *slot = NULL;
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_slot_create");
    if (!c) return GLAE_ERR_VALUE;
    glae_cuda_slot *s = (glae_cuda_slot *)calloc(1, sizeof *s);
    if (!s) return glae_fail(GLAE_ERR_MEMORY, "cuda_slot_create: out of host memory");
    s->device = c->device;
    int prev = -1;
    cudaError_t e = cudaGetDevice(&prev);
    if (e == cudaSuccess) e = cudaSetDevice(c->device); /* events belong to the current device */
    if (e != cudaSuccess) {
        cudaGetLastError();
        free(s);
        return glae_fail(GLAE_ERR_CUDA, "cuda_slot_create: cannot select device %d: %s", c->device,
                         cudaGetErrorString(e));
    }
    int st = slot_events_create(s);
    e = cudaSetDevice(prev);
    if (!st && e != cudaSuccess)
        st = glae_fail(GLAE_ERR_CUDA, "cuda_slot_create: cannot restore device %d: %s", prev,
                       cudaGetErrorString(e));
    if (st) {
        slot_release(s); /* keeps the message of the failing call */
        return st;
    }
    *slot = s;
    return GLAE_OK;
}

extern "C" void glae_cuda_slot_destroy(glae_cuda_slot *slot) {
    if (slot) slot_release(slot);
}

static int slot_check(glae_cuda_ctx *c, glae_cuda_slot *s, const char *fn) {
    if (!s) return glae_fail(GLAE_ERR_VALUE, "%s: slot is NULL", fn);
    if (s->device != c->device)
        return glae_fail(GLAE_ERR_VALUE, "%s: the slot belongs to device %d, the context to %d", fn,
                         s->device, c->device);
    return GLAE_OK;
}

extern "C" int glae_cuda_slot_h2d(glae_ctx *ctx, glae_cuda_slot *slot, void *dst, const void *src,
                                  size_t bytes) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_slot_h2d");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(slot_check(c, slot, "cuda_slot_h2d"));
    /* the device buffer may still be read by queued compute: wait for its release */
    GLAE_CUDA_CHECK(cudaStreamWaitEvent(c->copy_stream, slot->compute_done, 0));
    if (bytes)
        GLAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->copy_stream));
    GLAE_CUDA_CHECK(cudaEventRecord(slot->copy_done, c->copy_stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_slot_wait_copy(glae_ctx *ctx, glae_cuda_slot *slot) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_slot_wait_copy");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(slot_check(c, slot, "cuda_slot_wait_copy"));
    GLAE_CUDA_CHECK(cudaStreamWaitEvent(c->stream, slot->copy_done, 0));
    return GLAE_OK;
}

extern "C" int glae_cuda_slot_compute_done(glae_ctx *ctx, glae_cuda_slot *slot) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_slot_compute_done");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_TRY(slot_check(c, slot, "cuda_slot_compute_done"));
    GLAE_CUDA_CHECK(cudaEventRecord(slot->compute_done, c->stream));
    return GLAE_OK;
}

extern "C" int glae_cuda_slot_host_query(glae_cuda_slot *slot, int *ready) {
    if (!slot || !ready) return glae_fail(GLAE_ERR_VALUE, "cuda_slot_host_query: NULL argument");
    *ready = 0;
    cudaError_t e = cudaEventQuery(slot->copy_done);
    if (e == cudaErrorNotReady) { /* still copying: not an error, but recorded as the last */
        (void)cudaGetLastError();  /* error, which the next launch check would report */
        return GLAE_OK;
    }
    GLAE_CUDA_CHECK(e);
    *ready = 1;
    return GLAE_OK;
}

extern "C" int glae_cuda_slot_host_sync(glae_cuda_slot *slot) {
    if (!slot) return glae_fail(GLAE_ERR_VALUE, "cuda_slot_host_sync: slot is NULL");
    GLAE_CUDA_CHECK(cudaEventSynchronize(slot->copy_done));
    return GLAE_OK;
}

extern "C" int glae_cuda_slot_host_sync_compute(glae_cuda_slot *slot) {
    if (!slot) return glae_fail(GLAE_ERR_VALUE, "cuda_slot_host_sync_compute: slot is NULL");
    GLAE_CUDA_CHECK(cudaEventSynchronize(slot->compute_done));
    return GLAE_OK;
}

/* ---- CUDA graphs ----------------------------------------------------------------------- */

#define CUBLAS_WS_BYTES ((size_t)32 << 20)

extern "C" int glae_cuda_graph_ready(glae_ctx *ctx) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_graph_ready");
    if (!c) return GLAE_ERR_VALUE;
    if (c->cublas_ws) return GLAE_OK;
    GLAE_CUDA_CHECK(cudaMalloc(&c->cublas_ws, CUBLAS_WS_BYTES));
    GLAE_CUBLAS_CHECK(cublasSetWorkspace(c->cublas, c->cublas_ws, CUBLAS_WS_BYTES));
    return GLAE_OK;
}

extern "C" unsigned long long glae_cuda_ws_generation(glae_ctx *ctx) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_ws_generation");
    return c ? c->ws_gen : 0;
}

extern "C" int glae_cuda_capture_begin(glae_ctx *ctx) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_capture_begin");
    if (!c) return GLAE_ERR_VALUE;
    GLAE_CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed));
    return GLAE_OK;
}

extern "C" int glae_cuda_capture_end(glae_ctx *ctx, int keep, void **exec) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_capture_end");
    if (!c) return GLAE_ERR_VALUE;
    if (exec) *exec = NULL;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess || !keep) {
        if (g) cudaGraphDestroy(g);
        cudaGetLastError(); /* an invalidated capture is reported here, not later */
        if (e != cudaSuccess)
            return glae_fail(GLAE_ERR_CUDA, "cuda_capture_end: the capture failed: %s",
                             cudaGetErrorString(e));
        return GLAE_OK;
    }
    cudaGraphExec_t x = NULL;
    e = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return glae_fail(GLAE_ERR_CUDA, "cuda_capture_end: cannot instantiate the graph: %s",
                         cudaGetErrorString(e));
    }
    *exec = (void *)x;
    return GLAE_OK;
}

extern "C" int glae_cuda_graph_launch(glae_ctx *ctx, void *exec) {
    glae_cuda_ctx *c = glae_cuda_of(ctx, "cuda_graph_launch");
    if (!c) return GLAE_ERR_VALUE;
    if (!exec) return glae_fail(GLAE_ERR_VALUE, "cuda_graph_launch: no graph");
    GLAE_CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)exec, c->stream));
    return GLAE_OK;
}

extern "C" void glae_cuda_graph_destroy(void *exec) {
    if (exec) cudaGraphExecDestroy((cudaGraphExec_t)exec);
}
