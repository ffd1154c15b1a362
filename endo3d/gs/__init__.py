"""Deformable Gaussian splatting: scene model, deformation fields, rasterisation, training, evaluation."""
