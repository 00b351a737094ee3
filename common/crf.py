"""Fully connected CRF (Kraehenbuehl & Koltun) over an RGB image, via pydensecrf (pydensecrf2)."""

from __future__ import annotations

import numpy as np

from config import CrfConfig

# the kernels are declared once, as settings (config.CrfConfig: guide.crf, eval.crf); the old name
# stays for callers that import it from here (deeplab/inference.py)
CrfParams = CrfConfig


def dense_crf(image: np.ndarray, probabilities: np.ndarray, params: CrfConfig) -> np.ndarray:
    """Refine per-pixel class probabilities (K, H, W) on ``image`` (H, W, 3 uint8 RGB).

    Unaries are -log(p); ``params`` are the kernels (``cfg.guide.crf``, ``cfg.eval.crf``). Returns the
    CRF's marginals, float32 (K, H, W)."""
    import pydensecrf.densecrf as dcrf

    probabilities = np.asarray(probabilities, dtype=np.float32)
    num_labels, height, width = probabilities.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"CRF: image {image.shape[:2]} and probabilities {(height, width)} differ in size")
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).reshape(num_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=params.bilateral_compat,
    )
    marginals = crf.inference(params.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)
