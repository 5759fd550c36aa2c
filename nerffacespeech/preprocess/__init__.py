"""Stage 1: raw talking-head data → aligned frames, mel features, 3DMM coefficients and poses.

Each step is a function usable on its own (`audio`, `images`, `landmarks`, `align`, `fit3dmm`,
`camera`, `video`); `task` runs them per clip as a sharded, resumable launcher task.
"""
