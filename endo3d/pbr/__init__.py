"""Material and lighting estimation with physically based rendering (EndoPBR-style), and re-rendering.

- :mod:`endo3d.pbr.config`: settings of ``endo3d pbr fit`` / ``endo3d pbr render`` (no torch import).
- :mod:`endo3d.pbr.data`: the known mesh ray cast at the dataset's poses with the simulator's machinery.
- :mod:`endo3d.pbr.field`: the hash-grid material field and its output mapping.
- :mod:`endo3d.pbr.model`: the PBR image model (shared ``endo3d.render`` shading) and the light-baked baseline.
- :mod:`endo3d.pbr.fit`: fitting, evaluation and the run folder.
- :mod:`endo3d.pbr.evaluate`: light and albedo recovery, and how the scale ambiguity is resolved.
- :mod:`endo3d.pbr.render`: new camera paths and light as ``endo3d/v1`` datasets.

This package imports nothing heavy at import time, so the command line stays fast.
"""
