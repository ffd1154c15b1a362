"""The ``endo3d reconstruct VIDEO`` pipeline: video in, cameras, depth, mesh and deformable Gaussians out."""
