/* Data-parallel communication: a communicator over the ranks of a run, on the engines
 * clusters already run. MPI (OpenMPI, MPICH: MPI_Allreduce) for host buffers and to start
 * the run; NCCL (ncclAllReduce on the context's stream) for device buffers. Either may be
 * missing from a build (GLAE_WITH_MPI, GLAE_WITH_NCCL): the calls then fail with an error
 * naming what to install. docs/distributed.md says how a run uses them.
 *
 * Every blocking MPI operation is a non-blocking one polled against a deadline
 * (timeout_s): a rank that died or hangs makes the others fail with a clear error instead
 * of waiting forever. After such an error the communicator is broken (c->broken): the
 * caller gives up the run (glae_comm_abort ends every rank). */
#ifndef GLAE_COMM_H
#define GLAE_COMM_H

#include <stddef.h>

#include "core/ctx.h"

#define GLAE_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

typedef struct {
    int rank, size, local_rank;
    int has_mpi;   /* MPI is up and this comm holds a duplicate of MPI_COMM_WORLD */
    int has_nccl;  /* a NCCL communicator on a CUDA device (device buffers go through it) */
    int broken;    /* a collective failed or timed out: no further call is attempted */
    int own_init;  /* MPI_Init was ours: glae_comm_close finalises */
    double timeout_s;
    void *mpi;     /* MPI_Comm * */
    void *nccl;    /* ncclComm_t */
    void *dbuf;    /* NCCL: device scratch for host arrays */
    size_t dbuf_bytes;
    float *host;   /* MPI on device buffers: host staging */
    size_t host_floats;
} glae_comm;

/* What this build can do (0 / 1) and a line on the MPI library ("" without MPI). */
int glae_comm_built_mpi(void);
int glae_comm_built_nccl(void);
const char *glae_comm_mpi_version(void);

/* Start MPI (unless already started, e.g. by mpi4py) and open a communicator over every
 * rank of the launch (mpirun, mpiexec, srun). timeout_s > 0: the longest a collective waits. */
int glae_comm_open_mpi(glae_comm *c, double timeout_s);
/* A fresh NCCL id (rank 0 makes it; the launcher's channel hands it to the others). */
int glae_comm_nccl_id(unsigned char id[GLAE_NCCL_ID_BYTES]);
/* Add a NCCL communicator on the CUDA device of ctx: rank / size as given (torchrun's
 * RANK / WORLD_SIZE) or, on a comm opened with MPI, id == NULL: MPI's ranks, rank 0's id
 * broadcast over MPI. */
int glae_comm_open_nccl(glae_comm *c, glae_ctx *ctx, const unsigned char *id, int rank, int size);

/* buf[0:n] = the sum (mean != 0: the mean) over ranks, in place. ctx NULL or a CPU ctx:
 * host memory (MPI); a CUDA ctx: device memory (NCCL on its stream, no host wait; without
 * NCCL staged through the host over MPI). Every rank gets the same bits. */
int glae_comm_allreduce(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int mean);
/* Host doubles, sum, in place (losses, predictions). */
int glae_comm_allreduce_f64(glae_comm *c, double *buf, size_t n);
/* buf[0:n] from rank `root` to every rank; device memory as glae_comm_allreduce. */
int glae_comm_bcast(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root);
int glae_comm_barrier(glae_comm *c);
/* End every rank of the run (MPI_Abort); for a command line giving up after an error. */
void glae_comm_abort(glae_comm *c, int code);
/* Release; finalises MPI when glae started it and the comm is not broken. */
void glae_comm_close(glae_comm *c);

/* The NCCL half (core/comm_nccl.cu, or failing stubs without NCCL). */
int glae_comm_nccl_open_(glae_comm *c, glae_ctx *ctx, const unsigned char *id, int rank, int size);
int glae_comm_nccl_allreduce_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int mean);
int glae_comm_nccl_bcast_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root);
int glae_comm_nccl_host_f64_(glae_comm *c, double *buf, size_t n);
void glae_comm_nccl_close_(glae_comm *c);

#endif
