/* What the two model types share (_C.Model in bind_nn.c, _C.PretrainModel in
 * bind_pretrain.c): the constructor's string arguments, views of the flat buffers, the
 * parameter table, get / set in torchvision's layout, zero_grad and write_flat, each on a
 * glae_params and the context of the device it lives on. The caller checks that its
 * object is ready. */
#ifndef GLAE_PY_MODEL_H
#define GLAE_PY_MODEL_H

#include "python/py.h" /* Python.h first */

#include "core/params.h"

/* 'resnet18' | 'resnet50' -> 18 | 50 */
int glae_py_parse_backbone(const char *s, int *depth);
/* the name glae_py_parse_backbone reads for a backbone code */
const char *glae_py_backbone_name(int code);
/* 'cpu' | 'cuda' | 'cuda:N' -> GLAE_CPU / GLAE_CUDA and N (RuntimeError for a GPU when
 * glae was built without CUDA) */
int glae_py_parse_device(const char *s, int *device, int *cuda_device);
/* 'fp32' | 'tf32' | 'bf16' -> 0 | 1 | 2 */
int glae_py_parse_math(const char *s, int *math);

/* A 1-D float32 view of `n` floats at `data` (one of p's flat arrays) that keeps `owner`
 * alive; for device buffers a read-only host copy, so a write cannot silently miss them. */
PyObject *glae_py_flat_view(PyObject *owner, const glae_params *p, glae_ctx *ctx, float *data,
                            size_t n);
/* [(name, shape, offset, numel, is_buffer, group, no_decay)], torchvision shapes */
PyObject *glae_py_param_table(const glae_params *p);
/* get(name) -> a copy in torchvision's layout (conv weights OIHW); args as "s:get" */
PyObject *glae_py_param_get(glae_params *p, glae_ctx *ctx, PyObject *args);
/* set(name, value) with value in torchvision's layout; args as "sO:set" */
PyObject *glae_py_param_set(glae_params *p, glae_ctx *ctx, PyObject *args);
/* grads[:] = 0 */
PyObject *glae_py_zero_grad(glae_params *p, glae_ctx *ctx);
/* write_flat(role, value, offset=0) */
PyObject *glae_py_write_flat(glae_params *p, glae_ctx *ctx, PyObject *args, PyObject *kw);

/* A _C.Model's flat buffers and context (TypeError for another object, RuntimeError when
 * busy); the model stays busy until glae_py_model_release (bind_nn.c). */
int glae_py_model_acquire(PyObject *o, glae_params **p, glae_ctx **ctx);
void glae_py_model_release(PyObject *o);

#endif
