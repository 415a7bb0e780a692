"""The linear algebra of the OBS sweep (docs/algorithms.md §1): a damped Hessian, the upper
Cholesky factor of its inverse, and CERWU's transformed problem ``(W H (H + μI)⁻¹, H + μI)``.

torch is imported by :func:`inverse_cholesky_upper` only (its Cholesky and triangular solve are
the fastest on the machine's cores); nothing else here needs it.
"""

from __future__ import annotations

import numpy as np

from ..format.errors import EncoderError


def damped_hessian(hessian: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """``hessian`` with dead inputs (zero diagonal) set to 1 and ``damping`` × its mean diagonal
    added to the diagonal; also returns the mask of dead inputs (their weights are set to 0)."""
    result = np.array(hessian, dtype=np.float64, copy=True)
    diagonal = np.diagonal(result).copy()
    dead = diagonal <= 0
    result[dead, :] = 0.0
    result[:, dead] = 0.0
    diagonal[dead] = 1.0
    alive = diagonal[~dead]
    mean_diagonal = float(alive.mean()) if alive.size else 1.0
    np.fill_diagonal(result, diagonal + damping * mean_diagonal)
    return result, dead


def inverse_cholesky_upper(hessian: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``hessian⁻¹`` (``hessian⁻¹ = Uᵀ U``); raises
    ``numpy.linalg.LinAlgError`` if the matrix is not positive definite.

    With ``J`` the reversal permutation and ``J H J = L Lᵀ``: ``H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J)`` and
    ``J L⁻¹ J`` is upper triangular, so one factorisation and one triangular inverse suffice
    (no explicit inverse of ``H``).
    """
    import torch  # here, not at the top: the encoder's data-free path runs without torch

    # a copy, not np.ascontiguousarray: a 1 x 1 view counts as contiguous and keeps its
    # negative strides, which torch refuses
    reversed_hessian = torch.from_numpy(hessian[::-1, ::-1].copy())
    lower, info = torch.linalg.cholesky_ex(reversed_hessian)
    if int(info) != 0:
        raise np.linalg.LinAlgError("not positive definite")
    identity = torch.eye(len(hessian), dtype=lower.dtype)
    inverse_lower = torch.linalg.solve_triangular(lower, identity, upper=False)
    return inverse_lower.numpy()[::-1, ::-1].copy()


def factor_with_retries(hessian: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray, float]:
    """Damp and factor ``hessian``: (damped Hessian, U, dead-input mask, damping used).

    Retries with 10× and 100× the damping before raising :class:`EncoderError`.
    """
    for attempt in (damping, damping * 10, damping * 100):
        damped, dead = damped_hessian(hessian, max(attempt, 1e-12))
        try:
            upper = inverse_cholesky_upper(damped)
        except np.linalg.LinAlgError:
            continue
        if np.all(np.isfinite(upper)) and np.all(np.diagonal(upper) > 0):
            return damped, upper, dead, attempt
    raise EncoderError(f"the Hessian is not positive definite even with {100 * damping:g} × its "
                       f"mean diagonal added; check the calibration data (NaN, too few samples?)")


def cerwu_transform(weights: np.ndarray, hessian: np.ndarray, mu: float,
                    eigen: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """The transformed problem of CERWU: ``(W H (H + μI)⁻¹, H + μI)``.

    For any ``Q``: ``½ (W−Q) H (W−Q)ᵀ + (μ/2) Q Qᵀ`` equals ``½ (W'−Q) H' (W'−Q)ᵀ`` plus a term
    that does not depend on ``Q`` (row by row), so the sweep on the transformed problem minimises
    distortion plus the quadratic part of the rate. ``eigen``, the eigendecomposition
    ``(values, vectors)`` of ``hessian``, makes the product two matrix products for any μ.
    """
    if eigen is None:
        eigen = np.linalg.eigh(hessian)
    return cerwu_target(weights, mu, eigen), cerwu_shifted_hessian(hessian, mu)


def cerwu_shifted_hessian(hessian: np.ndarray, mu: float) -> np.ndarray:
    """``H + μI``, the Hessian of CERWU's transformed problem (:func:`cerwu_transform`)."""
    return hessian + mu * np.eye(len(hessian))


def cerwu_target(weights: np.ndarray, mu: float, eigen: tuple[np.ndarray, np.ndarray]
                 ) -> np.ndarray:
    """``W H (H + μI)⁻¹`` from the eigendecomposition of ``H`` (:func:`cerwu_transform`); row
    by row, so a large layer is transformed a block of rows at a time."""
    values, vectors = eigen
    return ((weights @ vectors) * (values / (values + mu))) @ vectors.T
