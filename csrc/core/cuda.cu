#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdio.h>
#include <string.h>

#include "cuda.h"

extern "C" int glae_cuda_device_count(int *count) {
    *count = 0;
    cudaError_t e = cudaGetDeviceCount(count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        cudaGetLastError(); /* clear the sticky error: no device is not a failure */
        *count = 0;
        return GLAE_OK;
    }
    GLAE_CUDA_CHECK(e);
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
