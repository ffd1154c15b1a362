"""``mesh.ply``: the scene's tissue at t = 0 (world mm) with vertex colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from endo3d.render.response import srgb_encode
from endo3d.sim.scene import Scene
from endo3d.sim.surface import SurfacePoints


def write_tissue_mesh(scene: Scene, path: Path) -> None:
    """Write all tissue surfaces as one binary PLY triangle mesh.

    Vertex colours are the sRGB albedo at each vertex (finest texture level),
    vertex normals the smooth rest normals.
    """
    vertices, faces, normals, colours = [], [], [], []
    offset = 0
    for surf in (s for s in scene.surfaces if s.is_tissue):
        n = len(surf.vertices)
        points = SurfacePoints.from_attributes(surf, surf.attributes, np.zeros(n))
        colours.append(srgb_encode(surf.material.evaluate(points)[:, :3]).numpy().astype(np.float64))
        vertices.append(surf.vertices)
        normals.append(surf.normals)
        faces.append(surf.faces + offset)
        offset += n
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.concatenate(vertices).astype(np.float64)),
                                     o3d.utility.Vector3iVector(np.concatenate(faces).astype(np.int32)))
    mesh.vertex_normals = o3d.utility.Vector3dVector(np.concatenate(normals).astype(np.float64))
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(np.concatenate(colours), 0.0, 1.0))
    if not o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=False):
        raise OSError(f"{path}: could not write the mesh")
