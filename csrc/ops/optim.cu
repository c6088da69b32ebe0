/* CUDA twin of optim.c: one fused SGD pass (torch.optim.SGD: momentum, dampening,
 * Nesterov, weight decay with the no-decay mask) over [begin, end) of the flat buffers,
 * float32 arithmetic in the same order as the CPU loop, so results match bit for bit
 * up to FMA contraction (nvcc fuses a*b + c; the CPU build may not). */
#include "ops/kernels.cuh"

__global__ static void sgd_k(float *params, float *mbuf, const float *grads, int64_t b, int64_t e,
                             const uint8_t *mask, float lr, float momentum, float one_m_damp,
                             float wd, int nesterov, int first, int decay, int use_mom) {
    GLAE_FOR(t, e - b) {
        const int64_t i = b + t;
        float d = grads[i];
        if (decay && !(mask && mask[i])) d = d + wd * params[i];
        if (use_mom) {
            const float buf = first ? d : momentum * mbuf[i] + one_m_damp * d;
            mbuf[i] = buf;
            d = nesterov ? d + momentum * buf : buf;
        }
        params[i] = params[i] - lr * d;
    }
}

extern "C" int glae_sgd_step_cuda(glae_ctx *ctx, float *params, float *momentum_buf,
                                  const float *grads, size_t begin, size_t end,
                                  const uint8_t *no_decay_mask, float lr, float momentum,
                                  float dampening, float wd, int nesterov, int first_step) {
    GLAE_STREAM(ctx, "sgd_step_cuda", st);
    if (!(lr >= 0.0f)) return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: invalid learning rate %g", lr);
    if (!(momentum >= 0.0f)) return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: invalid momentum %g", momentum);
    if (!(wd >= 0.0f)) return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: invalid weight_decay %g", wd);
    if (!isfinite(dampening)) return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: invalid dampening %g", dampening);
    if (nesterov && (momentum <= 0.0f || dampening != 0.0f))
        return glae_fail(GLAE_ERR_VALUE,
                         "sgd_step_cuda: Nesterov momentum requires a momentum and zero dampening");
    if (begin > end) return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: begin %zu > end %zu", begin, end);
    if (begin == end) return GLAE_OK;
    if (!params || !grads) return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: params/grads is NULL");
    if (momentum != 0.0f && !momentum_buf)
        return glae_fail(GLAE_ERR_VALUE, "sgd_step_cuda: momentum > 0 needs a momentum buffer");
    const float one_m_damp = (float)(1.0 - (double)dampening);
    const int64_t n = (int64_t)(end - begin);
    sgd_k<<<glae_grid(n), GLAE_BLOCK, 0, st>>>(params, momentum_buf, grads, (int64_t)begin,
                                               (int64_t)end, no_decay_mask, lr, momentum,
                                               one_m_damp, wd, nesterov, first_step, wd != 0.0f,
                                               momentum != 0.0f);
    GLAE_LAUNCHED();
    return GLAE_OK;
}
