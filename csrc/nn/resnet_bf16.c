/* ResNet forward / backward in mixed precision (resnet.h, net->bf16): the same graph as
 * resnet.c with bf16 activations and gradients, float32 parameters and parameter
 * gradients, and batch norm fused with the ReLU and the residual add that follow it
 * (bn_act_*_bf16, ops.h). The image comes in as float32 and is rounded once; the head
 * gets a float32 copy of the feature map and hands back a float32 gradient. */
#include "nn/resnet.h"

#include "core/status.h"
#include "ops/backend.h"

static int64_t rows_of(const glae_conv_layer *l) { return (int64_t)l->s.n * l->s.oh * l->s.ow; }

static int conv_fwd(glae_ctx *ctx, glae_conv_layer *l, glae_params *p, glae_bf16 *out,
                    const glae_bf16 *in) {
    return ctx->ops->conv2d_forward_bf16(ctx, out, in, glae_params_ptr(p, l->w),
                                         l->b >= 0 ? glae_params_ptr(p, l->b) : NULL, &l->s);
}

static int conv_bwd(glae_ctx *ctx, glae_conv_layer *l, glae_params *p, glae_bf16 *din,
                    const glae_bf16 *dout, const glae_bf16 *in) {
    return ctx->ops->conv2d_backward_bf16(ctx, din, glae_params_grad(p, l->w),
                                          l->b >= 0 ? glae_params_grad(p, l->b) : NULL, dout, in,
                                          glae_params_ptr(p, l->w), &l->s);
}

/* out = act(BN(in) + residual) */
static int bn_fwd(glae_ctx *ctx, glae_bn_layer *l, glae_params *p, glae_bf16 *out,
                  const glae_bf16 *in, const glae_bf16 *residual, int64_t rows, int training,
                  int relu) {
    return ctx->ops->bn_act_forward_bf16(ctx, out, l->mean, l->invstd, in, residual,
                                         glae_params_ptr(p, l->g), glae_params_ptr(p, l->b),
                                         glae_params_ptr(p, l->rm), glae_params_ptr(p, l->rv),
                                         rows, l->c, GLAE_BN_MOMENTUM, GLAE_BN_EPS, training, relu);
}

/* out: the forward's output when relu (its mask), else NULL */
static int bn_bwd(glae_ctx *ctx, glae_bn_layer *l, glae_params *p, glae_bf16 *din,
                  glae_bf16 *dres, const glae_bf16 *dout, const glae_bf16 *out,
                  const glae_bf16 *in, int64_t rows) {
    return ctx->ops->bn_act_backward_bf16(ctx, din, dres, glae_params_grad(p, l->g),
                                          glae_params_grad(p, l->b), dout, out, in, l->mean,
                                          l->invstd, glae_params_ptr(p, l->g), rows, l->c, 1,
                                          out != NULL);
}

int glae_resnet_forward_bf16(glae_ctx *ctx, glae_resnet *net, glae_params *p, const float *x,
                             int training) {
    if (!net->bf16 || !net->x_h)
        return glae_fail(GLAE_ERR_RUNTIME, "resnet_forward_bf16: not planned in mixed precision");
    const glae_backend *ops = ctx->ops;
    net->x = x;
    GLAE_TRY(ops->f32_to_bf16(ctx, net->x_h, x, (int64_t)net->n * net->h * net->w * 3));
    int64_t rows = rows_of(&net->conv1);
    GLAE_TRY(conv_fwd(ctx, &net->conv1, p, net->c1_h, net->x_h));
    GLAE_TRY(bn_fwd(ctx, &net->bn1, p, net->a1_h, net->c1_h, NULL, rows, training, 1));
    GLAE_TRY(ops->maxpool2d_forward_bf16(ctx, net->p1_h, net->argmax, net->a1_h, &net->pool));
    for (int i = 0; i < net->nblocks; i++) {
        glae_block *b = &net->blocks[i];
        const glae_bf16 *in = b->in_h;
        const int last = b->nconv - 1;
        for (int j = 0; j < last; j++) {
            GLAE_TRY(conv_fwd(ctx, &b->conv[j], p, b->c_h[j], in));
            GLAE_TRY(bn_fwd(ctx, &b->bn[j], p, b->a_h[j], b->c_h[j], NULL, rows_of(&b->conv[j]),
                            training, 1));
            in = b->a_h[j];
        }
        const glae_bf16 *identity = b->in_h;
        if (b->has_down) {
            GLAE_TRY(conv_fwd(ctx, &b->dconv, p, b->dc_h, b->in_h));
            GLAE_TRY(bn_fwd(ctx, &b->dbn, p, b->db_h, b->dc_h, NULL, rows_of(&b->dconv), training, 0));
            identity = b->db_h;
        }
        GLAE_TRY(conv_fwd(ctx, &b->conv[last], p, b->c_h[last], in));
        GLAE_TRY(bn_fwd(ctx, &b->bn[last], p, b->out_h, b->c_h[last], identity,
                        rows_of(&b->conv[last]), training, 1));
    }
    const glae_block *lb = &net->blocks[net->nblocks - 1];
    return ops->bf16_to_f32(ctx, net->feat, lb->out_h, lb->out_numel);
}

/* dout is consumed (overwritten with the ReLU-masked gradient, which is also the
 * identity's); dx receives the input gradient; t1, t2 are work buffers. */
static int block_backward(glae_ctx *ctx, glae_block *b, glae_params *p, glae_bf16 *dx,
                          glae_bf16 *dout, glae_bf16 *t1, glae_bf16 *t2) {
    const glae_backend *ops = ctx->ops;
    const int last = b->nconv - 1;
    GLAE_TRY(bn_bwd(ctx, &b->bn[last], p, t1, dout, dout, b->out_h, b->c_h[last],
                    rows_of(&b->conv[last])));
    for (int j = last; j >= 0; j--) {
        /* t1 holds d(conv j output) */
        const glae_bf16 *in = j > 0 ? b->a_h[j - 1] : b->in_h;
        GLAE_TRY(conv_bwd(ctx, &b->conv[j], p, j > 0 ? t2 : dx, t1, in));
        if (j > 0)
            GLAE_TRY(bn_bwd(ctx, &b->bn[j - 1], p, t1, NULL, t2, b->a_h[j - 1], b->c_h[j - 1],
                            rows_of(&b->conv[j - 1])));
    }
    if (b->has_down) {
        GLAE_TRY(bn_bwd(ctx, &b->dbn, p, t1, NULL, dout, NULL, b->dc_h, rows_of(&b->dconv)));
        GLAE_TRY(conv_bwd(ctx, &b->dconv, p, t2, t1, b->in_h));
        return ops->add_forward_bf16(ctx, dx, dx, t2, b->in_numel);
    }
    return ops->add_forward_bf16(ctx, dx, dx, dout, b->in_numel);
}

int glae_resnet_backward_bf16(glae_ctx *ctx, glae_resnet *net, glae_params *p, const float *dfeat) {
    if (!net->bf16 || !net->g_h[0] || !net->dfeat_h)
        return glae_fail(GLAE_ERR_RUNTIME, "resnet_backward_bf16: not planned for mixed-precision training");
    const glae_backend *ops = ctx->ops;
    const glae_block *lb = &net->blocks[net->nblocks - 1];
    GLAE_TRY(ops->f32_to_bf16(ctx, net->dfeat_h, dfeat, lb->out_numel));
    /* the rotation of resnet.c's backward */
    glae_bf16 *dout = net->dfeat_h;
    int nxt = 0;
    for (int i = net->nblocks - 1; i >= 0; i--) {
        glae_bf16 *dx = net->g_h[nxt];
        glae_bf16 *t1 = net->g_h[(nxt + 1) % 4], *t2 = net->g_h[(nxt + 2) % 4];
        GLAE_TRY(block_backward(ctx, &net->blocks[i], p, dx, dout, t1, t2));
        dout = dx;
        nxt = (nxt + 1) % 4;
    }
    glae_bf16 *free_g[3];
    int nf = 0;
    for (int i = 0; i < 4; i++)
        if (net->g_h[i] != dout) free_g[nf++] = net->g_h[i];
    glae_bf16 *da = free_g[0], *dc = free_g[1];
    GLAE_TRY(ops->maxpool2d_backward_bf16(ctx, da, dout, net->argmax, &net->pool));
    GLAE_TRY(bn_bwd(ctx, &net->bn1, p, dc, NULL, da, net->a1_h, net->c1_h, rows_of(&net->conv1)));
    return conv_bwd(ctx, &net->conv1, p, NULL, dc, net->x_h);
}
