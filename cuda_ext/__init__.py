"""CUDA sources of endo3d's kernels (``endo3d.cuda_ext`` once installed).

Not Python: each ``.cu`` file holds the forward and backward kernels of one
operation and registers them as ``torch.ops.endo3d.*``;
:mod:`endo3d.kernels.build` compiles them into one library at first use.
"""
