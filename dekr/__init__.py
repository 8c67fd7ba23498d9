"""dekr: bottom-up multi-person pose estimation with Disentangled Keypoint Regression."""

__version__ = "0.1.0"
