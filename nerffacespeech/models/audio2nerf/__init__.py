"""audio2nerf (stage 3): audio encoder + expression head, LipaintNet, and the ray deformation that
moves the frozen StyleNeRF's sample points with the 3DMM mesh. Inference: `talking_head`."""
