"""Geometry: camera models, rigid transforms, depth maps (see CONVENTIONS.md)."""

from endo3d.geometry.camera import DIST_LENGTHS, Camera, CameraModel, pixel_grid, project, unproject
from endo3d.geometry.depth import (
    depth_to_normals,
    depth_to_points,
    depth_to_points_from_rays,
    reproject,
    sample_image,
)
from endo3d.geometry.se3 import (
    axis_angle_to_matrix,
    compose,
    interpolate_pose,
    invert_pose,
    is_valid_pose,
    look_at,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    pose_from_rt,
    pose_problems,
    quaternion_to_matrix,
    relative_pose,
    transform_points,
)

__all__ = [
    "DIST_LENGTHS",
    "Camera",
    "CameraModel",
    "axis_angle_to_matrix",
    "compose",
    "depth_to_normals",
    "depth_to_points",
    "depth_to_points_from_rays",
    "interpolate_pose",
    "invert_pose",
    "is_valid_pose",
    "look_at",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "pixel_grid",
    "pose_from_rt",
    "pose_problems",
    "project",
    "quaternion_to_matrix",
    "relative_pose",
    "reproject",
    "sample_image",
    "transform_points",
    "unproject",
]
