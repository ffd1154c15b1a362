// Fused masked SSIM + L1 photometric loss, forward and backward.
//
// For a render r, a target t (both (C, H, W), float32) and a mask m ((1, H, W),
// bool) the loss is
//
//     L = ((1 - w) sum m |r - t| + w sum m (1 - S(a, t))) / max(C |m|, 1)
//
// with a = where(m, r, t) and S the per-pixel SSIM of Wang et al. (2004):
//
//     S = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)),
//
// local statistics under an 11 x 11 Gaussian (sigma 1.5 px, normalised) with
// reflected borders (torch's F.pad(mode="reflect"): the edge pixel is not
// repeated), C1 = 0.01^2, C2 = 0.03^2. It is endo3d.kernels.ssim's
// photometric_loss_reference in one pass.
//
// Forward (ssim_l1_forward): one thread block per 32 x 16 pixel tile of one
// channel loads the tile plus a 5 px halo of a and t into shared memory,
// blurs a, t, a^2, t^2, a t horizontally in shared memory, then vertically
// per pixel, evaluates S and writes the three derivative maps
//
//     D_mu = m dS/dmu_a,   D_aa = m dS/dE[a^2],   D_ab = m dS/dE[a t]
//
// (derivatives with respect to the blurred statistics; C x H x W floats each)
// for the backward. Each block writes its partial sums (sum m |r - t|,
// sum m (1 - S), |m|); a one-block kernel adds them in double in a fixed
// order (deterministic) and writes the loss and 1 / max(C |m|, 1).
//
// Backward (ssim_l1_backward): the chain rule through the blur gives, at a
// masked pixel q (a = r there),
//
//     dL/dr(q) = (1 - w) g sign(r - t) / N
//                - w g / N (G^T D_mu + 2 r G^T D_aa + t G^T D_ab)(q),
//
// g the incoming gradient, N = max(C |m|, 1), and 0 at unmasked pixels (the
// L1 term is multiplied by m, the SSIM term sees the target there). G^T, the
// adjoint of the reflect-padded blur, is applied per tile like the forward:
// D maps of the tile plus halo into shared memory, 1-D adjoint along x, then
// along y. One pass, no recomputation of the statistics.
//
// The adjoint of the 1-D reflect-padded blur y[i] = sum_k w[k] x[refl(i + k)]
// (refl(j) = -j below 0, 2(n - 1) - j above n - 1, |k| <= R = 5, n > R) is
//
//     xbar[j] = sum_i ybar[i] K(j, i),  i in [j - R, j + R] within [0, n - 1],
//     K(j, i) = w[j - i] + [j >= 1] w[j + i] + [j <= n - 2] w[2(n - 1) - j - i],
//
// with w[e] = 0 for |e| > R: the first term is the direct tap, the second the
// taps of outputs i that reached j through the left mirror (i + k = -j), the
// third through the right mirror (i + k = 2(n - 1) - j). The conditions keep
// j = 0 and j = n - 1, which are their own mirror images, from being counted
// twice. It is not the reflect-padded blur of ybar: near a border the
// reflected taps scatter back to their source pixels.

#include "common.h"

#include <cmath>

namespace endo3d {
namespace {

constexpr int kRadius = 5;                       // the 11-tap window's half width, px
constexpr int kTileW = 32;                       // output tile, px (one warp wide)
constexpr int kTileH = 16;
constexpr int kThreadsX = 32;                    // a block of 32 x 8 threads, 2 tile rows each
constexpr int kThreadsY = 8;
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kHaloW = kTileW + 2 * kRadius;     // shared tile with halo: 42 x 26
constexpr int kHaloH = kTileH + 2 * kRadius;
constexpr int kFinalThreads = 256;
constexpr float kC1 = 1e-4f;                     // (0.01 L)^2, L = 1 the dynamic range
constexpr float kC2 = 9e-4f;                     // (0.03 L)^2

// The half window w[0..R] of the normalised Gaussian, w[e] the weight at offset +-e.
struct Window {
    float w[kRadius + 1];
};

// torch's reflect padding index of j in [-R, n - 1 + R] for a length n > R.
__device__ __forceinline__ int reflect(int j, int n) {
    return j < 0 ? -j : (j > n - 1 ? 2 * (n - 1) - j : j);
}

// K(j, j + d) of the header: weight of ybar[j + d] in the adjoint xbar[j], for
// j, j + d in [0, n - 1] and |d| <= R. Away from the borders only w[|d|] is left.
__device__ __forceinline__ float adjoint_tap(const Window& win, int j, int d, int n) {
    float k = win.w[d < 0 ? -d : d];
    const int left = 2 * j + d;                  // j + i
    if (j >= 1 && left <= kRadius) k += win.w[left];
    const int right = 2 * (n - 1 - j) - d;       // 2 (n - 1) - j - i
    if (j <= n - 2 && right <= kRadius) k += win.w[right];
    return k;
}

// Sums v[0..N-1] over the block (a multiple of 32 threads); the totals are valid in thread 0.
template <int N, typename T>
__device__ void block_sum(T (&v)[N]) {
    __shared__ T partial[N][32];
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int lane = tid % 32, warp = tid / 32, warps = (blockDim.x * blockDim.y + 31) / 32;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
        if (lane == 0) partial[k][warp] = v[k];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
            v[k] = lane < warps ? partial[k][lane] : T(0);
            for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
        }
    }
}

// One tile of one channel (blockIdx.z): partial sums into partials[block][0..2]
// = (sum m |r - t|, sum m (1 - S), |m| (channel 0 only)); with kSsim the
// derivative maps into dmaps ((3, C, H, W): D_mu, D_aa, D_ab) unless null.
template <bool kSsim>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const float* __restrict__ render, const float* __restrict__ target, const bool* __restrict__ mask, int C, int H,
    int W, const __grid_constant__ Window win, float* __restrict__ dmaps, float* __restrict__ partials) {
    __shared__ float s_a[kHaloH][kHaloW];        // a = where(m, r, t), reflected at the borders
    __shared__ float s_b[kHaloH][kHaloW];        // b = t
    __shared__ float s_h[5][kHaloH][kTileW];     // horizontal blurs of a, b, a^2, b^2, a b

    const int c = blockIdx.z, x0 = blockIdx.x * kTileW, y0 = blockIdx.y * kTileH;
    const int64_t plane = static_cast<int64_t>(H) * W;
    const float* r = render + c * plane;
    const float* t = target + c * plane;
    const int tid = threadIdx.y * kThreadsX + threadIdx.x;

    if (kSsim) {
        // Halo pixels past the reflected border feed only outputs outside the image.
        for (int k = tid; k < kHaloH * kHaloW; k += kThreads) {
            const int ly = k / kHaloW, lx = k % kHaloW;
            const int gy = y0 - kRadius + ly, gx = x0 - kRadius + lx;
            float av = 0.f, bv = 0.f;
            if (gy < H + kRadius && gx < W + kRadius) {
                const int64_t p = static_cast<int64_t>(reflect(gy, H)) * W + reflect(gx, W);
                bv = t[p];
                av = mask[p] ? r[p] : bv;
            }
            s_a[ly][lx] = av;
            s_b[ly][lx] = bv;
        }
        __syncthreads();
        for (int k = tid; k < kHaloH * kTileW; k += kThreads) {
            const int ly = k / kTileW, lx = k % kTileW;
            float sa = 0.f, sb = 0.f, saa = 0.f, sbb = 0.f, sab = 0.f;
#pragma unroll
            for (int d = -kRadius; d <= kRadius; ++d) {
                const float wd = win.w[d < 0 ? -d : d];
                const float av = s_a[ly][lx + kRadius + d], bv = s_b[ly][lx + kRadius + d];
                sa += wd * av;
                sb += wd * bv;
                saa += wd * av * av;
                sbb += wd * bv * bv;
                sab += wd * av * bv;
            }
            s_h[0][ly][lx] = sa;
            s_h[1][ly][lx] = sb;
            s_h[2][ly][lx] = saa;
            s_h[3][ly][lx] = sbb;
            s_h[4][ly][lx] = sab;
        }
        __syncthreads();
    }

    float sums[3] = {0.f, 0.f, 0.f};  // sum m |r - t|, sum m (1 - S), |m|
    const int gx = x0 + threadIdx.x;
    for (int row = threadIdx.y; row < kTileH; row += kThreadsY) {
        const int gy = y0 + row;
        if (gy >= H || gx >= W) continue;
        const int64_t p = static_cast<int64_t>(gy) * W + gx;
        const float m = mask[p] ? 1.f : 0.f;
        sums[0] += fabsf(r[p] - t[p]) * m;
        if (c == 0) sums[2] += m;
        if (kSsim) {
            float st[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int d = -kRadius; d <= kRadius; ++d) {
                const float wd = win.w[d < 0 ? -d : d];
#pragma unroll
                for (int s = 0; s < 5; ++s) st[s] += wd * s_h[s][row + kRadius + d][threadIdx.x];
            }
            const float mu_a = st[0], mu_b = st[1];
            const float var_a = st[2] - mu_a * mu_a, var_b = st[3] - mu_b * mu_b, cov = st[4] - mu_a * mu_b;
            const float a1 = 2.f * mu_a * mu_b + kC1, a2 = 2.f * cov + kC2;
            const float b1 = mu_a * mu_a + mu_b * mu_b + kC1, b2 = var_a + var_b + kC2;
            const float inv = 1.f / (b1 * b2);
            const float ssim = a1 * a2 * inv;
            sums[1] += (1.f - ssim) * m;
            if (dmaps != nullptr) {
                // dS/dmu_a with E[a^2], E[a b] held fixed (var_a and cov move with mu_a),
                // dS/dE[a^2] = dS/dvar_a, dS/dE[a b] = dS/dcov.
                const float d_mu = 2.f * inv * (mu_b * (a2 - a1) + mu_a * ssim * (b1 - b2));
                const float d_aa = -ssim / b2;
                const float d_ab = 2.f * a1 * inv;
                const int64_t q = c * plane + p, stride = C * plane;
                dmaps[q] = m * d_mu;
                dmaps[q + stride] = m * d_aa;
                dmaps[q + 2 * stride] = m * d_ab;
            }
        }
    }
    block_sum(sums);
    if (tid == 0) {
        const int64_t block = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
        for (int k = 0; k < 3; ++k) partials[3 * block + k] = sums[k];
    }
}

// Adds the blocks' partial sums in double and writes the loss and 1 / N, N = max(C |m|, 1).
__global__ void __launch_bounds__(kFinalThreads) finalize_kernel(const float* __restrict__ partials, int64_t blocks,
                                                                 int C, double ssim_weight, float* __restrict__ loss,
                                                                 float* __restrict__ inv_count) {
    double sums[3] = {0.0, 0.0, 0.0};
    for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x)
        for (int k = 0; k < 3; ++k) sums[k] += partials[3 * b + k];
    block_sum(sums);
    if (threadIdx.x == 0) {
        const double inv = 1.0 / fmax(C * sums[2], 1.0);
        *loss = static_cast<float>(((1.0 - ssim_weight) * sums[0] + ssim_weight * sums[1]) * inv);
        *inv_count = static_cast<float>(inv);
    }
}

// dL/dr for one tile of one channel; see the header. grad_loss and inv_count are device scalars.
template <bool kSsim>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const float* __restrict__ grad_loss, const float* __restrict__ inv_count, const float* __restrict__ render,
    const float* __restrict__ target, const bool* __restrict__ mask, const float* __restrict__ dmaps, int C, int H,
    int W, const __grid_constant__ Window win, float ssim_weight, float* __restrict__ grad) {
    __shared__ float s_d[3][kHaloH][kHaloW];     // D_mu, D_aa, D_ab; 0 outside the image
    __shared__ float s_h[3][kHaloH][kTileW];     // their 1-D adjoint blurs along x

    const int c = blockIdx.z, x0 = blockIdx.x * kTileW, y0 = blockIdx.y * kTileH;
    const int64_t plane = static_cast<int64_t>(H) * W;
    const int tid = threadIdx.y * kThreadsX + threadIdx.x;

    if (kSsim) {
        for (int k = tid; k < kHaloH * kHaloW; k += kThreads) {
            const int ly = k / kHaloW, lx = k % kHaloW;
            const int gy = y0 - kRadius + ly, gx = x0 - kRadius + lx;
            const bool inside = gy >= 0 && gy < H && gx >= 0 && gx < W;
            const int64_t q = c * plane + static_cast<int64_t>(gy) * W + gx, stride = C * plane;
#pragma unroll
            for (int s = 0; s < 3; ++s) s_d[s][ly][lx] = inside ? dmaps[q + s * stride] : 0.f;
        }
        __syncthreads();
        for (int k = tid; k < kHaloH * kTileW; k += kThreads) {
            const int ly = k / kTileW, lx = k % kTileW;
            const int j = x0 + lx;
            float acc[3] = {0.f, 0.f, 0.f};
            if (j < W) {
#pragma unroll
                for (int d = -kRadius; d <= kRadius; ++d) {
                    if (j + d < 0 || j + d >= W) continue;
                    const float tap = adjoint_tap(win, j, d, W);
#pragma unroll
                    for (int s = 0; s < 3; ++s) acc[s] += tap * s_d[s][ly][lx + kRadius + d];
                }
            }
#pragma unroll
            for (int s = 0; s < 3; ++s) s_h[s][ly][lx] = acc[s];
        }
        __syncthreads();
    }

    const float scale = *grad_loss * *inv_count;
    const float l1_scale = (1.f - ssim_weight) * scale, ssim_scale = -ssim_weight * scale;
    const int gx = x0 + threadIdx.x;
    for (int row = threadIdx.y; row < kTileH; row += kThreadsY) {
        const int gy = y0 + row;
        if (gy >= H || gx >= W) continue;
        const int64_t p = static_cast<int64_t>(gy) * W + gx, q = c * plane + p;
        const bool inside = mask[p];
        const float rv = render[q], tv = target[q], diff = rv - tv;
        const float sign = static_cast<float>((diff > 0.f) - (diff < 0.f));  // torch's sign: 0 at 0
        float g = l1_scale * sign * (inside ? 1.f : 0.f);
        if (kSsim && inside) {
            float acc[3] = {0.f, 0.f, 0.f};
#pragma unroll
            for (int d = -kRadius; d <= kRadius; ++d) {
                if (gy + d < 0 || gy + d >= H) continue;
                const float tap = adjoint_tap(win, gy, d, H);
#pragma unroll
                for (int s = 0; s < 3; ++s) acc[s] += tap * s_h[s][row + kRadius + d][threadIdx.x];
            }
            g += ssim_scale * (acc[0] + 2.f * rv * acc[1] + tv * acc[2]);
        }
        grad[q] = g;
    }
}

// The normalised Gaussian of 11 taps, sigma 1.5 px, computed in double.
Window gaussian_window() {
    constexpr double sigma = 1.5;
    double g[kRadius + 1], total = 0.0;
    for (int e = 0; e <= kRadius; ++e) {
        g[e] = std::exp(-e * e / (2.0 * sigma * sigma));
        total += e == 0 ? g[e] : 2.0 * g[e];
    }
    Window win;
    for (int e = 0; e <= kRadius; ++e) win.w[e] = static_cast<float>(g[e] / total);
    return win;
}

void check_inputs(const at::Tensor& render, const at::Tensor& target, const at::Tensor& mask) {
    ENDO3D_CHECK_INPUT(render);
    ENDO3D_CHECK_INPUT(target);
    ENDO3D_CHECK_INPUT(mask);
    ENDO3D_CHECK_FLOAT(render);
    ENDO3D_CHECK_FLOAT(target);
    TORCH_CHECK(render.dim() == 3, "render must be (C, H, W), got ", render.sizes());
    TORCH_CHECK(target.sizes() == render.sizes(), "target ", target.sizes(), " must match render ", render.sizes());
    TORCH_CHECK(mask.scalar_type() == at::kBool, "mask must be bool");
    TORCH_CHECK(mask.numel() == render.size(1) * render.size(2), "mask ", mask.sizes(), " must be (1, H, W) for render ",
                render.sizes());
    TORCH_CHECK(target.device() == render.device() && mask.device() == render.device(),
                "render, target and mask must be on one device");
    TORCH_CHECK(render.size(0) <= 65535, "at most 65535 channels, got ", render.size(0));
    TORCH_CHECK(render.size(1) * render.size(2) <= INT32_MAX, "image too large: ", render.sizes());
}

void check_reflectable(int64_t H, int64_t W) {
    TORCH_CHECK(H > kRadius && W > kRadius, "SSIM's reflect padding of ", kRadius, " px needs H, W >= ", kRadius + 1,
                ", got ", H, " x ", W);
}

dim3 tile_grid(int64_t C, int64_t H, int64_t W) {
    return dim3(static_cast<unsigned>(blocks_for(W, kTileW)), static_cast<unsigned>(blocks_for(H, kTileH)),
                static_cast<unsigned>(C));
}

}  // namespace

// Returns {loss (0-d), inv_count (1,) = 1 / max(C |m|, 1), dmaps}: dmaps is (3, C, H, W)
// (m dS/dmu_a, m dS/dE[a^2], m dS/dE[a t]) when ssim_weight != 0 and with_grad, else empty.
// ssim_weight = 0 skips the SSIM (and allows images smaller than 6 x 6).
std::vector<at::Tensor> ssim_l1_forward(at::Tensor render, at::Tensor target, at::Tensor mask, double ssim_weight,
                                        bool with_grad) {
    check_inputs(render, target, mask);
    const c10::cuda::CUDAGuard guard(render.device());
    const int64_t C = render.size(0), H = render.size(1), W = render.size(2);
    const bool ssim = ssim_weight != 0.0;
    const auto options = render.options();
    at::Tensor loss = at::zeros({}, options);
    at::Tensor inv_count = at::ones({1}, options);
    at::Tensor dmaps = at::empty({ssim && with_grad ? 3 : 0, C, H, W}, options);
    if (render.numel() == 0) return {loss, inv_count, dmaps};
    if (ssim) check_reflectable(H, W);

    const dim3 grid = tile_grid(C, H, W), block(kThreadsX, kThreadsY);
    const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
    at::Tensor partials = at::empty({blocks, 3}, options);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const Window win = gaussian_window();
    const float* r = render.data_ptr<float>();
    const float* t = target.data_ptr<float>();
    const bool* m = mask.data_ptr<bool>();
    if (ssim) {
        forward_kernel<true><<<grid, block, 0, stream>>>(r, t, m, C, H, W, win,
                                                         with_grad ? dmaps.data_ptr<float>() : nullptr,
                                                         partials.data_ptr<float>());
    } else {
        forward_kernel<false><<<grid, block, 0, stream>>>(r, t, m, C, H, W, win, nullptr, partials.data_ptr<float>());
    }
    ENDO3D_CHECK_LAUNCH();
    finalize_kernel<<<1, kFinalThreads, 0, stream>>>(partials.data_ptr<float>(), blocks, static_cast<int>(C),
                                                     ssim_weight, loss.data_ptr<float>(),
                                                     inv_count.data_ptr<float>());
    ENDO3D_CHECK_LAUNCH();
    return {loss, inv_count, dmaps};
}

// d loss / d render ((C, H, W)) for the incoming gradient grad_loss (one element), from
// ssim_l1_forward's inv_count and dmaps (computed with with_grad = true) on the same inputs.
at::Tensor ssim_l1_backward(at::Tensor grad_loss, at::Tensor render, at::Tensor target, at::Tensor mask,
                            at::Tensor inv_count, at::Tensor dmaps, double ssim_weight) {
    check_inputs(render, target, mask);
    const c10::cuda::CUDAGuard guard(render.device());
    const int64_t C = render.size(0), H = render.size(1), W = render.size(2);
    const bool ssim = ssim_weight != 0.0;
    TORCH_CHECK(grad_loss.numel() == 1 && inv_count.numel() == 1, "grad_loss and inv_count must have one element");
    at::Tensor grad = at::empty_like(render);  // every pixel is written below
    if (render.numel() == 0) return grad;
    if (ssim) {
        check_reflectable(H, W);
        ENDO3D_CHECK_INPUT(dmaps);
        ENDO3D_CHECK_FLOAT(dmaps);
        TORCH_CHECK(dmaps.dim() == 4 && dmaps.size(0) == 3 && dmaps.size(1) == C && dmaps.size(2) == H &&
                        dmaps.size(3) == W,
                    "dmaps must be (3, C, H, W) from ssim_l1_forward(..., with_grad=True), got ", dmaps.sizes());
    }
    const at::Tensor g = grad_loss.to(render.device(), at::kFloat).contiguous();
    const at::Tensor inv = inv_count.to(render.device(), at::kFloat).contiguous();

    const dim3 grid = tile_grid(C, H, W), block(kThreadsX, kThreadsY);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const Window win = gaussian_window();
    const float w = static_cast<float>(ssim_weight);
    if (ssim) {
        backward_kernel<true><<<grid, block, 0, stream>>>(
            g.data_ptr<float>(), inv.data_ptr<float>(), render.data_ptr<float>(), target.data_ptr<float>(),
            mask.data_ptr<bool>(), dmaps.data_ptr<float>(), C, H, W, win, w, grad.data_ptr<float>());
    } else {
        backward_kernel<false><<<grid, block, 0, stream>>>(
            g.data_ptr<float>(), inv.data_ptr<float>(), render.data_ptr<float>(), target.data_ptr<float>(),
            mask.data_ptr<bool>(), nullptr, C, H, W, win, w, grad.data_ptr<float>());
    }
    ENDO3D_CHECK_LAUNCH();
    return grad;
}

}  // namespace endo3d

TORCH_LIBRARY_FRAGMENT(endo3d, m) {
    m.def("ssim_l1_forward", &endo3d::ssim_l1_forward);
    m.def("ssim_l1_backward", &endo3d::ssim_l1_backward);
}
