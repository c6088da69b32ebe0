/* The NCCL half of the communicator (core/comm.h): collectives on device buffers queued on
 * the context's compute stream, so a training step (backward, all-reduce, SGD) runs
 * without the host waiting. Built when setup.py finds nccl.h (GLAE_WITH_NCCL); comm.c holds
 * failing stubs otherwise. libnccl is opened on first use, not linked: a linked NCCL would
 * load with `import glae` and, sharing the soname libnccl.so.2, shadow the newer one a
 * later `import torch` needs (torch then fails on a missing symbol). */
#ifdef GLAE_WITH_NCCL
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <string.h>

#include "core/cuda_ctx.h" /* its own extern "C" (and ctx.h inside it) */
#include "core/status.h"
extern "C" {
#include "core/comm.h" /* a plain C header */
}

static_assert(sizeof(ncclUniqueId) == GLAE_NCCL_ID_BYTES, "ncclUniqueId size");

#ifndef GLAE_NCCL_DIR
#define GLAE_NCCL_DIR "" /* where setup.py found libnccl; the loader's path comes first */
#endif

/* the NCCL entry points this file calls, resolved from the opened library */
static struct {
    decltype(&ncclGetUniqueId) GetUniqueId;
    decltype(&ncclCommInitRank) CommInitRank;
    decltype(&ncclAllReduce) AllReduce;
    decltype(&ncclBroadcast) Broadcast;
    decltype(&ncclCommDestroy) CommDestroy;
    decltype(&ncclCommAbort) CommAbort;
    decltype(&ncclGetErrorString) GetErrorString;
    decltype(&ncclGetLastError) GetLastError;
} nccl;

static int nccl_load(void) {
    if (nccl.AllReduce) return GLAE_OK;
    /* an NCCL already in the process (torch's) or on the loader's path, then the build's */
    const char *names[] = {"libnccl.so.2", GLAE_NCCL_DIR "/libnccl.so.2", GLAE_NCCL_DIR "/libnccl.so"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof *names && !h; i++)
        if (i == 0 || GLAE_NCCL_DIR[0]) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) return glae_fail(GLAE_ERR_CUDA, "nccl: cannot open libnccl.so.2 (%s)", dlerror());
#define NCCL_SYM(f)                                                                        \
    if (!(*(void **)&nccl.f = dlsym(h, "nccl" #f)))                                        \
        return glae_fail(GLAE_ERR_CUDA, "nccl: libnccl.so.2 has no nccl" #f);
    NCCL_SYM(GetUniqueId) NCCL_SYM(CommInitRank) NCCL_SYM(Broadcast) NCCL_SYM(CommDestroy)
    NCCL_SYM(CommAbort) NCCL_SYM(GetErrorString) NCCL_SYM(GetLastError) NCCL_SYM(AllReduce)
#undef NCCL_SYM
    return GLAE_OK;
}

#define NCCL_TRY(c, call)                                                                 \
    do {                                                                                  \
        ncclResult_t r_ = (call);                                                         \
        if (r_ != ncclSuccess) {                                                          \
            (c)->broken = 1;                                                              \
            return glae_fail(GLAE_ERR_CUDA, "%s failed on rank %d of %d: %s (%s)", #call, \
                             (c)->rank, (c)->size, nccl.GetErrorString(r_),                \
                             nccl.GetLastError(NULL));                                     \
        }                                                                                 \
    } while (0)

static cudaStream_t stream_of(glae_ctx *ctx) {
    return ((struct glae_cuda_ctx *)ctx->cuda)->stream;
}

extern "C" int glae_comm_nccl_id(unsigned char id[GLAE_NCCL_ID_BYTES]) {
    if (nccl_load()) return GLAE_ERR_CUDA;
    ncclUniqueId u;
    ncclResult_t r = nccl.GetUniqueId(&u);
    if (r != ncclSuccess)
        return glae_fail(GLAE_ERR_CUDA, "ncclGetUniqueId: %s", nccl.GetErrorString(r));
    memcpy(id, &u, sizeof u);
    return GLAE_OK;
}

extern "C" int glae_comm_nccl_open_(glae_comm *c, glae_ctx *ctx, const unsigned char *id,
                                    int rank, int size) {
    if (nccl_load()) return GLAE_ERR_CUDA;
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    cudaError_t e = cudaSetDevice(((struct glae_cuda_ctx *)ctx->cuda)->device);
    if (e != cudaSuccess) return glae_fail(GLAE_ERR_CUDA, "nccl: cudaSetDevice: %s", cudaGetErrorString(e));
    ncclComm_t comm;
    ncclResult_t r = nccl.CommInitRank(&comm, size, u, rank);
    if (r != ncclSuccess)
        return glae_fail(GLAE_ERR_CUDA, "ncclCommInitRank (rank %d of %d): %s", rank, size,
                         nccl.GetErrorString(r));
    c->nccl = comm;
    return GLAE_OK;
}

extern "C" int glae_comm_nccl_allreduce_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n,
                                         int mean) {
    /* ncclAvg: the sum scaled once by 1/size inside NCCL, the same bits on every rank */
    NCCL_TRY(c, nccl.AllReduce(buf, buf, n, ncclFloat32, mean ? ncclAvg : ncclSum,
                              (ncclComm_t)c->nccl, stream_of(ctx)));
    return GLAE_OK;
}

extern "C" int glae_comm_nccl_bcast_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root) {
    NCCL_TRY(c, nccl.Broadcast(buf, buf, n, ncclFloat32, root, (ncclComm_t)c->nccl, stream_of(ctx)));
    return GLAE_OK;
}

/* host doubles through a device scratch buffer on the default stream (a NCCL-only run has
 * no MPI for host arrays); the host waits: used for losses and predictions, not per step */
extern "C" int glae_comm_nccl_host_f64_(glae_comm *c, double *buf, size_t n) {
    const size_t bytes = n * sizeof(double);
    if (c->dbuf_bytes < bytes) {
        cudaFree(c->dbuf);
        c->dbuf = NULL;
        c->dbuf_bytes = 0;
        cudaError_t e = cudaMalloc(&c->dbuf, bytes);
        if (e != cudaSuccess) return glae_fail(GLAE_ERR_CUDA, "nccl: cudaMalloc: %s", cudaGetErrorString(e));
        c->dbuf_bytes = bytes;
    }
    cudaError_t e = cudaMemcpy(c->dbuf, buf, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return glae_fail(GLAE_ERR_CUDA, "nccl: copy: %s", cudaGetErrorString(e));
    NCCL_TRY(c, nccl.AllReduce(c->dbuf, c->dbuf, n, ncclFloat64, ncclSum, (ncclComm_t)c->nccl, 0));
    e = cudaMemcpy(buf, c->dbuf, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return glae_fail(GLAE_ERR_CUDA, "nccl: copy: %s", cudaGetErrorString(e));
    return GLAE_OK;
}

extern "C" void glae_comm_nccl_close_(glae_comm *c) {
    if (c->nccl) {
        if (c->broken)
            nccl.CommAbort((ncclComm_t)c->nccl);
        else
            nccl.CommDestroy((ncclComm_t)c->nccl);
    }
    cudaFree(c->dbuf);
    c->nccl = NULL;
    c->dbuf = NULL;
    c->dbuf_bytes = 0;
}
#endif
