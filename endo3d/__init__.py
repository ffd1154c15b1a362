"""endo3d: differentiable simulation and 3D reconstruction in endoscopy.

Units are millimetres, cameras follow OpenCV (x right, y down, z forward) and
poses are camera-to-world; see ``CONVENTIONS.md`` of the project.
"""

__version__ = "0.1.0"
