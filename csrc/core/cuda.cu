#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdio.h>
#include <string.h>

#include "core/cuda.h"

static void version_str(int v, char *buf, size_t len) {
    snprintf(buf, len, "%d.%d", v / 1000, (v % 1000) / 10);
}

extern "C" int glae_cuda_probe(int *count, int *driver_version, int *runtime_version, char *msg,
                               int msg_len) {
    char scratch[8];
    if (!msg || msg_len <= 0) {
        msg = scratch;
        msg_len = (int)sizeof scratch;
    }
    msg[0] = '\0';
    int n = 0, drv = 0, rt = 0;
    /* these two only read versions; without a driver cudaDriverGetVersion gives 0 */
    if (cudaDriverGetVersion(&drv) != cudaSuccess) drv = 0;
    if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    cudaGetLastError(); /* a failed query is reported here, not as the caller's next error */
    if (driver_version) *driver_version = drv;
    if (runtime_version) *runtime_version = rt;
    if (count) *count = 0;
    char dv[16], rv[16];
    version_str(drv, dv, sizeof dv);
    version_str(rt, rv, sizeof rv);
    if (e == cudaSuccess && n > 0) {
        if (count) *count = n;
        snprintf(msg, (size_t)msg_len, "%d CUDA device(s), driver CUDA %s, runtime CUDA %s", n, dv,
                 rv);
        return GLAE_CUDA_READY;
    }
    if (e == cudaSuccess || e == cudaErrorNoDevice) {
        snprintf(msg, (size_t)msg_len, "no CUDA device (driver CUDA %s)", dv);
        return GLAE_CUDA_NO_DEVICE;
    }
    /* the runtime reports a missing libcuda as an insufficient driver: version 0 tells */
    if ((e == cudaErrorInsufficientDriver && drv == 0) || e == cudaErrorStubLibrary) {
        snprintf(msg, (size_t)msg_len, "no NVIDIA driver (%s: %s)", cudaGetErrorName(e),
                 cudaGetErrorString(e));
        return GLAE_CUDA_NO_DRIVER;
    }
    if (e == cudaErrorInsufficientDriver)
        snprintf(msg, (size_t)msg_len,
                 "the NVIDIA driver supports CUDA %s but this glae was built with CUDA %s: "
                 "update the driver (or build glae with an older toolkit) (%s)",
                 dv, rv, cudaGetErrorName(e));
    else
        snprintf(msg, (size_t)msg_len,
                 "the NVIDIA driver cannot be used: %s: %s (driver CUDA %s, runtime CUDA %s)",
                 cudaGetErrorName(e), cudaGetErrorString(e), dv, rv);
    return GLAE_CUDA_DRIVER_ERROR;
}

extern "C" int glae_cuda_device_count(int *count) {
    char msg[512];
    int state = glae_cuda_probe(count, NULL, NULL, msg, (int)sizeof msg);
    if (state == GLAE_CUDA_DRIVER_ERROR) return glae_fail(GLAE_ERR_CUDA, "%s", msg);
    return GLAE_OK;
}

extern "C" int glae_cuda_device_info(int device, char *name, int name_len, int *major, int *minor) {
    cudaDeviceProp prop;
    GLAE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    snprintf(name, (size_t)name_len, "%s", prop.name);
    *major = prop.major;
    *minor = prop.minor;
    return GLAE_OK;
}

extern "C" int glae_cudnn_version(void) { return (int)cudnnGetVersion(); }
