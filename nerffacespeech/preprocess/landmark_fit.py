"""Landmark-only 3DMM fitting by batched Levenberg-Marquardt: every frame of a clip at once.

Landmarks are linear in the identity and expression coefficients and smooth in the pose, so
Gauss-Newton steps (with the Jacobian written out: projection × rotation × basis) converge in a
few iterations where L-BFGS needs hundreds. The objective is
`fit3dmm`'s landmark loss with its priors, summed over frames. Two stages:

1. anchors: pose only, then everything with one identity shared by the anchors; the shared
   identity couples the frames, and the normal equations are solved through the Schur
   complement of the per-frame blocks (80 × 80 for the identity, 70 × 70 per frame);
2. every frame, identity frozen, started from the anchors' solutions interpolated over time;
   frames are independent, so this is one batched 70 × 70 solve per iteration.

Fixed iteration counts and per-frame accept/reject by `torch.where`: no host synchronisation,
so on a GPU a clip's frames run as a few hundred small batched kernels.
"""
from __future__ import annotations

import torch

from .bfm import CAMERA_DISTANCE, FOCAL_AT_224, MorphableModel

N_ID, N_EXP, N_POSE = 80, 64, 6
N_LOCAL = N_EXP + N_POSE        # per frame: exp | angles (3) | trans (3)


def euler_rotation(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R = Rz·Ry·Rx (x: pitch, y: yaw, z: roll) as `fit3dmm.FaceModel.rotation`, (..., 3, 3),
    and its derivatives with respect to the three angles, (..., 3, 3, 3) (last axis: angle)."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[..., 0]), torch.zeros_like(c[..., 0])
    shape = angles.shape[:-1] + (3, 3)
    m = lambda *rows: torch.stack(rows, -1).reshape(shape)
    cx, cy, cz, sx, sy, sz = c[..., 0], c[..., 1], c[..., 2], s[..., 0], s[..., 1], s[..., 2]
    rx, drx = m(one, zero, zero, zero, cx, -sx, zero, sx, cx), m(zero, zero, zero, zero, -sx, -cx, zero, cx, -sx)
    ry, dry = m(cy, zero, sy, zero, one, zero, -sy, zero, cy), m(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    rz, drz = m(cz, -sz, zero, sz, cz, zero, zero, zero, one), m(-sz, -cz, zero, cz, -sz, zero, zero, zero, zero)
    return rz @ ry @ rx, torch.stack([rz @ ry @ drx, rz @ dry @ rx, drz @ ry @ rx], -1)


class LandmarkProblem:
    """Weighted landmark residuals of frames and their Jacobians; priors are kept apart."""

    def __init__(self, model: MorphableModel, size: int, weights: torch.Tensor, w_landmark: float,
                 w_id: float, w_exp: float):
        kp = model.keypoints
        n = model.n_vertices
        self.mean = model.mean_shape[kp]                                       # (68, 3)
        self.id_base = model.id_base.reshape(n, 3, -1)[kp]                     # (68, 3, 80)
        self.exp_base = model.exp_base.reshape(n, 3, -1)[kp]                   # (68, 3, 64)
        self.size = size
        self.focal = FOCAL_AT_224 * size / 224
        scale = (w_landmark * 1e3 * weights.to(self.mean.device) / weights.sum()).sqrt() / size
        self.scale = scale[:, None].expand(-1, 2)                              # (68, 2)
        self.w_id, self.w_exp = w_id, w_exp

    def _world(self, local, ids):
        exp, angles, trans = local[:, :N_EXP], local[:, N_EXP:N_EXP + 3], local[:, N_EXP + 3:]
        verts = self.mean + torch.einsum("kjc,fc->fkj", self.id_base, ids) \
            + torch.einsum("kjc,fc->fkj", self.exp_base, exp)
        rot, d_rot = euler_rotation(angles)
        return verts, rot, d_rot, verts @ rot.transpose(1, 2) + trans[:, None, :]

    def _project(self, world):
        depth = CAMERA_DISTANCE - world[..., 2]
        x = self.focal * world[..., 0] / depth + self.size / 2
        y = -self.focal * world[..., 1] / depth + self.size / 2
        return torch.stack([x, y], -1), depth

    def landmarks(self, local: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(F, 68, 2) pixel positions for per-frame `local` (F, 70) and identities (F, 80)."""
        return self._project(self._world(local, ids)[3])[0]

    def residual(self, local, ids, target) -> torch.Tensor:
        """(F, 136) weighted landmark offsets."""
        return ((self.landmarks(local, ids) - target) * self.scale).reshape(len(local), -1)

    def cost(self, local, ids, target) -> torch.Tensor:
        """(F,) the objective per frame: landmark term and priors."""
        return self.residual(local, ids, target).pow(2).sum(-1) + self.w_exp * local[:, :N_EXP].pow(2).sum(-1) \
            + self.w_id * ids.pow(2).sum(-1)

    def linearize(self, local, ids, target):
        """Residuals (F, 136) and Jacobians w.r.t. local (F, 136, 70) and identity (F, 136, 80)."""
        verts, rot, d_rot, world = self._world(local, ids)
        pixels, depth = self._project(world)
        f = self.focal / depth                                                  # (F, 68)
        zero = torch.zeros_like(f)
        d_proj = torch.stack([torch.stack([f, zero, f * world[..., 0] / depth], -1),
                              torch.stack([zero, -f, -f * world[..., 1] / depth], -1)], -2)  # (F,68,2,3)
        d_proj = d_proj * self.scale[..., None]
        pr = d_proj @ rot[:, None]                                              # (F, 68, 2, 3)
        j_exp = torch.einsum("fkij,kjc->fkic", pr, self.exp_base)
        j_id = torch.einsum("fkij,kjc->fkic", pr, self.id_base)
        j_ang = torch.einsum("fkij,fjla,fkl->fkia", d_proj, d_rot, verts)
        jl = torch.cat([j_exp, j_ang, d_proj], -1)
        r = ((pixels - target) * self.scale).reshape(len(local), -1)
        return r, jl.reshape(len(local), -1, N_LOCAL), j_id.reshape(len(local), -1, N_ID)


class LevenbergMarquardt:
    """Batched LM over frames; `fit_anchors` shares the identity, `fit_frames` keeps it fixed."""

    def __init__(self, problem: LandmarkProblem):
        self.p = problem
        device = problem.mean.device
        self.prior_local = torch.cat([torch.full((N_EXP,), problem.w_exp, device=device),
                                      torch.zeros(N_POSE, device=device)])
        self.eye = torch.eye(N_LOCAL, device=device)

    def fit_anchors(self, local, id_, target, rigid_steps: int, steps: int):
        """Pose-only steps, then joint steps; returns (local (F, 70), id (80,))."""
        lam = torch.full((len(local),), 1e-3, device=local.device)
        pose = torch.zeros(N_LOCAL, device=local.device)
        pose[N_EXP:] = 1.0
        ids = id_.expand(len(local), -1)
        for _ in range(rigid_steps):
            local, lam = self._frame_step(local, ids, target, lam, mask=pose)
        lam_all = torch.full((), 1e-3, device=local.device)
        for _ in range(steps):
            local, id_, lam_all = self._joint_step(local, id_, target, lam_all)
        return local, id_

    def fit_frames(self, local, id_, target, steps: int) -> torch.Tensor:
        lam = torch.full((len(local),), 1e-3, device=local.device)
        ids = id_.expand(len(local), -1)
        for _ in range(steps):
            local, lam = self._frame_step(local, ids, target, lam)
        return local

    def _local_system(self, r, jl, local, lam):
        h = jl.transpose(1, 2) @ jl + torch.diag(self.prior_local)
        g = (jl.transpose(1, 2) @ r[..., None])[..., 0] + self.prior_local * local
        return h, g, h + (lam[..., None] * _diag(h) + 1e-9)[..., None] * self.eye

    def _frame_step(self, local, ids, target, lam, mask=None):
        r, jl, _ = self.p.linearize(local, ids, target)
        if mask is not None:            # frozen columns: zero gradient, so a zero step
            jl = jl * mask
        _, g, damped = self._local_system(r, jl, local, lam)
        if mask is not None:
            g = g * mask
        trial = local + torch.linalg.solve_ex(damped, -g)[0]
        better = self.p.cost(trial, ids, target) < self.p.cost(local, ids, target)
        return torch.where(better[:, None], trial, local), torch.where(better, lam * 0.3, lam * 10).clamp(1e-9, 1e9)

    def _joint_step(self, local, id_, target, lam):
        ids = id_.expand(len(local), -1)
        r, jl, ji = self.p.linearize(local, ids, target)
        _, gl, a = self._local_system(r, jl, local, lam.expand(len(local)))
        hli = jl.transpose(1, 2) @ ji
        hii = (ji.transpose(1, 2) @ ji).sum(0) + len(local) * self.p.w_id * torch.eye(N_ID, device=ji.device)
        gi = (ji.transpose(1, 2) @ r[..., None])[..., 0].sum(0) + len(local) * self.p.w_id * id_
        b = hii + torch.diag(lam * torch.diagonal(hii) + 1e-9)
        solved = torch.linalg.solve_ex(a, torch.cat([hli, gl[..., None]], -1))[0]  # A⁻¹ [Hli | gl]
        schur = b - (hli.transpose(1, 2) @ solved[..., :N_ID]).sum(0)
        rhs = -gi + (hli.transpose(1, 2) @ solved[..., N_ID:]).sum(0)[:, 0]
        d_id = torch.linalg.solve_ex(schur, rhs)[0]
        d_local = -(solved[..., N_ID] + solved[..., :N_ID] @ d_id)
        trial_local, trial_id = local + d_local, id_ + d_id
        better = self.p.cost(trial_local, trial_id.expand(len(local), -1), target).sum() \
            < self.p.cost(local, ids, target).sum()
        return (torch.where(better, trial_local, local), torch.where(better, trial_id, id_),
                torch.where(better, lam * 0.3, lam * 10).clamp(1e-9, 1e9))


def _diag(h: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(h, dim1=-2, dim2=-1)


def interpolate(anchors: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """(n, D) values at every frame, linear in the frame index between anchor frames."""
    if len(anchors) == 1:
        return values[:1].expand(n, -1).clone()
    frames = torch.arange(n, device=values.device, dtype=values.dtype)
    pos = anchors.to(values.device, values.dtype)
    right = torch.searchsorted(pos, frames).clamp(1, len(pos) - 1)
    left = right - 1
    t = ((frames - pos[left]) / (pos[right] - pos[left])).clamp(0, 1)[:, None]
    return values[left] * (1 - t) + values[right] * t
