"""Fitted head pose → the camera of StyleNeRF (angular mode: yaw, pitch, radius; FOV 12°).

StyleNeRF keeps the head fixed and places the camera on a sphere around it, z up, looking at
the origin: position r·(sin φ cos θ, sin φ sin θ, cos φ); the frontal view is θ = φ = π/2.
The head's frame (BFM: x to the viewer's right, y up, z toward the camera) maps to StyleNeRF's
as (x, y, z) → (−x, z, y), a proper rotation. Radius is the camera distance relative to
Deep3DFaceRecon's nominal 10 units (1.0 = nominal).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bfm import CAMERA_DISTANCE

FOV_DEGREES = 12.0
_BFM_TO_STYLENERF = np.array([[-1.0, 0, 0], [0, 0, 1], [0, 1, 0]])


@dataclass(frozen=True)
class Poses:
    angles: np.ndarray       # (N, 3) yaw θ, pitch φ (radians), radius
    cam2world: np.ndarray    # (N, 4, 4) StyleNeRF's look-at camera-to-world matrices


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """(N, 3, 3) R = Rz·Ry·Rx, Deep3DFaceRecon's convention (numpy twin of FaceModel.rotation)."""
    x, y, z = np.asarray(angles, np.float64).T
    c, s = np.cos, np.sin
    one, zero = np.ones_like(x), np.zeros_like(x)
    rx = np.stack([one, zero, zero, zero, c(x), -s(x), zero, s(x), c(x)], -1).reshape(-1, 3, 3)
    ry = np.stack([c(y), zero, s(y), zero, one, zero, -s(y), zero, c(y)], -1).reshape(-1, 3, 3)
    rz = np.stack([c(z), -s(z), zero, s(z), c(z), zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def stylenerf_pose(angles: np.ndarray, trans: np.ndarray) -> Poses:
    """Camera yaw/pitch/radius and matrices equivalent to head rotation `angles` and `trans`."""
    rot = euler_to_matrix(angles)
    eye = np.array([0.0, 0.0, CAMERA_DISTANCE])
    in_head = np.einsum("nji,nj->ni", rot, eye[None] - np.asarray(trans, np.float64))   # Rᵀ(c − t)
    loc = in_head @ _BFM_TO_STYLENERF.T
    radius = np.linalg.norm(loc, axis=1)
    theta = np.arctan2(loc[:, 1], loc[:, 0])
    phi = np.arccos(np.clip(loc[:, 2] / radius, -1, 1))
    return Poses(np.stack([theta, phi, radius / CAMERA_DISTANCE], 1), look_at(loc))


def look_at(loc: np.ndarray) -> np.ndarray:
    """StyleNeRF's camera-to-world matrices for cameras at `loc` looking at the origin, z up."""
    z_axis = loc / np.linalg.norm(loc, axis=1, keepdims=True)
    x_axis = np.cross(np.array([0.0, 0.0, 1.0])[None], z_axis)
    x_axis /= np.linalg.norm(x_axis, axis=1, keepdims=True)
    y_axis = np.cross(z_axis, x_axis)
    out = np.tile(np.eye(4), (len(loc), 1, 1))
    out[:, :3, :3] = np.stack([x_axis, y_axis, z_axis], -1)
    out[:, :3, 3] = loc
    return out
