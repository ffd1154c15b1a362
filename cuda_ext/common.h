// Shared helpers of the endo3d CUDA kernels (see endo3d/kernels/build.py).
//
// Every .cu file in this folder registers its own operators under the
// `endo3d` namespace with TORCH_LIBRARY_FRAGMENT, so the files are built into
// one library without a central binding file and appear in Python as
// torch.ops.endo3d.<name>.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#define ENDO3D_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor")
#define ENDO3D_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define ENDO3D_CHECK_FLOAT(x) TORCH_CHECK((x).scalar_type() == at::kFloat, #x " must be float32")
#define ENDO3D_CHECK_INPUT(x) \
    ENDO3D_CHECK_CUDA(x);     \
    ENDO3D_CHECK_CONTIGUOUS(x)

// Raises with the CUDA error string if the last launch failed.
#define ENDO3D_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace endo3d {

inline int64_t blocks_for(int64_t n, int64_t threads) { return (n + threads - 1) / threads; }

}  // namespace endo3d
