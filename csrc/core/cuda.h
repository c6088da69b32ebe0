/* The CUDA side of the context: handles and checked calls. Compiled by nvcc only when
 * the CUDA backend is built (GLAE_WITH_CUDA); C callers see plain C declarations. */
#ifndef GLAE_CUDA_H
#define GLAE_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/* What the CUDA runtime says about this machine (glae_cuda_probe). */
typedef enum {
    GLAE_CUDA_READY = 0,       /* a driver and at least one usable device */
    GLAE_CUDA_NO_DEVICE = 1,   /* a driver but no device (cudaErrorNoDevice) */
    GLAE_CUDA_NO_DRIVER = 2,   /* no NVIDIA driver installed (or only the toolkit's stub) */
    GLAE_CUDA_DRIVER_ERROR = 3 /* a driver that cannot be used: too old for this build's
                                  runtime, a driver/library mismatch, an init failure */
} glae_cuda_state;

/* Ask the runtime for devices without failing: returns a glae_cuda_state, sets *count (0
 * unless READY), the driver's and the runtime's CUDA versions (1000*major + 10*minor; the
 * driver's is 0 without a driver) and a one-line explanation in msg (may be NULL). Never
 * sets the thread's error message. */
int glae_cuda_probe(int *count, int *driver_version, int *runtime_version, char *msg, int msg_len);
/* Number of usable CUDA devices; 0 (and GLAE_OK) when there is no driver or no device.
 * A driver that is present but unusable (GLAE_CUDA_DRIVER_ERROR: too old for this
 * build, an init failure) is an error (GLAE_ERR_CUDA with the probe's message), never
 * "0 devices", so a GPU machine with a broken driver does not pass as a CPU machine. */
int glae_cuda_device_count(int *count);
/* Name and compute capability of a device, for reports. */
int glae_cuda_device_info(int device, char *name, int name_len, int *major, int *minor);
/* cuDNN version linked at run time (e.g. 90100), 0 when cuDNN cannot be loaded. */
int glae_cudnn_version(void);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include "core/status.h"
/* Every CUDA / cuBLAS / cuDNN call goes through these: the failing expression, file and
 * line become the error message and the function returns GLAE_ERR_CUDA. A failed call
 * (or a library's failed call inside it, e.g. an out-of-memory cudaMalloc) also leaves
 * its code as the runtime's "last error", which the next launch check (GLAE_LAUNCHED,
 * cudaGetLastError) would report as its own: reporting the error consumes it. A sticky
 * error (a fault on the device) stays: cudaGetLastError cannot reset those. */
#define GLAE_CUDA_CHECK(expr)                                                              \
    do {                                                                                   \
        cudaError_t e_ = (expr);                                                           \
        if (e_ != cudaSuccess) {                                                           \
            (void)cudaGetLastError();                                                      \
            return glae_fail(GLAE_ERR_CUDA, "%s failed at %s:%d: %s", #expr, __FILE__,      \
                             __LINE__, cudaGetErrorString(e_));                            \
        }                                                                                  \
    } while (0)
#define GLAE_CUDNN_CHECK(expr)                                                             \
    do {                                                                                   \
        cudnnStatus_t e_ = (expr);                                                         \
        if (e_ != CUDNN_STATUS_SUCCESS) {                                                  \
            (void)cudaGetLastError();                                                      \
            return glae_fail(GLAE_ERR_CUDA, "%s failed at %s:%d: %s", #expr, __FILE__,      \
                             __LINE__, cudnnGetErrorString(e_));                           \
        }                                                                                  \
    } while (0)
#define GLAE_CUBLAS_CHECK(expr)                                                            \
    do {                                                                                   \
        cublasStatus_t e_ = (expr);                                                        \
        if (e_ != CUBLAS_STATUS_SUCCESS) {                                                 \
            (void)cudaGetLastError();                                                      \
            return glae_fail(GLAE_ERR_CUDA, "%s failed at %s:%d: cuBLAS status %d", #expr,  \
                             __FILE__, __LINE__, (int)e_);                                 \
        }                                                                                  \
    } while (0)
#endif

#endif
