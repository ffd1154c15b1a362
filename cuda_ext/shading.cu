// Fused shading of G-buffer points: endo3d.render.shading.shade, forward and backward.
//
// For each point X (mm, camera frame, camera at the origin) with unit normal
// n and material (albedo, roughness, specular, metallic), lit by L spot
// lights shared by all points (position p_k, axis d_k, intensity I_k,
// falloff mu_k) with visibility V_k, the outgoing linear radiance is
//
//     L(X) = sum_k V_k f(n, w_k, v) E_k + ambient (1 - metallic) albedo
//
// with v = normalize(-X), w_k = normalize(p_k - X), the spot irradiance
// E_k = I_k max(w_k . b_k, 0)^mu_k max(n . w_k, 0) / |p_k - X|^2
// (b_k = -d_k / |d_k|) and f the metal-rough BRDF of endo3d/render/brdf.py.
// The maths, clamps and floors are those of the PyTorch reference
// (endo3d/render/lights.py, brdf.py, shading.py) term by term, so the
// kernels agree with autograd of the reference also at the degenerate points
// (X = 0, X at a light, back-facing normals, roughness below the alpha floor).
// An input exactly on a clamp's bound passes its gradient here (torch 2.13
// does the same, 2.14 passes none); such ties have measure zero, and at the
// degenerate points above the terms they would scale are zero.
//
// Forward: one thread per point, loop over the lights.
// Backward: one thread per point recomputes the forward terms of each light
// and runs the hand-written adjoint (reverse mode) of the expressions below;
// per-point gradients are written directly, the gradients of the lights and
// the ambient radiance (sums over the points) are reduced per block and added
// with one atomicAdd per block and value. The gradient of the light axes is
// accumulated with respect to the unit backward axis b_k and taken through
// the normalisation by a second, one-thread-per-light kernel.
//
// The per-point maths are __host__ __device__ functions, so they can also be
// compiled for the CPU and checked there against autograd of the reference.
//
// Operators (float32 or float64, all CUDA, contiguous, one device):
//   shade_forward(points (P,3), normals (P,3), albedo (P,3), roughness (P|P,1),
//                 specular (P|P,1), metallic (P|P,1), visibility (P,L)?,
//                 positions (L,3), directions (L,3), intensities (L,3),
//                 falloffs (L), ambient (3)?) -> radiance (P,3)
//   shade_backward(grad_radiance (P,3), <the same inputs>, needs) -> 12 gradients,
//                 one per input in the order above; bit i of `needs` asks for
//                 gradient i, the others come back undefined (None).

#include "common.h"

#include <ATen/Dispatch.h>

#include <cmath>
#include <vector>

namespace endo3d {
namespace shading {

#define HD __host__ __device__ __forceinline__

// Constants of the reference.
constexpr double kMinSq = 1e-12;        // lights._MIN_SQ: floor of squared lengths before 1/sqrt
constexpr double kMinPowBase = 1e-30;   // lights._MIN_POW_BASE: floor of the falloff power's base
constexpr double kAlphaMin = 1e-3;      // brdf.ALPHA_MIN: alpha = max(roughness^2, ALPHA_MIN)
constexpr double kTiny = 1e-12;         // brdf._TINY: floor of |l + v|^2 and of 0.5 / V
constexpr double kInvPi = 0.318309886183790671537767526745;

// ---------------------------------------------------------------------------
// Small vector algebra.

template <typename T>
struct V3 {
    T x, y, z;
};

template <typename T>
HD V3<T> operator+(V3<T> a, V3<T> b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
template <typename T>
HD V3<T> operator-(V3<T> a, V3<T> b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
template <typename T>
HD V3<T> operator*(V3<T> a, T s) { return {a.x * s, a.y * s, a.z * s}; }
template <typename T>
HD V3<T>& operator+=(V3<T>& a, V3<T> b) {
    a.x += b.x;
    a.y += b.y;
    a.z += b.z;
    return a;
}
template <typename T>
HD T dot(V3<T> a, V3<T> b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
template <typename T>
HD V3<T> load3(const T* p) { return {p[0], p[1], p[2]}; }
template <typename T>
HD V3<T> zero3() { return {T(0), T(0), T(0)}; }

// 1 / sqrt(x): the hardware reciprocal square root on the device.
HD float inv_sqrt(float x) {
#ifdef __CUDA_ARCH__
    return rsqrtf(x);
#else
    return 1.0f / std::sqrt(x);
#endif
}
HD double inv_sqrt(double x) {
#ifdef __CUDA_ARCH__
    return rsqrt(x);
#else
    return 1.0 / std::sqrt(x);
#endif
}

// max(x, lo); its derivative is [x >= lo] (file comment on ties).
template <typename T>
HD T floor_at(T x, T lo) { return x >= lo ? x : lo; }

// 1 / |a| with |a|^2 floored at 1e-12 (lights._inv_norm), and the adjoint of
// u = a / |a| (the floored length being a constant where the floor is hit):
// da = (g - (g . u) u) / |a|, i.e. g / |a| - (g . a) a / |a|^3.
template <typename T>
struct Normalized {
    V3<T> u;   // a / |a|
    T inv;     // 1 / |a| (floored length)
    bool free; // |a|^2 >= 1e-12: the length varies with a
};

template <typename T>
HD Normalized<T> normalized(V3<T> a) {
    const T sq = dot(a, a);
    const T inv = inv_sqrt(floor_at(sq, T(kMinSq)));
    return {a * inv, inv, sq >= T(kMinSq)};
}

template <typename T>
HD V3<T> normalized_adjoint(const Normalized<T>& nz, V3<T> a, V3<T> g) {
    V3<T> ga = g * nz.inv;
    if (nz.free) ga += a * (-dot(g, a) * nz.inv * nz.inv * nz.inv);
    return ga;
}

// Schlick weight (1 - c)^5 with 1 - c clamped to [0, 1], and its derivative in c.
template <typename T>
struct Schlick {
    T value, slope;
};

template <typename T>
HD Schlick<T> schlick(T c) {
    const T raw = T(1) - c;
    const bool inside = raw >= T(0) && raw <= T(1);
    const T m = raw < T(0) ? T(0) : (raw > T(1) ? T(1) : raw);
    const T m4 = (m * m) * (m * m);
    return {m4 * m, inside ? T(-5) * m4 : T(0)};
}

// ---------------------------------------------------------------------------
// Per-point inputs and the light-independent terms (brdf._lobe).

template <typename T>
struct Surface {
    V3<T> X, n;
    T albedo[3];
    T roughness, specular, metallic;
};

template <typename T>
struct Light {
    V3<T> p;  // position, mm
    V3<T> b;  // unit backward axis -d / |d|
    T I[3];   // intensity
    T mu;     // falloff
};

template <typename T>
struct Lobe {
    Normalized<T> view;  // v = normalize(-X)
    T nv_raw, nv, front;  // n . v, max(n . v, 0), [n . v > 0]
    T base[3];            // (1 - metallic) albedo
    T f0[3], f90m[3], omf0[3];  // lerp(specular, albedo, metallic), min(50 F0, 1) - F0, 1 - F0
    T sw_v, sw_v_slope;   // (1 - n.v)^5 and its derivative
    T transmit_v[3];      // 1 - F(n.v) = 1 - F0 - (F90 - F0) (1 - n.v)^5
    T diffuse[3];         // base transmit_v front / pi
    T r2, alpha, a2, oma2;  // roughness^2, max(r2, ALPHA_MIN), alpha^2, 1 - alpha^2
    T lam_v;              // sqrt(a2 + (1 - a2) nv^2)
    T spec_scale;         // a2 front / (2 pi)
};

template <typename T>
HD Lobe<T> make_lobe(const Surface<T>& s) {
    Lobe<T> o;
    o.view = normalized(s.X * T(-1));
    o.nv_raw = dot(s.n, o.view.u);
    o.nv = floor_at(o.nv_raw, T(0));
    o.front = o.nv_raw > T(0) ? T(1) : T(0);
    const Schlick<T> sw = schlick(o.nv);
    o.sw_v = sw.value;
    o.sw_v_slope = sw.slope;
    for (int c = 0; c < 3; ++c) {
        o.base[c] = (T(1) - s.metallic) * s.albedo[c];
        o.f0[c] = s.specular + s.metallic * (s.albedo[c] - s.specular);
        const T f90 = T(50) * o.f0[c] <= T(1) ? T(50) * o.f0[c] : T(1);
        o.f90m[c] = f90 - o.f0[c];
        o.omf0[c] = T(1) - o.f0[c];
        o.transmit_v[c] = o.omf0[c] - o.f90m[c] * o.sw_v;
        o.diffuse[c] = o.base[c] * o.transmit_v[c] * (o.front * T(kInvPi));
    }
    o.r2 = s.roughness * s.roughness;
    o.alpha = floor_at(o.r2, T(kAlphaMin));
    o.a2 = o.alpha * o.alpha;
    o.oma2 = T(1) - o.a2;
    o.lam_v = std::sqrt(o.a2 + o.oma2 * (o.nv * o.nv));
    o.spec_scale = o.a2 * (o.front * T(0.5 * kInvPi));
    return o;
}

// Adjoints of the lobe terms, accumulated over the lights.
template <typename T>
struct LobeGrad {
    T base[3], diffuse[3], f0[3], f90m[3], omf0[3];
    T a2, oma2, nv, lam_v, spec_scale;
};

template <typename T>
HD LobeGrad<T> zero_lobe_grad() {
    LobeGrad<T> g;
    for (int c = 0; c < 3; ++c) g.base[c] = g.diffuse[c] = g.f0[c] = g.f90m[c] = g.omf0[c] = T(0);
    g.a2 = g.oma2 = g.nv = g.lam_v = g.spec_scale = T(0);
    return g;
}

// Gradients of one point's own inputs.
template <typename T>
struct SurfaceGrad {
    V3<T> X, n;
    T albedo[3];
    T roughness, specular, metallic;
};

// The lobe's adjoint: from the accumulated LobeGrad (and the adjoint of v
// and n collected from the lights) to the point's inputs.
template <typename T>
HD SurfaceGrad<T> lobe_adjoint(const Surface<T>& s, const Lobe<T>& o, LobeGrad<T> g, V3<T> g_v, V3<T> g_n) {
    SurfaceGrad<T> out;
    // spec_scale = a2 front / (2 pi)
    g.a2 += g.spec_scale * (o.front * T(0.5 * kInvPi));
    // lam_v = sqrt(a2 + oma2 nv^2)
    const T g_q = g.lam_v / (T(2) * o.lam_v);
    g.a2 += g_q;
    g.oma2 += g_q * (o.nv * o.nv);
    g.nv += g_q * o.oma2 * T(2) * o.nv;
    // diffuse = base transmit_v front / pi, transmit_v = omf0 - f90m sw_v
    T g_sw_v = T(0);
    for (int c = 0; c < 3; ++c) {
        const T g_prod = g.diffuse[c] * (o.front * T(kInvPi));
        g.base[c] += g_prod * o.transmit_v[c];
        const T g_tv = g_prod * o.base[c];
        g.omf0[c] += g_tv;
        g.f90m[c] -= g_tv * o.sw_v;
        g_sw_v -= g_tv * o.f90m[c];
    }
    g.nv += g_sw_v * o.sw_v_slope;
    // nv = max(nv_raw, 0), nv_raw = n . v
    const T g_nv_raw = o.nv_raw >= T(0) ? g.nv : T(0);
    g_n += o.view.u * g_nv_raw;
    g_v += s.n * g_nv_raw;
    // v = normalize(-X)
    out.X = normalized_adjoint(o.view, s.X * T(-1), g_v) * T(-1);
    out.n = g_n;
    // oma2 = 1 - a2, a2 = alpha^2, alpha = max(roughness^2, ALPHA_MIN)
    g.a2 -= g.oma2;
    const T g_r2 = o.r2 >= T(kAlphaMin) ? g.a2 * T(2) * o.alpha : T(0);
    out.roughness = g_r2 * T(2) * s.roughness;
    // omf0 = 1 - f0, f90m = min(50 f0, 1) - f0, f0 = specular + metallic (albedo - specular),
    // base = (1 - metallic) albedo
    out.specular = T(0);
    out.metallic = T(0);
    for (int c = 0; c < 3; ++c) {
        T g_f0 = g.f0[c] - g.omf0[c] - g.f90m[c];
        if (T(50) * o.f0[c] <= T(1)) g_f0 += T(50) * g.f90m[c];
        out.specular += g_f0 * (T(1) - s.metallic);
        out.albedo[c] = g_f0 * s.metallic + g.base[c] * (T(1) - s.metallic);
        out.metallic += g_f0 * (s.albedo[c] - s.specular) - g.base[c] * s.albedo[c];
    }
    return out;
}

// ---------------------------------------------------------------------------
// One light at one point: lights._spot_terms and brdf._reflect.

template <typename T>
struct LightTerms {
    V3<T> t;            // p - X
    Normalized<T> w;    // w = normalize(p - X); w.inv = 1 / |p - X| (floored)
    T dsq;              // max(|p - X|^2, 1e-12)
    T nl_raw, nl;       // n . w, max(n . w, 0)
    T cb, cc, pw, cone; // w . b, max(cb, 1e-30), cc^mu, [cb > 0] cc^mu
    T scale;            // cone nl / dsq (irradiance per unit intensity)
    V3<T> half;         // w + v
    T hs, hsq, hl;      // |half|^2, max(hs, 1e-12), sqrt(hsq)
    Schlick<T> sw_h;    // (1 - |half| / 2)^5 (v . h = |half| / 2)
    Schlick<T> sw_l;    // (1 - nl)^5
    V3<T> tangent;      // half - n (nl_raw + nv)
    T s2, k;            // sin^2(theta_h) = |tangent|^2 / hsq, a2 + (1 - a2) s2
    T lam_l;            // sqrt(a2 + (1 - a2) nl^2)
    T hv_raw, hvi;      // nv lam_l + nl lam_v, max(hv_raw, 1e-12)
    T den, spec;        // k^2 hvi, spec_scale / den (= D V)
    T fresnel[3];       // f0 + f90m sw_h
    T transmit_l[3];    // omf0 - f90m sw_l
    T f[3];             // BRDF: diffuse transmit_l + fresnel spec
};

template <typename T>
HD LightTerms<T> light_terms(const Surface<T>& s, const Lobe<T>& o, const Light<T>& light) {
    LightTerms<T> q;
    q.t = light.p - s.X;
    q.w = normalized(q.t);
    q.dsq = floor_at(dot(q.t, q.t), T(kMinSq));
    const V3<T> w = q.w.u;
    q.nl_raw = dot(s.n, w);
    q.nl = floor_at(q.nl_raw, T(0));
    q.cb = dot(w, light.b);
    q.cc = floor_at(q.cb, T(kMinPowBase));
    q.pw = std::exp(light.mu * std::log(q.cc));
    q.cone = q.cb > T(0) ? q.pw : T(0);
    q.scale = q.cone * q.nl / q.dsq;

    q.half = w + o.view.u;
    q.hs = dot(q.half, q.half);
    q.hsq = floor_at(q.hs, T(kTiny));
    q.hl = std::sqrt(q.hsq);
    q.sw_h = schlick(T(0.5) * q.hl);
    q.sw_l = schlick(q.nl);
    q.tangent = q.half - s.n * (q.nl_raw + o.nv);
    q.s2 = dot(q.tangent, q.tangent) / q.hsq;
    q.k = o.a2 + o.oma2 * q.s2;
    q.lam_l = std::sqrt(o.a2 + o.oma2 * (q.nl * q.nl));
    q.hv_raw = o.nv * q.lam_l + q.nl * o.lam_v;
    q.hvi = floor_at(q.hv_raw, T(kTiny));
    q.den = q.k * q.k * q.hvi;
    q.spec = o.spec_scale / q.den;
    for (int c = 0; c < 3; ++c) {
        q.fresnel[c] = o.f0[c] + o.f90m[c] * q.sw_h.value;
        q.transmit_l[c] = o.omf0[c] - o.f90m[c] * q.sw_l.value;
        q.f[c] = o.diffuse[c] * q.transmit_l[c] + q.fresnel[c] * q.spec;
    }
    return q;
}

// Gradients of one light, summed over the points of a block: position (3),
// unit backward axis (3), intensity (3), falloff (1).
constexpr int kLightGrads = 10;

// Adjoint of radiance += f (scale vis) I for one light at one point, given the
// radiance gradient G. Accumulates into the lobe's adjoint, the adjoints of v,
// n and X, and lg (kLightGrads values); returns the visibility's gradient.
template <typename T>
HD T light_adjoint(const Surface<T>& s, const Lobe<T>& o, const Light<T>& light, T vis, const T G[3],
                   LobeGrad<T>& g, V3<T>& g_v, V3<T>& g_n, V3<T>& g_X, T lg[kLightGrads]) {
    const LightTerms<T> q = light_terms(s, o, light);
    const T scale_vis = q.scale * vis;
    T g_f[3];
    T g_scale_vis = T(0);
    for (int c = 0; c < 3; ++c) {
        g_f[c] = G[c] * scale_vis * light.I[c];
        g_scale_vis += G[c] * q.f[c] * light.I[c];
        lg[6 + c] += G[c] * q.f[c] * scale_vis;
    }
    const T g_vis = g_scale_vis * q.scale;
    const T g_scale = g_scale_vis * vis;

    // f = diffuse transmit_l + fresnel spec
    T g_spec = T(0), g_sw_l = T(0), g_sw_h = T(0);
    for (int c = 0; c < 3; ++c) {
        g.diffuse[c] += g_f[c] * q.transmit_l[c];
        const T g_tl = g_f[c] * o.diffuse[c];
        const T g_fr = g_f[c] * q.spec;
        g_spec += g_f[c] * q.fresnel[c];
        // transmit_l = omf0 - f90m sw_l, fresnel = f0 + f90m sw_h
        g.omf0[c] += g_tl;
        g.f90m[c] += g_fr * q.sw_h.value - g_tl * q.sw_l.value;
        g_sw_l -= g_tl * o.f90m[c];
        g.f0[c] += g_fr;
        g_sw_h += g_fr * o.f90m[c];
    }
    // spec = spec_scale / den, den = k^2 hvi, hvi = max(hv_raw, 1e-12)
    g.spec_scale += g_spec / q.den;
    const T g_den = -g_spec * q.spec / q.den;
    const T g_k = g_den * T(2) * q.k * q.hvi;
    const T g_hv = q.hv_raw >= T(kTiny) ? g_den * q.k * q.k : T(0);
    // hv_raw = nv lam_l + nl lam_v
    T g_nl = g_hv * o.lam_v;
    g.nv += g_hv * q.lam_l;
    g.lam_v += g_hv * q.nl;
    // lam_l = sqrt(a2 + oma2 nl^2)
    const T g_ql = g_hv * o.nv / (T(2) * q.lam_l);
    g.a2 += g_ql;
    g.oma2 += g_ql * (q.nl * q.nl);
    g_nl += g_ql * o.oma2 * T(2) * q.nl;
    // k = a2 + oma2 s2, s2 = |tangent|^2 / hsq
    g.a2 += g_k;
    g.oma2 += g_k * q.s2;
    const T g_s2 = g_k * o.oma2;
    const V3<T> g_tangent = q.tangent * (T(2) * g_s2 / q.hsq);
    T g_hsq = -g_s2 * q.s2 / q.hsq;
    // tangent = half - n (nl_raw + nv)
    V3<T> g_half = g_tangent;
    g_n += g_tangent * (-(q.nl_raw + o.nv));
    const T g_sum = -dot(g_tangent, s.n);
    T g_nl_raw = g_sum;
    g.nv += g_sum;
    // sw_l = schlick(nl)
    g_nl += g_sw_l * q.sw_l.slope;
    // sw_h = schlick(hl / 2), hl = sqrt(hsq), hsq = max(|half|^2, 1e-12)
    g_hsq += g_sw_h * q.sw_h.slope * T(0.5) / (T(2) * q.hl);
    if (q.hs >= T(kTiny)) g_half += q.half * (T(2) * g_hsq);
    // half = w + v
    V3<T> g_w = g_half;
    g_v += g_half;

    // scale = cone nl / dsq
    const T g_cone = g_scale * q.nl / q.dsq;
    g_nl += g_scale * q.cone / q.dsq;
    T g_dsq = -g_scale * (q.cone * q.nl) / (q.dsq * q.dsq);
    // nl = max(nl_raw, 0)
    if (q.nl_raw >= T(0)) g_nl_raw += g_nl;
    // cone = [cb > 0] exp(mu log(max(cb, 1e-30)))
    if (q.cb > T(0)) {
        const T g_pw = g_cone * q.pw;
        lg[9] += g_pw * std::log(q.cc);
        if (q.cb >= T(kMinPowBase)) {
            const T g_cb = g_pw * light.mu / q.cc;
            g_w += light.b * g_cb;
            lg[3] += g_cb * q.w.u.x;
            lg[4] += g_cb * q.w.u.y;
            lg[5] += g_cb * q.w.u.z;
        }
    }
    // nl_raw = n . w
    g_n += q.w.u * g_nl_raw;
    g_w += s.n * g_nl_raw;
    // w = normalize(t), dsq = max(|t|^2, 1e-12), t = p - X
    V3<T> g_t = normalized_adjoint(q.w, q.t, g_w);
    if (q.w.free) g_t += q.t * (T(2) * g_dsq);
    lg[0] += g_t.x;
    lg[1] += g_t.y;
    lg[2] += g_t.z;
    g_X += g_t * T(-1);
    return g_vis;
}

// ---------------------------------------------------------------------------
// Argument bundles and loads.

template <typename T>
struct Inputs {
    const T* points;       // (P, 3)
    const T* normals;      // (P, 3)
    const T* albedo;       // (P, 3)
    const T* roughness;    // (P)
    const T* specular;     // (P)
    const T* metallic;     // (P)
    const T* visibility;   // (P, L) or null
    const T* positions;    // (L, 3)
    const T* directions;   // (L, 3)
    const T* intensities;  // (L, 3)
    const T* falloffs;     // (L)
    const T* ambient;      // (3) or null
    int64_t P;
    int L;
};

template <typename T>
HD Surface<T> load_surface(const Inputs<T>& in, int64_t i) {
    Surface<T> s;
    s.X = load3(in.points + 3 * i);
    s.n = load3(in.normals + 3 * i);
    for (int c = 0; c < 3; ++c) s.albedo[c] = in.albedo[3 * i + c];
    s.roughness = in.roughness[i];
    s.specular = in.specular[i];
    s.metallic = in.metallic[i];
    return s;
}

// The light's axis is normalised here, per point (a few flops); its gradient
// is taken with respect to the unit axis and chained once per light.
template <typename T>
HD Light<T> load_light(const Inputs<T>& in, int k) {
    Light<T> light;
    light.p = load3(in.positions + 3 * k);
    light.b = normalized(load3(in.directions + 3 * k)).u * T(-1);
    for (int c = 0; c < 3; ++c) light.I[c] = in.intensities[3 * k + c];
    light.mu = in.falloffs[k];
    return light;
}

template <typename T>
HD T load_visibility(const Inputs<T>& in, int64_t i, int k) {
    return in.visibility ? in.visibility[i * in.L + k] : T(1);
}

// Radiance at point i (the forward of one thread).
template <typename T>
HD void shade_point(const Inputs<T>& in, int64_t i, T out[3]) {
    const Surface<T> s = load_surface(in, i);
    const Lobe<T> o = make_lobe(s);
    for (int c = 0; c < 3; ++c) out[c] = in.ambient ? o.base[c] * in.ambient[c] : T(0);
    for (int k = 0; k < in.L; ++k) {
        const Light<T> light = load_light(in, k);
        const T vis = load_visibility(in, i, k);
        const LightTerms<T> q = light_terms(s, o, light);
        for (int c = 0; c < 3; ++c) out[c] += q.f[c] * (q.scale * vis * light.I[c]);
    }
}

// Gradient of the light axis d from the gradient of the unit backward axis
// b = -d / |d| (lights._light_cf).
template <typename T>
HD V3<T> direction_adjoint(V3<T> d, V3<T> g_b) {
    return normalized_adjoint(normalized(d), d, g_b) * T(-1);
}

// Gradient outputs; null pointers are not asked for.
template <typename T>
struct Grads {
    T* points;
    T* normals;
    T* albedo;
    T* roughness;
    T* specular;
    T* metallic;
    T* visibility;
    T* positions;    // (L, 3), accumulated
    T* axes;         // (L, 3), accumulated gradient of the unit backward axes
    T* intensities;  // (L, 3), accumulated
    T* falloffs;     // (L), accumulated
    T* ambient;      // (3), accumulated
};

// ---------------------------------------------------------------------------
// Kernels.

constexpr int kThreads = 128;  // the backward needs ~150 registers (float): 3 blocks of 4 warps per SM
constexpr int kWarps = kThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kThreads) shade_forward_kernel(Inputs<T> in, T* __restrict__ radiance) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= in.P) return;
    T out[3];
    shade_point(in, i, out);
    for (int c = 0; c < 3; ++c) radiance[3 * i + c] = out[c];
}

// Sums N values over the block and adds them to dst[0..N) with one atomicAdd
// each (by thread 0). Every thread of the block must call it; `scratch`
// holds kWarps * N values.
template <typename T, int N>
__device__ void block_sum_add(T (&v)[N], T* scratch, T* const (&dst)[N]) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int j = 0; j < N; ++j) {
        T x = v[j];
        for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
        if (lane == 0) scratch[warp * N + j] = x;
    }
    __syncthreads();
    if (threadIdx.x < N) {
        T total = T(0);
        for (int w = 0; w < kWarps; ++w) total += scratch[w * N + threadIdx.x];
        atomicAdd(dst[threadIdx.x], total);
    }
    __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    shade_backward_kernel(Inputs<T> in, const T* __restrict__ grad_radiance, Grads<T> out) {
    __shared__ T scratch[kWarps * kLightGrads];
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool valid = i < in.P;  // every thread takes part in the block sums
    const bool light_grads = out.positions != nullptr;

    Surface<T> s{};
    Lobe<T> o{};
    T G[3] = {T(0), T(0), T(0)};
    if (valid) {
        s = load_surface(in, i);
        o = make_lobe(s);
        for (int c = 0; c < 3; ++c) G[c] = grad_radiance[3 * i + c];
    }
    LobeGrad<T> g = zero_lobe_grad<T>();
    V3<T> g_v = zero3<T>(), g_n = zero3<T>(), g_X = zero3<T>();

    for (int k = 0; k < in.L; ++k) {
        T lg[kLightGrads];
        for (int j = 0; j < kLightGrads; ++j) lg[j] = T(0);
        if (valid) {
            const T vis = load_visibility(in, i, k);
            const T g_vis = light_adjoint(s, o, load_light(in, k), vis, G, g, g_v, g_n, g_X, lg);
            if (out.visibility) out.visibility[i * in.L + k] = g_vis;
        }
        if (light_grads) {
            T* const dst[kLightGrads] = {
                out.positions + 3 * k,     out.positions + 3 * k + 1,   out.positions + 3 * k + 2,
                out.axes + 3 * k,          out.axes + 3 * k + 1,        out.axes + 3 * k + 2,
                out.intensities + 3 * k,   out.intensities + 3 * k + 1, out.intensities + 3 * k + 2,
                out.falloffs + k};
            block_sum_add(lg, scratch, dst);
        }
    }

    T ga[3] = {T(0), T(0), T(0)};
    if (valid) {
        if (in.ambient) {
            // radiance += base ambient
            for (int c = 0; c < 3; ++c) {
                g.base[c] += G[c] * in.ambient[c];
                ga[c] = G[c] * o.base[c];
            }
        }
        const SurfaceGrad<T> sg = lobe_adjoint(s, o, g, g_v, g_n);
        const V3<T> gX = sg.X + g_X;
        if (out.points) {
            out.points[3 * i] = gX.x;
            out.points[3 * i + 1] = gX.y;
            out.points[3 * i + 2] = gX.z;
        }
        if (out.normals) {
            out.normals[3 * i] = sg.n.x;
            out.normals[3 * i + 1] = sg.n.y;
            out.normals[3 * i + 2] = sg.n.z;
        }
        if (out.albedo)
            for (int c = 0; c < 3; ++c) out.albedo[3 * i + c] = sg.albedo[c];
        if (out.roughness) out.roughness[i] = sg.roughness;
        if (out.specular) out.specular[i] = sg.specular;
        if (out.metallic) out.metallic[i] = sg.metallic;
    }
    if (out.ambient) {
        T* const dst[3] = {out.ambient, out.ambient + 1, out.ambient + 2};
        block_sum_add(ga, scratch, dst);
    }
}

// One thread per light: the gradient of d from that of b = -d / |d|, in place.
template <typename T>
__global__ void direction_grad_kernel(const T* __restrict__ directions, T* axes, int L) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= L) return;
    const V3<T> g = direction_adjoint(load3(directions + 3 * k), load3(axes + 3 * k));
    axes[3 * k] = g.x;
    axes[3 * k + 1] = g.y;
    axes[3 * k + 2] = g.z;
}

#undef HD

// ---------------------------------------------------------------------------
// Host side.

struct Checked {
    int64_t P;
    int64_t L;
};

Checked check_inputs(const at::Tensor& points, const at::Tensor& normals, const at::Tensor& albedo,
                     const at::Tensor& roughness, const at::Tensor& specular, const at::Tensor& metallic,
                     const c10::optional<at::Tensor>& visibility, const at::Tensor& positions,
                     const at::Tensor& directions, const at::Tensor& intensities, const at::Tensor& falloffs,
                     const c10::optional<at::Tensor>& ambient) {
    TORCH_CHECK(points.dim() == 2 && points.size(1) == 3, "points must be (P, 3), got ", points.sizes());
    const int64_t P = points.size(0);
    TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "positions must be (L, 3), got ", positions.sizes());
    const int64_t L = positions.size(0);
    TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                "points must be float32 or float64");
    std::vector<std::pair<const at::Tensor*, const char*>> all = {
        {&points, "points"},         {&normals, "normals"},       {&albedo, "albedo"},
        {&roughness, "roughness"},   {&specular, "specular"},     {&metallic, "metallic"},
        {&positions, "positions"},   {&directions, "directions"}, {&intensities, "intensities"},
        {&falloffs, "falloffs"}};
    if (visibility) all.push_back({&*visibility, "visibility"});
    if (ambient) all.push_back({&*ambient, "ambient"});
    for (const auto& [t, name] : all) {
        TORCH_CHECK(t->is_cuda(), name, " must be a CUDA tensor");
        TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
        TORCH_CHECK(t->scalar_type() == points.scalar_type(), name, " must have the dtype of points");
        TORCH_CHECK(t->device() == points.device(), name, " must be on the device of points");
    }
    TORCH_CHECK(normals.sizes() == points.sizes(), "normals must be (P, 3), got ", normals.sizes());
    TORCH_CHECK(albedo.sizes() == points.sizes(), "albedo must be (P, 3), got ", albedo.sizes());
    for (const auto* t : {&roughness, &specular, &metallic})
        TORCH_CHECK(t->numel() == P && (t->dim() == 1 || (t->dim() == 2 && t->size(1) == 1)),
                    "roughness, specular and metallic must be (P) or (P, 1), got ", t->sizes());
    TORCH_CHECK(directions.sizes() == positions.sizes(), "directions must be (L, 3), got ", directions.sizes());
    TORCH_CHECK(intensities.sizes() == positions.sizes(), "intensities must be (L, 3), got ", intensities.sizes());
    TORCH_CHECK(falloffs.dim() == 1 && falloffs.size(0) == L, "falloffs must be (L), got ", falloffs.sizes());
    TORCH_CHECK(L <= INT32_MAX, "too many lights");
    if (visibility)
        TORCH_CHECK(visibility->dim() == 2 && visibility->size(0) == P && visibility->size(1) == L,
                    "visibility must be (P, L), got ", visibility->sizes());
    if (ambient)
        TORCH_CHECK(ambient->dim() == 1 && ambient->size(0) == 3, "ambient must be (3), got ", ambient->sizes());
    return {P, L};
}

template <typename T>
Inputs<T> make_inputs(const at::Tensor& points, const at::Tensor& normals, const at::Tensor& albedo,
                      const at::Tensor& roughness, const at::Tensor& specular, const at::Tensor& metallic,
                      const c10::optional<at::Tensor>& visibility, const at::Tensor& positions,
                      const at::Tensor& directions, const at::Tensor& intensities, const at::Tensor& falloffs,
                      const c10::optional<at::Tensor>& ambient, Checked n) {
    return {points.data_ptr<T>(),
            normals.data_ptr<T>(),
            albedo.data_ptr<T>(),
            roughness.data_ptr<T>(),
            specular.data_ptr<T>(),
            metallic.data_ptr<T>(),
            visibility ? visibility->data_ptr<T>() : nullptr,
            positions.data_ptr<T>(),
            directions.data_ptr<T>(),
            intensities.data_ptr<T>(),
            falloffs.data_ptr<T>(),
            ambient ? ambient->data_ptr<T>() : nullptr,
            n.P,
            static_cast<int>(n.L)};
}

}  // namespace shading

// Radiance (P, 3) of P points lit by L shared spot lights (file comment).
at::Tensor shade_forward(const at::Tensor& points, const at::Tensor& normals, const at::Tensor& albedo,
                         const at::Tensor& roughness, const at::Tensor& specular, const at::Tensor& metallic,
                         const c10::optional<at::Tensor>& visibility, const at::Tensor& positions,
                         const at::Tensor& directions, const at::Tensor& intensities, const at::Tensor& falloffs,
                         const c10::optional<at::Tensor>& ambient) {
    using namespace shading;
    const Checked n = check_inputs(points, normals, albedo, roughness, specular, metallic, visibility, positions,
                                   directions, intensities, falloffs, ambient);
    const at::cuda::OptionalCUDAGuard guard(points.device());
    at::Tensor radiance = at::empty({n.P, 3}, points.options());
    if (n.P == 0) return radiance;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "shade_forward", [&] {
        const Inputs<scalar_t> in = make_inputs<scalar_t>(points, normals, albedo, roughness, specular, metallic,
                                                          visibility, positions, directions, intensities,
                                                          falloffs, ambient, n);
        shade_forward_kernel<scalar_t><<<blocks_for(n.P, kThreads), kThreads, 0, stream>>>(
            in, radiance.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return radiance;
}

// Gradients of every input of shade_forward given grad_radiance (P, 3): bit i
// of `needs` asks for the gradient of input i (order of shade_forward's
// arguments); the others are returned undefined.
std::vector<at::Tensor> shade_backward(const at::Tensor& grad_radiance, const at::Tensor& points,
                                       const at::Tensor& normals, const at::Tensor& albedo,
                                       const at::Tensor& roughness, const at::Tensor& specular,
                                       const at::Tensor& metallic, const c10::optional<at::Tensor>& visibility,
                                       const at::Tensor& positions, const at::Tensor& directions,
                                       const at::Tensor& intensities, const at::Tensor& falloffs,
                                       const c10::optional<at::Tensor>& ambient, int64_t needs) {
    using namespace shading;
    const Checked n = check_inputs(points, normals, albedo, roughness, specular, metallic, visibility, positions,
                                   directions, intensities, falloffs, ambient);
    ENDO3D_CHECK_INPUT(grad_radiance);
    TORCH_CHECK(grad_radiance.sizes() == points.sizes() && grad_radiance.scalar_type() == points.scalar_type() &&
                    grad_radiance.device() == points.device(),
                "grad_radiance must be (P, 3) like points");
    const at::cuda::OptionalCUDAGuard guard(points.device());

    const auto need = [&](int index) { return ((needs >> index) & 1) != 0; };
    const auto per_point = [&](int index, const at::Tensor& like) {
        return need(index) ? at::empty_like(like) : at::Tensor();
    };
    // Light gradients are all computed when any is asked for (one reduction).
    const bool light_grads = need(7) || need(8) || need(9) || need(10);
    const auto summed = [&](bool wanted, const at::Tensor& like) {
        return wanted ? at::zeros_like(like) : at::Tensor();
    };
    std::vector<at::Tensor> grads = {
        per_point(0, points),
        per_point(1, normals),
        per_point(2, albedo),
        per_point(3, roughness),
        per_point(4, specular),
        per_point(5, metallic),
        visibility ? per_point(6, *visibility) : at::Tensor(),
        summed(light_grads, positions),
        summed(light_grads, directions),
        summed(light_grads, intensities),
        summed(light_grads, falloffs),
        ambient ? summed(need(11), *ambient) : at::Tensor(),
    };
    if (n.P > 0) {
        const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
        AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "shade_backward", [&] {
            const Inputs<scalar_t> in = make_inputs<scalar_t>(points, normals, albedo, roughness, specular,
                                                              metallic, visibility, positions, directions,
                                                              intensities, falloffs, ambient, n);
            const auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
            const Grads<scalar_t> out = {ptr(grads[0]), ptr(grads[1]), ptr(grads[2]),  ptr(grads[3]),
                                         ptr(grads[4]), ptr(grads[5]), ptr(grads[6]),  ptr(grads[7]),
                                         ptr(grads[8]), ptr(grads[9]), ptr(grads[10]), ptr(grads[11])};
            shade_backward_kernel<scalar_t><<<blocks_for(n.P, kThreads), kThreads, 0, stream>>>(
                in, grad_radiance.data_ptr<scalar_t>(), out);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            if (light_grads && n.L > 0) {
                direction_grad_kernel<scalar_t><<<blocks_for(n.L, 128), 128, 0, stream>>>(
                    directions.data_ptr<scalar_t>(), out.axes, static_cast<int>(n.L));
                C10_CUDA_KERNEL_LAUNCH_CHECK();
            }
        });
    }
    for (int index = 7; index <= 10; ++index)
        if (!need(index)) grads[index] = at::Tensor();
    return grads;
}

}  // namespace endo3d

TORCH_LIBRARY_FRAGMENT(endo3d, m) {
    m.def("shade_forward", &endo3d::shade_forward);
    m.def("shade_backward", &endo3d::shade_backward);
}
