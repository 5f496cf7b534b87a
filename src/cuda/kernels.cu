// Element-wise kernels of the self-normalizing FC model, compiled at run time by NVRTC.
// Batches are column-major D x B (one example per column), as on the CPU.
extern "C" {

__device__ __forceinline__ float uniform01(unsigned long long seed, unsigned long long k) {
    // splitmix64 of (seed, k): a counter-based generator, so any entry's noise is a
    // function of (seed, index) and threads need no shared state
    unsigned long long z = seed + 0x9E3779B97F4A7C15ULL * (k + 1ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// out[:, j] = data[idx[j], :] + U[0, 1) noise (uniform dequantisation)
__global__ void gather_dequant(const unsigned char* data, const int* idx, float* out, int d, int b,
                               unsigned long long seed) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= d * b) return;
    int j = t / d, i = t - j * d;
    out[t] = (float)data[(long long)idx[j] * d + i] + uniform01(seed, (unsigned long long)t);
}

// z = logit(alpha + (1 - 2 alpha) y / 256); logdet[j] += its log-derivative
__global__ void preprocess(const float* y, float* z, float* logdet, int d, int b, float alpha, float base) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= d * b) return;
    float s = alpha + (1.0f - 2.0f * alpha) * y[t] * (1.0f / 256.0f);
    float ls = logf(s), l1s = log1pf(-s);
    z[t] = ls - l1s;
    atomicAdd(&logdet[t / d], base - ls - l1s);
}

// smooth leaky ReLU: z = a x + (1 - a) softplus(x); logdet[j] += log(a + (1 - a) sigma(x))
__global__ void slr_forward(const float* x, float* z, float* logdet, int d, int b, float a) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d * b) return;
    float v = x[i];
    float t = expf(-fabsf(v));
    float sp = fmaxf(v, 0.0f) + log1pf(t);
    float s = (v >= 0.0f ? 1.0f : t) / (1.0f + t);
    z[i] = a * v + (1.0f - a) * sp;
    atomicAdd(&logdet[i / d], logf(a + (1.0f - a) * s));
}

// dx = f'(x) dz + d/dx log f'(x)
__global__ void slr_backward(const float* x, const float* dz, float* dx, int n, float a) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float t = expf(-fabsf(v));
    float s = (v >= 0.0f ? 1.0f : t) / (1.0f + t);
    float dv = a + (1.0f - a) * s;
    dx[i] = dv * dz[i] + (1.0f - a) * s * (1.0f - s) / dv;
}

// z[:, j] += b
__global__ void add_bias(float* z, const float* bias, int d, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) z[i] += bias[i % d];
}

// dst = a src
__global__ void scale_copy(float* dst, const float* src, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = a * src[i];
}

// y = a y + c x
__global__ void scale_add(float* y, float a, const float* x, float c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * y[i] + c * x[i];
}

// out[i] = scale * sum_j m[i + j d]
__global__ void row_sums(const float* m, float* out, int d, int b, float scale) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d) return;
    float acc = 0.0f;
    for (int j = 0; j < b; ++j) acc += m[i + (long long)j * d];
    out[i] = scale * acc;
}

// out[j] += sum_i x[i, j]^2 (per column; out zeroed by the caller)
__global__ void col_sum_sq(const float* x, float* out, int d, int b) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= d * b) return;
    atomicAdd(&out[t / d], x[t] * x[t]);
}

// Adam with the bias corrections folded into step and eps_hat (as on the CPU)
__global__ void adam(float* p, const float* g, float* m, float* v, int n, float step, float b1, float b2, float eps_hat) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step * mi / (sqrtf(vi) + eps_hat);
}

}
