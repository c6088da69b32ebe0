/* The NCCL half of the communicator (core/comm.h): collectives on device buffers queued on
 * the context's compute stream, so a training step (backward, all-reduce, SGD) runs
 * without the host waiting. Built when setup.py finds nccl.h and libnccl (GLAE_WITH_NCCL);
 * comm.c holds failing stubs otherwise. */
#ifdef GLAE_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#include <string.h>

#include "core/cuda_ctx.h" /* its own extern "C" (and ctx.h inside it) */
#include "core/status.h"
extern "C" {
#include "core/comm.h" /* a plain C header */
}

static_assert(sizeof(ncclUniqueId) == GLAE_NCCL_ID_BYTES, "ncclUniqueId size");

#define NCCL_TRY(c, call)                                                                 \
    do {                                                                                  \
        ncclResult_t r_ = (call);                                                         \
        if (r_ != ncclSuccess) {                                                          \
            (c)->broken = 1;                                                              \
            return glae_fail(GLAE_ERR_CUDA, "%s failed on rank %d of %d: %s (%s)", #call, \
                             (c)->rank, (c)->size, ncclGetErrorString(r_),                \
                             ncclGetLastError(NULL));                                     \
        }                                                                                 \
    } while (0)

static cudaStream_t stream_of(glae_ctx *ctx) {
    return ((struct glae_cuda_ctx *)ctx->cuda)->stream;
}

extern "C" int glae_comm_nccl_id(unsigned char id[GLAE_NCCL_ID_BYTES]) {
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return glae_fail(GLAE_ERR_CUDA, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
    return GLAE_OK;
}

extern "C" int glae_comm_nccl_open_(glae_comm *c, glae_ctx *ctx, const unsigned char *id,
                                    int rank, int size) {
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    cudaError_t e = cudaSetDevice(((struct glae_cuda_ctx *)ctx->cuda)->device);
    if (e != cudaSuccess) return glae_fail(GLAE_ERR_CUDA, "nccl: cudaSetDevice: %s", cudaGetErrorString(e));
    ncclComm_t comm;
    ncclResult_t r = ncclCommInitRank(&comm, size, u, rank);
    if (r != ncclSuccess)
        return glae_fail(GLAE_ERR_CUDA, "ncclCommInitRank (rank %d of %d): %s", rank, size,
                         ncclGetErrorString(r));
    c->nccl = comm;
    return GLAE_OK;
}

extern "C" int glae_comm_nccl_allreduce_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n,
                                         int mean) {
    /* ncclAvg: the sum scaled once by 1/size inside NCCL, the same bits on every rank */
    NCCL_TRY(c, ncclAllReduce(buf, buf, n, ncclFloat32, mean ? ncclAvg : ncclSum,
                              (ncclComm_t)c->nccl, stream_of(ctx)));
    return GLAE_OK;
}

extern "C" int glae_comm_nccl_bcast_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root) {
    NCCL_TRY(c, ncclBroadcast(buf, buf, n, ncclFloat32, root, (ncclComm_t)c->nccl, stream_of(ctx)));
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
    NCCL_TRY(c, ncclAllReduce(c->dbuf, c->dbuf, n, ncclFloat64, ncclSum, (ncclComm_t)c->nccl, 0));
    e = cudaMemcpy(buf, c->dbuf, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return glae_fail(GLAE_ERR_CUDA, "nccl: copy: %s", cudaGetErrorString(e));
    return GLAE_OK;
}

extern "C" void glae_comm_nccl_close_(glae_comm *c) {
    if (c->nccl) {
        if (c->broken)
            ncclCommAbort((ncclComm_t)c->nccl);
        else
            ncclCommDestroy((ncclComm_t)c->nccl);
    }
    cudaFree(c->dbuf);
    c->nccl = NULL;
    c->dbuf = NULL;
    c->dbuf_bytes = 0;
}
#endif
