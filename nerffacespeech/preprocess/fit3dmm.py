"""Fit Deep3DFaceRecon's 257 BFM09 coefficients to the aligned frames of a clip.

Geometry, texture, Euler rotation (R = Rz·Ry·Rx), camera (10 units away, focal 1015 at 224 px)
and 9-band SH lighting follow Deep3DFaceRecon, so coefficients are interchangeable with its and
SadTalker's. Fitting follows 3DMM-Fitting-Pytorch's plan, batched:

1. anchors: up to `batch_frames` frames spread over the clip; a rigid stage (rotation and
   translation) then a non-rigid stage (all coefficients) with identity and texture shared by
   all frames;
2. every frame, identity and texture frozen, started from the anchors' solutions interpolated
   over time (a warm start that needs no frame before it, so batches are independent).

Solvers: `lm` (landmarks and priors only; batched Levenberg-Marquardt, `landmark_fit`) or
`lbfgs` (L-BFGS with strong Wolfe line search; needed for the skin-masked photometric loss).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nerffacespeech.configs.preprocess import FitConfig
from nerffacespeech.data.processed import COEFF_SLICES

from . import bfm, landmark_fit, render, renderers
from .bfm import MorphableModel

# Deep3DFaceRecon's loss weights (landmarks, photometric, priors) and landmark emphasis.
W_LANDMARK, W_PHOTO, W_ID, W_EXP, W_TEX, W_GAMMA = 1.0, 1.92e-3, 1e-4, 0.8e-4, 1.7e-6, 1e-2
LANDMARK_WEIGHTS = torch.ones(68)
LANDMARK_WEIGHTS[28:31] = 20.0          # nose ridge
LANDMARK_WEIGHTS[-8:] = 20.0            # inner lips
# Adam's step sizes in the photometric refinement, relative to `photometric_lr`: expression and
# texture are unit-variance PCA weights and lighting SH weights; angles (radians) and translation
# (BFM units) move a whole face, so they take a tenth.
ADAM_LR_SCALE = {"exp": 1.0, "tex": 1.0, "gamma": 1.0, "angles": 0.1, "trans": 0.1}
SH_INIT = torch.tensor([0.8, 0, 0, 0, 0, 0, 0, 0, 0])


class FaceModel:
    """The morphable model as differentiable functions of coefficients; `rasterizer` renders it
    (`renderers.choose`; default: the pure-PyTorch one)."""

    def __init__(self, model: MorphableModel, size: int, rasterizer=None):
        self.m = model
        self.size = size
        self.focal = bfm.FOCAL_AT_224 * size / 224
        self.rasterizer = rasterizer if rasterizer is not None else render.TorchRasterizer()

    def shape(self, id_: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        offset = id_ @ self.m.id_base.T + exp @ self.m.exp_base.T
        return self.m.mean_shape + offset.reshape(len(offset), -1, 3)

    def texture(self, tex: torch.Tensor) -> torch.Tensor:
        return self.m.mean_tex + (tex @ self.m.tex_base.T).reshape(len(tex), -1, 3)

    @staticmethod
    def rotation(angles: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) R = Rz·Ry·Rx from Euler angles (x: pitch, y: yaw, z: roll), radians."""
        return landmark_fit.euler_rotation(angles)[0]

    def to_screen(self, vertices: torch.Tensor, angles: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) pixel x, pixel y (down), and distance from the camera (pinhole, principal point
        at the centre)."""
        world = vertices @ self.rotation(angles).transpose(1, 2) + trans[:, None, :]
        depth = bfm.CAMERA_DISTANCE - world[..., 2]
        f, c = self.focal, self.size / 2
        return torch.stack([f * world[..., 0] / depth + c, -f * world[..., 1] / depth + c, depth], -1)

    def normals(self, vertices: torch.Tensor) -> torch.Tensor:
        tri = self.m.triangles
        a, b, c = vertices[:, tri[:, 0]], vertices[:, tri[:, 1]], vertices[:, tri[:, 2]]
        face_n = torch.nn.functional.normalize(torch.cross(a - b, b - c, dim=-1), dim=-1)
        face_n = torch.cat([face_n, torch.zeros_like(face_n[:, :1])], 1)       # index F: padding
        buf = torch.where(self.m.point_buf < 0, torch.full_like(self.m.point_buf, tri.shape[0]), self.m.point_buf)
        return torch.nn.functional.normalize(face_n[:, buf].sum(2), dim=-1)

    def shade(self, texture: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor,
              angles: torch.Tensor) -> torch.Tensor:
        """Vertex colours: texture × 9-band spherical-harmonics irradiance (Deep3DFaceRecon's)."""
        n = normals @ self.rotation(angles).transpose(1, 2)
        x, y, z = n.unbind(-1)
        a0, a1, a2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
        c0, c1, c2 = 1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), \
            3 * math.sqrt(5.0) / math.sqrt(12 * math.pi)
        basis = torch.stack([
            torch.full_like(x, a0 * c0), -a1 * c1 * y, a1 * c1 * z, -a1 * c1 * x, a2 * c2 * x * y,
            -a2 * c2 * y * z, 0.5 * a2 * c2 / math.sqrt(3.0) * (3 * z ** 2 - 1), -a2 * c2 * x * z,
            0.5 * a2 * c2 * (x ** 2 - y ** 2)], -1)                             # (B, N, 9)
        light = gamma.reshape(len(gamma), 3, 9) + SH_INIT.to(gamma.device)
        return texture * torch.einsum("bnk,bck->bnc", basis, light)

    def landmarks(self, coeffs: dict[str, torch.Tensor]) -> torch.Tensor:
        verts = self.shape(coeffs["id"], coeffs["exp"])[:, self.m.keypoints]
        return self.to_screen(verts, coeffs["angles"], coeffs["trans"])[..., :2]

    def render(self, coeffs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, S, 3) image in [0, 1] and (B, S, S) skin coverage of the rendered face."""
        verts = self.shape(coeffs["id"], coeffs["exp"])
        screen = self.to_screen(verts, coeffs["angles"], coeffs["trans"])
        colour = self.shade(self.texture(coeffs["tex"]), self.normals(verts), coeffs["gamma"], coeffs["angles"])
        skin = self.m.skin_mask[None, :, None].expand(len(verts), -1, 1)
        attrs, tri_id = self.rasterizer(screen, self.m.triangles, self.size, torch.cat([colour, skin], -1))
        return attrs[..., :3], attrs[..., 3] * (tri_id >= 0)

    def photometric_error(self, coeffs: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """(B,) mean colour distance (RGB in [0, 1]) over the rendered skin, Deep3DFaceRecon's
        photometric term, for (B, S, S, 3) images."""
        rendered, skin = self.render(coeffs)
        diff = (rendered - images).norm(dim=-1) * skin
        return diff.sum((1, 2)) / skin.sum((1, 2)).clamp(min=1)


@dataclass
class FitResult:
    coeffs: np.ndarray           # (N, 257)
    landmark_error: np.ndarray   # (N,) mean landmark distance in pixels at the fitting size


class ClipFitter:
    """Fits every frame of a clip; one instance serves many clips."""

    def __init__(self, model: MorphableModel, cfg: FitConfig, device: str = "cpu"):
        self.device = torch.device(device)
        self.cfg = cfg
        rasterizer = renderers.choose(cfg.renderer, self.device) if cfg.photometric else None
        self.face = FaceModel(model.to(self.device), cfg.fit_size, rasterizer)
        self.photometric = cfg.photometric

    def fit(self, crops: np.ndarray, landmarks: np.ndarray) -> FitResult:
        """Coefficients for (N, S, S, 3) uint8 crops with (N, 68, 2) landmarks in their pixels."""
        target = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32, device=self.device)
        n = len(target)
        anchors = torch.as_tensor(np.unique(np.linspace(0, n - 1, min(n, self.cfg.batch_frames)).round()),
                                  dtype=torch.int64, device=self.device)
        images = lambda: torch.as_tensor(crops, device=self.device).float() / 255.0
        if self.cfg.solver == "lm":
            full = self._fit_lm(anchors, target)
            if self.photometric:
                full = self._refine_photometric(full, anchors, images(), target)
        else:
            full = self._fit_lbfgs(anchors, images(), target)
        with torch.no_grad():
            error = (self.face.landmarks(full) - target).norm(dim=-1).mean(-1)
        coeffs = torch.cat([full[k] for k in COEFF_SLICES], dim=1)
        return FitResult(coeffs.cpu().numpy(), error.cpu().numpy())

    def _fit_lm(self, anchors, target) -> dict[str, torch.Tensor]:
        """Levenberg-Marquardt on landmarks: anchors jointly, then all frames at once."""
        n, steps = len(target), self.cfg.lm_steps
        problem = landmark_fit.LandmarkProblem(self.face.m, self.face.size, LANDMARK_WEIGHTS, W_LANDMARK, W_ID, W_EXP)
        solver = landmark_fit.LevenbergMarquardt(problem)
        local = torch.zeros(len(anchors), landmark_fit.N_LOCAL, device=self.device)
        local, id_ = solver.fit_anchors(local, torch.zeros(80, device=self.device), target[anchors],
                                        max(1, steps // 4), steps)
        local = solver.fit_frames(landmark_fit.interpolate(anchors, local, n), id_, target, max(1, steps // 2))
        zeros = lambda width: torch.zeros(n, width, device=self.device)
        return {"id": id_.expand(n, -1), "exp": local[:, :64], "tex": zeros(80), "angles": local[:, 64:67],
                "gamma": zeros(27), "trans": local[:, 67:]}

    def _refine_photometric(self, start, anchors, images, target) -> dict[str, torch.Tensor]:
        """The landmark fit refined with the full loss (landmarks, skin-masked photometric term,
        priors) by Adam, which runs without host round trips: texture and lighting on the anchors
        with the geometry held, then each frame's expression, pose and lighting, identity and
        texture frozen, `photometric_batch` frames at a time."""
        n = len(target)
        appearance = {"tex": torch.zeros(1, 80, device=self.device, requires_grad=True),
                      "gamma": torch.zeros(len(anchors), 27, device=self.device, requires_grad=True)}
        held = {k: start[k][anchors] for k in ("id", "exp", "angles", "trans")}
        self._adam({**held, **appearance}, appearance, images[anchors], target[anchors],
                   self.cfg.appearance_steps)
        full = {"id": start["id"], "tex": appearance["tex"].detach().expand(n, -1),
                "gamma": landmark_fit.interpolate(anchors, appearance["gamma"].detach(), n)}
        full.update({k: start[k].clone() for k in ("exp", "angles", "trans")})
        for first in range(0, n, self.cfg.photometric_batch):
            frames = slice(first, min(first + self.cfg.photometric_batch, n))
            free = {k: full[k][frames].clone().requires_grad_(True) for k in ("exp", "angles", "trans", "gamma")}
            self._adam({"id": full["id"][frames], "tex": full["tex"][frames], **free}, free, images[frames],
                       target[frames], self.cfg.photometric_steps)
            for k, v in free.items():
                full[k][frames] = v.detach()
        return full

    def _adam(self, coeffs, free, images, target, steps):
        """`steps` Adam steps on the tensors of `free` (each a step size of its own scale)."""
        if steps == 0:
            return
        opt = torch.optim.Adam([{"params": [v], "lr": ADAM_LR_SCALE[k] * self.cfg.photometric_lr}
                                for k, v in free.items()], foreach=True)
        weights = LANDMARK_WEIGHTS.to(self.device)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            expanded = {k: v.expand(len(target), -1) for k, v in coeffs.items()}
            self._loss(expanded, images, target, weights, photometric=True).backward()
            opt.step()

    def _fit_lbfgs(self, anchors, images, target) -> dict[str, torch.Tensor]:
        """L-BFGS: rigid and non-rigid on the anchors, then batches of frames, identity frozen."""
        n = len(target)
        params = self._init(len(anchors))
        self._optimise(params, ("angles", "trans"), images[anchors], target[anchors], self.cfg.rigid_steps,
                       photometric=False)
        self._optimise(params, ("id", "exp", "tex", "angles", "trans", "gamma"), images[anchors],
                       target[anchors], self.cfg.nonrigid_steps, photometric=self.photometric)
        shared = {k: params[k][:1].detach() for k in ("id", "tex")}
        per_frame = {k: landmark_fit.interpolate(anchors, params[k].detach(), n)
                     for k in ("exp", "angles", "trans", "gamma")}
        for start in range(0, n, self.cfg.batch_frames):
            frames = torch.arange(start, min(start + self.cfg.batch_frames, n), device=self.device)
            batch = {k: v[frames].clone().requires_grad_(True) for k, v in per_frame.items()}
            batch.update({k: v.expand(len(frames), -1) for k, v in shared.items()})
            self._optimise(batch, ("exp", "angles", "trans", "gamma"), images[frames], target[frames],
                           self.cfg.warm_steps, photometric=self.photometric)
            for k in per_frame:
                per_frame[k][frames] = batch[k].detach()
        return {**{k: v.expand(n, -1) for k, v in shared.items()}, **per_frame}

    def _init(self, count: int) -> dict[str, torch.Tensor]:
        z = lambda width, rows=count: torch.zeros(rows, width, device=self.device, requires_grad=True)
        return {"id": z(80, 1), "tex": z(80, 1), "exp": z(64), "angles": z(3), "trans": z(3), "gamma": z(27)}

    def _optimise(self, params, names, images, target, steps, photometric):
        """L-BFGS with strong-Wolfe line search: these are small smooth least-squares problems."""
        if steps == 0:
            return
        opt = torch.optim.LBFGS([params[k] for k in names], lr=1.0, max_iter=steps, history_size=20,
                                tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        weights = LANDMARK_WEIGHTS.to(self.device)

        def closure():
            opt.zero_grad(set_to_none=True)
            coeffs = {k: v.expand(len(target), -1) for k, v in params.items()}
            loss = self._loss(coeffs, images, target, weights, photometric)
            loss.backward()
            return loss

        opt.step(closure)

    def _loss(self, coeffs, images, target, weights, photometric):
        size = self.face.size
        residual = ((self.face.landmarks(coeffs) - target) / size).pow(2).sum(-1)
        loss = W_LANDMARK * 1e3 * (residual * weights).sum(-1).mean() / weights.sum()
        loss = loss + W_ID * coeffs["id"].pow(2).sum(-1).mean() + W_EXP * coeffs["exp"].pow(2).sum(-1).mean() \
            + W_TEX * coeffs["tex"].pow(2).sum(-1).mean()
        if photometric:
            loss = loss + W_PHOTO * 1e3 * self.face.photometric_error(coeffs, images).mean()
            gamma = coeffs["gamma"].reshape(-1, 3, 9)
            loss = loss + W_GAMMA * (gamma - gamma.mean(1, keepdim=True)).pow(2).mean()
        return loss
