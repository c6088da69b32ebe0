/* Depthwise 2-D convolution (dwconv.c, dwconv.cu): PyTorch's Conv2d(C, C, k, groups=C), the
 * spatial filter of EfficientNetV2's MBConv blocks. NHWC activations; the weight is
 * stored OHWI like every conv weight, (C, KH, KW, 1), i.e. torchvision's (C, 1, KH, KW) with
 * the singleton moved last. The shape is a glae_conv2d_shape with c_out == c_in.
 *
 * Not im2col + GEMM: each output channel reads one input channel, so a GEMM would multiply
 * KH*KW-long rows and spend its time moving memory. The CPU loops run over output pixels
 * with the channels innermost (contiguous in NHWC), which the compiler vectorises. */
#ifndef GLAE_OPS_DWCONV_H
#define GLAE_OPS_DWCONV_H

#include "core/ctx.h"
#include "core/status.h"
#include "ops/ops.h"

/* out (N, OH, OW, C) = depthwise conv of in (N, H, W, C) with weight (C, KH, KW, 1), + bias
 * (C) or NULL */
int glae_dwconv2d_forward(glae_ctx *ctx, float *out, const float *in, const float *weight,
                          const float *bias, const glae_conv2d_shape *s);
/* din (written; NULL: not needed), dweight and dbias (accumulated, +=; NULL: not needed) */
int glae_dwconv2d_backward(glae_ctx *ctx, float *din, float *dweight, float *dbias,
                           const float *dout, const float *in, const float *weight,
                           const glae_conv2d_shape *s);

/* The ops of this header in the op table (ops/backend.h): glae_<op> here is the reference,
 * glae_<op>_cuda its twin with the same signature (ops_cuda.h). A new op of this family adds
 * its name here. */
#define GLAE_OPS_DWCONV(X) X(dwconv2d_forward) X(dwconv2d_backward)

#endif
