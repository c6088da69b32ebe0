/* The dist family: _C.Comm, the communicator of a data-parallel run (core/comm.h), and
 * what the build has of MPI and NCCL. glae/distributed.py drives it. */
#include "python/model_py.h" /* Python.h first */
#include <string.h>

#include "core/comm.h"

typedef struct {
    PyObject_HEAD
    glae_comm c;
    int open;
} CommObject;

static int comm_ready(CommObject *self) {
    if (!self->open) {
        PyErr_SetString(PyExc_RuntimeError, "Comm is closed");
        return 0;
    }
    return 1;
}

static void Comm_dealloc(CommObject *self) {
    if (self->open) glae_comm_close(&self->c);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Comm(timeout=600.0, mpi=True): MPI over every rank of the launch (mpirun, mpiexec, srun);
 * mpi=False: no MPI (a torchrun-style launch), one rank until open_nccl */
static int Comm_init(CommObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"timeout", "mpi", NULL};
    double timeout = 600.0;
    int mpi = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|dp:Comm", kwlist, &timeout, &mpi)) return -1;
    if (!(timeout >= 0)) {
        PyErr_Format(PyExc_ValueError, "timeout must be >= 0 seconds (0: none), got %g", timeout);
        return -1;
    }
    if (self->open) {
        PyErr_SetString(PyExc_RuntimeError, "Comm is already open");
        return -1;
    }
    int st = GLAE_OK;
    if (mpi) {
        GLAE_NOGIL(st, glae_comm_open_mpi(&self->c, timeout));
    } else {
        memset(&self->c, 0, sizeof self->c);
        self->c.size = 1;
        self->c.timeout_s = timeout;
    }
    if (st) {
        glae_raise(st);
        return -1;
    }
    self->open = 1;
    return 0;
}

/* an array updated in place: C-contiguous, writeable, float32 or float64 */
static PyArrayObject *inout_array(PyObject *o, int *f64) {
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "expected a numpy array, got %s", Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    const int t = PyArray_TYPE(a);
    if (t != NPY_FLOAT32 && t != NPY_FLOAT64) {
        PyErr_SetString(PyExc_TypeError, "the array must be float32 or float64");
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_SetString(PyExc_ValueError, "the array must be C-contiguous");
        return NULL;
    }
    if (glae_check_writeable(a, "array")) return NULL;
    *f64 = t == NPY_FLOAT64;
    return a;
}

static PyObject *Comm_allreduce(CommObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"array", "mean", NULL};
    PyObject *o;
    int mean = 0, f64, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p:allreduce", kwlist, &o, &mean)) return NULL;
    if (!comm_ready(self)) return NULL;
    PyArrayObject *a = inout_array(o, &f64);
    if (!a) return NULL;
    const size_t n = (size_t)PyArray_SIZE(a);
    if (f64 && mean) {
        PyErr_SetString(PyExc_ValueError, "allreduce: mean=True takes float32 (sum float64 arrays)");
        return NULL;
    }
    void *d = PyArray_DATA(a);
    if (f64)
        GLAE_NOGIL(st, glae_comm_allreduce_f64(&self->c, d, n));
    else
        GLAE_NOGIL(st, glae_comm_allreduce(&self->c, NULL, d, n, mean));
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Comm_bcast(CommObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"array", "root", NULL};
    PyObject *o;
    int root = 0, f64, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|i:bcast", kwlist, &o, &root)) return NULL;
    if (!comm_ready(self)) return NULL;
    PyArrayObject *a = inout_array(o, &f64);
    if (!a) return NULL;
    /* host bytes: a float64 array is twice as many floats */
    const size_t n = (size_t)PyArray_SIZE(a) * (f64 ? 2 : 1);
    GLAE_NOGIL(st, glae_comm_bcast(&self->c, NULL, PyArray_DATA(a), n, root));
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static int parse_role(const char *role, glae_params *p, float **buf, size_t *n) {
    if (!strcmp(role, "grads")) *buf = p->grads, *n = p->n;
    else if (!strcmp(role, "params")) *buf = p->params, *n = p->n;
    else if (!strcmp(role, "momentum")) *buf = p->momentum, *n = p->n;
    else if (!strcmp(role, "buffers")) *buf = p->buffers, *n = p->n_buffers;
    else {
        PyErr_Format(PyExc_ValueError,
                     "role must be 'grads', 'params', 'momentum' or 'buffers', got '%s'", role);
        return -1;
    }
    return 0;
}

/* model_allreduce(model, role='grads', begin=0, end=-1, mean=True) and
 * model_bcast(model, role='buffers', root=0): on the model's own buffers and device */
static PyObject *model_op(CommObject *self, PyObject *args, PyObject *kw, int bcast) {
    static char *kw_ar[] = {"model", "role", "begin", "end", "mean", NULL};
    static char *kw_bc[] = {"model", "role", "root", "begin", "end", NULL};
    PyObject *mo;
    const char *role = bcast ? "buffers" : "grads";
    long long begin = 0, end = -1;
    int mean = 1, root = 0, st;
    if (bcast ? !PyArg_ParseTupleAndKeywords(args, kw, "O|siLL:model_bcast", kw_bc, &mo, &role,
                                             &root, &begin, &end)
              : !PyArg_ParseTupleAndKeywords(args, kw, "O|sLLp:model_allreduce", kw_ar, &mo,
                                             &role, &begin, &end, &mean))
        return NULL;
    if (!comm_ready(self)) return NULL;
    glae_params *p;
    glae_ctx *ctx;
    if (glae_py_model_acquire(mo, &p, &ctx)) return NULL;
    float *buf;
    size_t n;
    if (parse_role(role, p, &buf, &n)) goto fail;
    if (end < 0) end = (long long)n;
    if (begin < 0 || begin > end || (size_t)end > n) {
        PyErr_Format(PyExc_ValueError, "need 0 <= begin <= end <= %zu, got %lld, %lld", n, begin, end);
        goto fail;
    }
    if (bcast)
        GLAE_NOGIL_CTX(st, ctx, glae_comm_bcast(&self->c, ctx, buf + begin, (size_t)(end - begin), root));
    else
        GLAE_NOGIL_CTX(st, ctx, glae_comm_allreduce(&self->c, ctx, buf + begin, (size_t)(end - begin), mean));
    glae_py_model_release(mo);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
fail:
    glae_py_model_release(mo);
    return NULL;
}

static PyObject *Comm_model_allreduce(CommObject *self, PyObject *args, PyObject *kw) {
    return model_op(self, args, kw, 0);
}

static PyObject *Comm_model_bcast(CommObject *self, PyObject *args, PyObject *kw) {
    return model_op(self, args, kw, 1);
}

/* open_nccl(model, id=None, rank=-1, size=-1): NCCL on the CUDA model's device; without an
 * id, rank 0 makes one and MPI hands it out */
static PyObject *Comm_open_nccl(CommObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model", "id", "rank", "size", NULL};
    PyObject *mo, *ido = Py_None;
    int rank = -1, size = -1, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Oii:open_nccl", kwlist, &mo, &ido, &rank, &size))
        return NULL;
    if (!comm_ready(self)) return NULL;
    const unsigned char *id = NULL;
    if (ido != Py_None) {
        if (!PyBytes_Check(ido) || PyBytes_GET_SIZE(ido) != GLAE_NCCL_ID_BYTES) {
            PyErr_Format(PyExc_ValueError, "id must be %d bytes (nccl_unique_id())", GLAE_NCCL_ID_BYTES);
            return NULL;
        }
        id = (const unsigned char *)PyBytes_AS_STRING(ido);
    }
    glae_params *p;
    glae_ctx *ctx;
    if (glae_py_model_acquire(mo, &p, &ctx)) return NULL;
    GLAE_NOGIL(st, glae_comm_open_nccl(&self->c, ctx, id, rank, size));
    glae_py_model_release(mo);
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Comm_barrier(CommObject *self, PyObject *unused) {
    (void)unused;
    int st;
    if (!comm_ready(self)) return NULL;
    GLAE_NOGIL(st, glae_comm_barrier(&self->c));
    if (st) return glae_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Comm_abort(CommObject *self, PyObject *args) {
    int code = 1;
    if (!PyArg_ParseTuple(args, "|i:abort", &code)) return NULL;
    if (self->open) glae_comm_abort(&self->c, code);
    Py_RETURN_NONE;
}

static PyObject *Comm_close(CommObject *self, PyObject *unused) {
    (void)unused;
    if (self->open) {
        Py_BEGIN_ALLOW_THREADS
        glae_comm_close(&self->c);
        Py_END_ALLOW_THREADS
        self->open = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Comm_get(CommObject *self, void *which) {
    if (!comm_ready(self)) return NULL;
    switch ((int)(intptr_t)which) {
    case 0: return PyLong_FromLong(self->c.rank);
    case 1: return PyLong_FromLong(self->c.size);
    case 2: return PyLong_FromLong(self->c.local_rank);
    case 3: return PyBool_FromLong(self->c.has_nccl);
    default: return PyBool_FromLong(self->c.broken);
    }
}

static PyMethodDef Comm_methods[] = {
    {"allreduce", (PyCFunction)(void (*)(void))Comm_allreduce, METH_VARARGS | METH_KEYWORDS,
     "allreduce(array float32|float64, mean=False): the sum (or mean) over ranks, in place"},
    {"bcast", (PyCFunction)(void (*)(void))Comm_bcast, METH_VARARGS | METH_KEYWORDS,
     "bcast(array float32|float64, root=0): root's values on every rank, in place"},
    {"model_allreduce", (PyCFunction)(void (*)(void))Comm_model_allreduce,
     METH_VARARGS | METH_KEYWORDS,
     "model_allreduce(model, role='grads', begin=0, end=-1, mean=True): one all-reduce of the "
     "model's flat buffer (range in floats) on its device (NCCL on its stream when open_nccl "
     "was called, else MPI)"},
    {"model_bcast", (PyCFunction)(void (*)(void))Comm_model_bcast, METH_VARARGS | METH_KEYWORDS,
     "model_bcast(model, role='buffers', root=0, begin=0, end=-1): root's flat buffer on every rank"},
    {"open_nccl", (PyCFunction)(void (*)(void))Comm_open_nccl, METH_VARARGS | METH_KEYWORDS,
     "open_nccl(model, id=None, rank=-1, size=-1): a NCCL communicator on the CUDA model's "
     "device (id=None: rank 0's id over MPI)"},
    {"barrier", (PyCFunction)Comm_barrier, METH_NOARGS, "barrier(): wait for every rank"},
    {"abort", (PyCFunction)Comm_abort, METH_VARARGS,
     "abort(code=1): end every rank of the run (MPI_Abort)"},
    {"close", (PyCFunction)Comm_close, METH_NOARGS,
     "close(): release (finalises MPI when glae started it and nothing failed)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Comm_getset[] = {
    {"rank", (getter)Comm_get, NULL, "this process's rank", (void *)0},
    {"size", (getter)Comm_get, NULL, "the number of ranks", (void *)1},
    {"local_rank", (getter)Comm_get, NULL, "the rank among those on this node", (void *)2},
    {"has_nccl", (getter)Comm_get, NULL, "device buffers go through NCCL", (void *)3},
    {"broken", (getter)Comm_get, NULL, "a collective failed or timed out", (void *)4},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CommType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "glae._C.Comm",
    .tp_basicsize = sizeof(CommObject),
    .tp_dealloc = (destructor)Comm_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Comm(timeout=600.0): the MPI communicator of a data-parallel run "
              "(docs/distributed.md); collectives wait at most `timeout` seconds",
    .tp_methods = Comm_methods,
    .tp_getset = Comm_getset,
    .tp_init = (initproc)Comm_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *py_dist_built(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return Py_BuildValue("{s:O,s:O,s:s}", "mpi", glae_comm_built_mpi() ? Py_True : Py_False,
                         "nccl", glae_comm_built_nccl() ? Py_True : Py_False, "mpi_library",
                         glae_comm_mpi_version());
}

static PyObject *py_nccl_unique_id(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    unsigned char id[GLAE_NCCL_ID_BYTES];
    int st;
    GLAE_NOGIL(st, glae_comm_nccl_id(id));
    if (st) return glae_raise(st);
    return PyBytes_FromStringAndSize((const char *)id, GLAE_NCCL_ID_BYTES);
}

PyMethodDef glae_dist_methods[] = {
    {"dist_built", (PyCFunction)py_dist_built, METH_NOARGS,
     "dist_built() -> {'mpi': bool, 'nccl': bool, 'mpi_library': str}: what this build can use"},
    {"nccl_unique_id", (PyCFunction)py_nccl_unique_id, METH_NOARGS,
     "nccl_unique_id() -> 128 bytes: rank 0's id for Comm.open_nccl (torchrun-style launch)"},
    {NULL, NULL, 0, NULL},
};

int glae_dist_add_types(PyObject *m) {
    if (PyType_Ready(&CommType) < 0) return -1;
    Py_INCREF(&CommType);
    if (PyModule_AddObject(m, "Comm", (PyObject *)&CommType) < 0) {
        Py_DECREF(&CommType);
        return -1;
    }
    return 0;
}
