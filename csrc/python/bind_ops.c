/* Bindings for the element-wise, pooling, linear, shuffle and softmax layers.
 * Pattern for every binding: strict argument checks (glae_arg_*), fresh outputs
 * (glae_new_array: poisoned in tests), the kernel called without the GIL, status ->
 * exception. Borrowed references from glae_arg_* need no DECREF. */
#include "py.h"  /* Python.h first */
#include "../ops/ops.h"

/* relu_forward(x float32[...]) -> y */
static PyObject *py_relu_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O:relu_forward", &xo)) return NULL;
    PyArrayObject *x = glae_arg_f32(xo, "x", -1);
    if (!x) return NULL;
    PyArrayObject *y = glae_new_array(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32);
    if (!y) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_relu_forward(&ctx, PyArray_DATA(y), PyArray_DATA(x), PyArray_SIZE(x)));
    if (st) {
        Py_DECREF(y);
        return glae_raise(st);
    }
    return (PyObject *)y;
}

/* relu_backward(dy, y) -> dx */
static PyObject *py_relu_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *yo;
    if (!PyArg_ParseTuple(args, "OO:relu_backward", &dyo, &yo)) return NULL;
    PyArrayObject *dy = glae_arg_f32(dyo, "dy", -1);
    PyArrayObject *y = dy ? glae_arg_f32(yo, "y", -1) : NULL;
    if (!y || glae_check_same_shape(dy, "dy", y, "y")) return NULL;
    PyArrayObject *dx = glae_new_array(PyArray_NDIM(y), PyArray_DIMS(y), NPY_FLOAT32);
    if (!dx) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_relu_backward(&ctx, PyArray_DATA(dx), PyArray_DATA(dy), PyArray_DATA(y),
                                      PyArray_SIZE(y)));
    if (st) {
        Py_DECREF(dx);
        return glae_raise(st);
    }
    return (PyObject *)dx;
}

/* add_forward(a, b) -> a + b */
static PyObject *py_add_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *bo;
    if (!PyArg_ParseTuple(args, "OO:add_forward", &ao, &bo)) return NULL;
    PyArrayObject *a = glae_arg_f32(ao, "a", -1);
    PyArrayObject *b = a ? glae_arg_f32(bo, "b", -1) : NULL;
    if (!b || glae_check_same_shape(a, "a", b, "b")) return NULL;
    PyArrayObject *y = glae_new_array(PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (!y) return NULL;
    int st;
    glae_ctx ctx = {0};
    GLAE_NOGIL(st, glae_add_forward(&ctx, PyArray_DATA(y), PyArray_DATA(a), PyArray_DATA(b),
                                    PyArray_SIZE(a)));
    if (st) {
        Py_DECREF(y);
        return glae_raise(st);
    }
    return (PyObject *)y;
}

PyMethodDef glae_ops_methods[] = {
    {"relu_forward", py_relu_forward, METH_VARARGS, "relu_forward(x) -> max(x, 0)"},
    {"relu_backward", py_relu_backward, METH_VARARGS, "relu_backward(dy, y) -> dx = dy * [y > 0]"},
    {"add_forward", py_add_forward, METH_VARARGS, "add_forward(a, b) -> a + b"},
    {NULL, NULL, 0, NULL},
};
