// HexPlane feature query (EndoGaussian's deformation field): forward and backward.
//
// Python side and reference: endo3d/kernels/hexplane.py. For point n with
// coordinates x in [0, 1]^D (clamped), scale s with table T_s of shape (R_s, F)
// and its planes p = (offset, a, b, W, H):
//
//   out[n, s F + f] = prod_p  B_sp(f),
//   B_sp(f) = (1-fu)(1-fv) T[k] + fu (1-fv) T[k+1] + (1-fu) fv T[k+W] + fu fv T[k+W+1]   (row k, column f)
//
// with the cell k = offset + j W + i and fractions fu, fv from
// x_a (W - 1) = i + fu and x_b (H - 1) = j + fv (i in [0, W-2], j in [0, H-2]).
//
// Threads: a group of G lanes (G a power of two <= 32, the next one >= F / V)
// serves one point; each lane takes chunks of V consecutive features (V = 4, 2
// or 1 dividing F, and 2 at most in the backward: kBackwardMaxVector; so loads,
// stores and atomics are float4 / float2 / float) at every scale. The G lanes
// of a point read contiguous plane rows, and the backward sums a point's
// coordinate gradient over its G lanes with shuffles, so every grad_coords
// element is written exactly once, without atomics. The table gradients are
// atomic vector adds (float2 atomicAdd on sm_90): points share rows, most of
// all in the time planes when all Gaussians are at one t, yet measured that
// case is no slower than random times (the gathers dominate).
//
// Backward, per point, scale, plane p and feature f, with g = dL/dout[n, s F + f]
// and O_p = prod_{q != p} B_sq(f) (prefix times suffix product: no division, so
// zero plane values are fine):
//
//   dL/dT[k + corner, f] += weight(corner) g O_p              (atomicAdd: points share rows)
//   dL/dx_a += g O_p dB/dfu (W - 1),  dB/dfu = (1-fv)(T[k+1] - T[k]) + fv (T[k+W+1] - T[k+W])
//   dL/dx_b += g O_p dB/dfv (H - 1),  dB/dfv = (1-fu)(T[k+W] - T[k]) + fu (T[k+W+1] - T[k+1])
//
// and dL/dx is zero where x is outside [0, 1] (torch.clamp's backward passes the
// gradient for 0 <= x <= 1).

#include "common.h"

#include <cstdint>
#include <vector>

namespace endo3d {
namespace {

constexpr int kMaxScales = 8;
constexpr int kMaxPlanes = 6;
constexpr int kMaxDims = 4;
constexpr int kThreads = 256;
constexpr int kLayoutFields = 5;  // offset, a, b, width, height per plane
// The backward keeps, per plane, the value, both slopes and the prefix product of its chunk: with float4
// chunks that is 186 registers, with float2 128, and the doubled occupancy wins (EndoGaussian's field,
// 200k points, H100: 4.0 instead of 4.8 ms for forward and backward).
constexpr int kBackwardMaxVector = 2;

struct Plane {
    int64_t offset;  // first table row of the plane
    int a, b;        // coordinates along u (within a row of the plane) and v
    int width, height;  // samples along u and v (>= 2)
};

struct Params {
    const float* table[kMaxScales];
    float* grad_table[kMaxScales];  // null in the forward, or when the tables need no gradient
    Plane plane[kMaxScales][kMaxPlanes];
    int64_t points;
    int scales, planes, dims, features;
    int chunks;  // features / V
    int group;   // lanes per point
};

template <int V>
__device__ __forceinline__ void load(const float* __restrict__ p, float (&x)[V]) {
    if constexpr (V == 4) {
        const float4 t = __ldg(reinterpret_cast<const float4*>(p));
        x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
    } else if constexpr (V == 2) {
        const float2 t = __ldg(reinterpret_cast<const float2*>(p));
        x[0] = t.x, x[1] = t.y;
    } else {
        x[0] = __ldg(p);
    }
}

template <int V>
__device__ __forceinline__ void store(float* __restrict__ p, const float (&x)[V]) {
    if constexpr (V == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
    } else if constexpr (V == 2) {
        *reinterpret_cast<float2*>(p) = make_float2(x[0], x[1]);
    } else {
        *p = x[0];
    }
}

// p[v] += x[v], each element atomically (one vector reduction on sm_90 and later).
template <int V>
__device__ __forceinline__ void atomic_add(float* p, const float (&x)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (V == 4) {
        atomicAdd(reinterpret_cast<float4*>(p), make_float4(x[0], x[1], x[2], x[3]));
    } else if constexpr (V == 2) {
        atomicAdd(reinterpret_cast<float2*>(p), make_float2(x[0], x[1]));
    } else {
        atomicAdd(p, x[0]);
    }
#else
#pragma unroll
    for (int v = 0; v < V; ++v) atomicAdd(p + v, x[v]);
#endif
}

// x[d] for a runtime d < kMaxDims, without indexing the register array dynamically.
__device__ __forceinline__ float pick(const float (&x)[kMaxDims], int d) {
    float r = x[0];
#pragma unroll
    for (int k = 1; k < kMaxDims; ++k) r = d == k ? x[k] : r;
    return r;
}

// acc[d] += value for a runtime d < kMaxDims.
__device__ __forceinline__ void add_at(float (&acc)[kMaxDims], int d, float value) {
#pragma unroll
    for (int k = 0; k < kMaxDims; ++k) acc[k] += d == k ? value : 0.0f;
}

// Cell index i in [0, size - 2] and fraction f in [0, 1] of u in [0, 1] on `size` samples at k / (size - 1).
__device__ __forceinline__ void locate(float u, int size, int& i, float& f) {
    const float p = u * static_cast<float>(size - 1);
    i = min(max(static_cast<int>(floorf(p)), 0), size - 2);
    f = p - static_cast<float>(i);
}

// The cells of a point in the planes of one scale: first rows, widths and fractions.
struct Cells {
    int64_t row[kMaxPlanes];
    int width[kMaxPlanes];
    float fu[kMaxPlanes], fv[kMaxPlanes];
};

__device__ __forceinline__ void locate_cells(const Params& prm, int s, const float (&x)[kMaxDims], Cells& c) {
#pragma unroll
    for (int p = 0; p < kMaxPlanes; ++p) {
        if (p < prm.planes) {
            const Plane pl = prm.plane[s][p];
            int i, j;
            locate(pick(x, pl.a), pl.width, i, c.fu[p]);
            locate(pick(x, pl.b), pl.height, j, c.fv[p]);
            c.row[p] = pl.offset + static_cast<int64_t>(j) * pl.width + i;
            c.width[p] = pl.width;
        }
    }
}

// A point's clamped coordinates, and whether each was inside [0, 1] (the clamp passes its gradient).
__device__ __forceinline__ void load_coords(const Params& prm, const float* __restrict__ coords, int64_t n,
                                            float (&x)[kMaxDims], bool (&inside)[kMaxDims]) {
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
        const float u = d < prm.dims ? coords[n * prm.dims + d] : 0.0f;
        inside[d] = u >= 0.0f && u <= 1.0f;
        x[d] = fminf(fmaxf(u, 0.0f), 1.0f);  // NaN -> 0, so every index stays in its plane
    }
}

template <int V>
__global__ void __launch_bounds__(kThreads)
    hexplane_forward_kernel(const Params prm, const float* __restrict__ coords, float* __restrict__ out) {
    const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    const int64_t n = thread / prm.group;
    const int lane = static_cast<int>(thread % prm.group);
    if (n >= prm.points) return;
    float x[kMaxDims];
    bool inside[kMaxDims];
    load_coords(prm, coords, n, x, inside);
    const int F = prm.features;
    float* out_row = out + n * prm.scales * F;
    for (int s = 0; s < prm.scales; ++s) {
        const float* __restrict__ table = prm.table[s];
        Cells cell;
        locate_cells(prm, s, x, cell);
        for (int c = lane; c < prm.chunks; c += prm.group) {
            const int f0 = c * V;
            float prod[V];
#pragma unroll
            for (int v = 0; v < V; ++v) prod[v] = 1.0f;
#pragma unroll
            for (int p = 0; p < kMaxPlanes; ++p) {
                if (p < prm.planes) {
                    const float* t = table + cell.row[p] * F + f0;
                    const int64_t down = static_cast<int64_t>(cell.width[p]) * F;
                    float t00[V], t01[V], t10[V], t11[V];
                    load<V>(t, t00);
                    load<V>(t + F, t01);
                    load<V>(t + down, t10);
                    load<V>(t + down + F, t11);
                    const float fu = cell.fu[p], fv = cell.fv[p];
                    const float w00 = (1.0f - fu) * (1.0f - fv), w01 = fu * (1.0f - fv);
                    const float w10 = (1.0f - fu) * fv, w11 = fu * fv;
#pragma unroll
                    for (int v = 0; v < V; ++v) {
                        prod[v] *= w00 * t00[v] + w01 * t01[v] + w10 * t10[v] + w11 * t11[v];
                    }
                }
            }
            store<V>(out_row + s * F + f0, prod);
        }
    }
}

template <int V>
__global__ void __launch_bounds__(kThreads)
    hexplane_backward_kernel(const Params prm, const float* __restrict__ coords,
                             const float* __restrict__ grad_out, float* __restrict__ grad_coords) {
    const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    const int64_t n = thread / prm.group;
    const int lane = static_cast<int>(thread % prm.group);
    // No early return: every lane of the warp takes part in the shuffles below.
    const bool valid = n < prm.points;
    float acc[kMaxDims] = {0.0f, 0.0f, 0.0f, 0.0f};  // dL/dx of this lane's features
    float x[kMaxDims];
    bool inside[kMaxDims];
    if (valid) {
        load_coords(prm, coords, n, x, inside);
        const int F = prm.features;
        const float* grad_row = grad_out + n * prm.scales * F;
        for (int s = 0; s < prm.scales; ++s) {
            const float* __restrict__ table = prm.table[s];
            float* grad_table = prm.grad_table[s];
            Cells cell;
            locate_cells(prm, s, x, cell);
            for (int c = lane; c < prm.chunks; c += prm.group) {
                const int f0 = c * V;
                float g[V];
                load<V>(grad_row + s * F + f0, g);
                float val[kMaxPlanes][V], du[kMaxPlanes][V], dv[kMaxPlanes][V];
#pragma unroll
                for (int p = 0; p < kMaxPlanes; ++p) {
                    if (p < prm.planes) {
                        const float* t = table + cell.row[p] * F + f0;
                        const int64_t down = static_cast<int64_t>(cell.width[p]) * F;
                        float t00[V], t01[V], t10[V], t11[V];
                        load<V>(t, t00);
                        load<V>(t + F, t01);
                        load<V>(t + down, t10);
                        load<V>(t + down + F, t11);
                        const float fu = cell.fu[p], fv = cell.fv[p];
#pragma unroll
                        for (int v = 0; v < V; ++v) {
                            const float top = t00[v] + fu * (t01[v] - t00[v]);
                            const float bottom = t10[v] + fu * (t11[v] - t10[v]);
                            val[p][v] = top + fv * (bottom - top);
                            du[p][v] = (1.0f - fv) * (t01[v] - t00[v]) + fv * (t11[v] - t10[v]);
                            dv[p][v] = bottom - top;
                        }
                    }
                }
                // before[p] = prod_{q < p} val[q]; the loop below multiplies in prod_{q > p} val[q].
                float before[kMaxPlanes][V];
                float run[V];
#pragma unroll
                for (int v = 0; v < V; ++v) run[v] = 1.0f;
#pragma unroll
                for (int p = 0; p < kMaxPlanes; ++p) {
                    if (p < prm.planes) {
#pragma unroll
                        for (int v = 0; v < V; ++v) {
                            before[p][v] = run[v];
                            run[v] *= val[p][v];
                        }
                    }
                }
#pragma unroll
                for (int v = 0; v < V; ++v) run[v] = g[v];  // now g times the product of the later planes
#pragma unroll
                for (int p = kMaxPlanes - 1; p >= 0; --p) {
                    if (p < prm.planes) {
                        float go[V];  // g O_p
                        float su = 0.0f, sv = 0.0f;
#pragma unroll
                        for (int v = 0; v < V; ++v) {
                            go[v] = run[v] * before[p][v];
                            run[v] *= val[p][v];
                            su += go[v] * du[p][v];
                            sv += go[v] * dv[p][v];
                        }
                        const Plane pl = prm.plane[s][p];
                        add_at(acc, pl.a, su * static_cast<float>(pl.width - 1));
                        add_at(acc, pl.b, sv * static_cast<float>(pl.height - 1));
                        if (grad_table != nullptr) {
                            const float fu = cell.fu[p], fv = cell.fv[p];
                            const float w[4] = {(1.0f - fu) * (1.0f - fv), fu * (1.0f - fv), (1.0f - fu) * fv, fu * fv};
                            const int64_t down = static_cast<int64_t>(cell.width[p]) * F;
                            float* t = grad_table + cell.row[p] * F + f0;
                            float* corner[4] = {t, t + F, t + down, t + down + F};
#pragma unroll
                            for (int k = 0; k < 4; ++k) {
                                float add[V];
#pragma unroll
                                for (int v = 0; v < V; ++v) add[v] = w[k] * go[v];
                                atomic_add<V>(corner[k], add);
                            }
                        }
                    }
                }
            }
        }
    }
    if (grad_coords == nullptr) return;  // uniform over the grid
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
        for (int offset = prm.group / 2; offset > 0; offset /= 2) {
            acc[d] += __shfl_xor_sync(0xffffffffu, acc[d], offset);
        }
    }
    if (valid && lane == 0) {
#pragma unroll
        for (int d = 0; d < kMaxDims; ++d) {
            if (d < prm.dims) grad_coords[n * prm.dims + d] = inside[d] ? acc[d] : 0.0f;
        }
    }
}

// Checks the inputs and packs them into the kernels' parameters (chunks and group: configure).
Params make_params(const std::vector<at::Tensor>& tables, const at::Tensor& coords,
                   const std::vector<int64_t>& layout) {
    ENDO3D_CHECK_INPUT(coords);
    ENDO3D_CHECK_FLOAT(coords);
    TORCH_CHECK(coords.dim() == 2 && coords.size(1) >= 1 && coords.size(1) <= kMaxDims,
                "coords must be (N, D) with 1 <= D <= ", kMaxDims, ", got ", coords.sizes());
    const int64_t scales = static_cast<int64_t>(tables.size());
    TORCH_CHECK(scales >= 1 && scales <= kMaxScales, "need 1 to ", kMaxScales, " tables, got ", scales);
    TORCH_CHECK(!layout.empty() && layout.size() % (kLayoutFields * scales) == 0,
                "layout must hold (offset, a, b, width, height) for the same number of planes per table");
    const int64_t planes = static_cast<int64_t>(layout.size()) / (kLayoutFields * scales);
    TORCH_CHECK(planes <= kMaxPlanes, "at most ", kMaxPlanes, " planes per table, got ", planes);
    Params prm{};
    prm.points = coords.size(0);
    prm.scales = static_cast<int>(scales);
    prm.planes = static_cast<int>(planes);
    prm.dims = static_cast<int>(coords.size(1));
    for (int64_t s = 0; s < scales; ++s) {
        const at::Tensor& table = tables[s];
        ENDO3D_CHECK_INPUT(table);
        ENDO3D_CHECK_FLOAT(table);
        TORCH_CHECK(table.device() == coords.device(), "tables and coords must be on one device");
        TORCH_CHECK(table.dim() == 2 && table.size(1) >= 1, "tables must be (R, F), got ", table.sizes());
        TORCH_CHECK(table.size(1) == tables[0].size(1), "all tables need the same number of features");
        TORCH_CHECK(table.size(1) <= (int64_t{1} << 20), "too many features: ", table.size(1));
        prm.table[s] = table.data_ptr<float>();
        for (int64_t p = 0; p < planes; ++p) {
            const int64_t* f = layout.data() + (s * planes + p) * kLayoutFields;
            const int64_t offset = f[0], a = f[1], b = f[2], width = f[3], height = f[4];
            TORCH_CHECK(a >= 0 && a < prm.dims && b >= 0 && b < prm.dims, "plane coordinates (", a, ", ", b,
                        ") outside the ", prm.dims, " coordinates");
            TORCH_CHECK(width >= 2 && height >= 2 && width <= (1 << 24) && height <= (1 << 24),
                        "plane sizes must be in [2, 2^24], got ", width, " x ", height);
            TORCH_CHECK(offset >= 0 && offset + width * height <= table.size(0), "plane rows ", offset, " + ",
                        width, " x ", height, " outside table ", s, " of ", table.size(0), " rows");
            prm.plane[s][p] = Plane{offset, static_cast<int>(a), static_cast<int>(b), static_cast<int>(width),
                                    static_cast<int>(height)};
        }
    }
    prm.features = static_cast<int>(tables[0].size(1));
    return prm;
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

// Sets chunks and group for vector width v; the number of blocks of the launch.
unsigned int configure(Params& prm, int v) {
    prm.chunks = prm.features / v;
    prm.group = 1;
    while (prm.group < prm.chunks && prm.group < 32) prm.group *= 2;
    const int64_t blocks = blocks_for(prm.points * prm.group, kThreads);
    TORCH_CHECK(blocks <= 0x7fffffff, "too many points for one launch: ", prm.points);
    return static_cast<unsigned int>(blocks);
}

// The widest vector (widest, ..., 2 or 1 floats) that divides F and that the tables, their gradients and
// `other` are aligned for (rows of F floats then keep every chunk aligned).
int vector_width(const Params& prm, const void* other, int widest) {
    int width = widest;
    while (width > 1) {
        bool ok = prm.features % width == 0 && aligned(other, width * 4);
        for (int s = 0; s < prm.scales; ++s) {
            ok = ok && aligned(prm.table[s], width * 4) && aligned(prm.grad_table[s], width * 4);
        }
        if (ok) break;
        width /= 2;
    }
    return width;
}

}  // namespace

// features (N, S F): per scale, the product over its planes of the bilinear lookups (see the top of this file).
at::Tensor hexplane_forward(std::vector<at::Tensor> tables, at::Tensor coords, std::vector<int64_t> layout) {
    Params prm = make_params(tables, coords, layout);
    const at::cuda::OptionalCUDAGuard guard(coords.device());
    at::Tensor out = at::empty({prm.points, static_cast<int64_t>(prm.scales) * prm.features}, coords.options());
    if (prm.points == 0) return out;
    const int v = vector_width(prm, out.data_ptr(), 4);
    const unsigned int blocks = configure(prm, v);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const float* c = coords.data_ptr<float>();
    float* o = out.data_ptr<float>();
    if (v == 4) {
        hexplane_forward_kernel<4><<<blocks, kThreads, 0, stream>>>(prm, c, o);
    } else if (v == 2) {
        hexplane_forward_kernel<2><<<blocks, kThreads, 0, stream>>>(prm, c, o);
    } else {
        hexplane_forward_kernel<1><<<blocks, kThreads, 0, stream>>>(prm, c, o);
    }
    ENDO3D_CHECK_LAUNCH();
    return out;
}

// [dL/dtable_s for each scale..., dL/dcoords] for dL/dout = grad_out (N, S F); an entry not asked for is undefined.
std::vector<at::Tensor> hexplane_backward(std::vector<at::Tensor> tables, at::Tensor coords,
                                          std::vector<int64_t> layout, at::Tensor grad_out, bool tables_grad,
                                          bool coords_grad) {
    Params prm = make_params(tables, coords, layout);
    ENDO3D_CHECK_INPUT(grad_out);
    ENDO3D_CHECK_FLOAT(grad_out);
    TORCH_CHECK(grad_out.device() == coords.device(), "grad_out and coords must be on one device");
    TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == prm.points &&
                    grad_out.size(1) == static_cast<int64_t>(prm.scales) * prm.features,
                "grad_out must be (N, S F) = (", prm.points, ", ", prm.scales * prm.features, "), got ",
                grad_out.sizes());
    const at::cuda::OptionalCUDAGuard guard(coords.device());
    std::vector<at::Tensor> grads(tables.size() + 1);
    if (tables_grad) {
        for (size_t s = 0; s < tables.size(); ++s) {
            grads[s] = at::zeros_like(tables[s]);
            prm.grad_table[s] = grads[s].data_ptr<float>();
        }
    }
    if (coords_grad) grads.back() = at::empty_like(coords);
    if (prm.points == 0 || !(tables_grad || coords_grad)) return grads;
    float* gc = coords_grad ? grads.back().data_ptr<float>() : nullptr;
    const int v = vector_width(prm, grad_out.data_ptr(), kBackwardMaxVector);
    const unsigned int blocks = configure(prm, v);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const float* c = coords.data_ptr<float>();
    const float* g = grad_out.data_ptr<float>();
    if (v == 2) {
        hexplane_backward_kernel<2><<<blocks, kThreads, 0, stream>>>(prm, c, g, gc);
    } else {
        hexplane_backward_kernel<1><<<blocks, kThreads, 0, stream>>>(prm, c, g, gc);
    }
    ENDO3D_CHECK_LAUNCH();
    return grads;
}

}  // namespace endo3d

TORCH_LIBRARY_FRAGMENT(endo3d, m) {
    m.def("hexplane_forward", &endo3d::hexplane_forward);
    m.def("hexplane_backward", &endo3d::hexplane_backward);
}
