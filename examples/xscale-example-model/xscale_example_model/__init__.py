"""An example XScale model plug-in: analytical Q-ball (Descoteaux et al. 2007) in 40 lines.

The normalised signal E(g) = S(g) / S0 is fitted with even spherical harmonics (with
Laplace-Beltrami regularisation); the Funk-Radon transform then turns its coefficient of
order l into the ODF's by the factor 2 pi P_l(0). It needs only numpy, scipy and dipy.
"""

import numpy as np
from dipy.reconst.shm import real_sh_descoteaux, sph_harm_ind_list
from scipy.special import eval_legendre


class ExampleQballFit:
    """SH coefficients (..., n_coeffs), dipy descoteaux07 with legacy=False."""

    def __init__(self, shm_coeff):
        self.shm_coeff = shm_coeff


class ExampleQballModel:
    """Analytical Q-ball ODF in even spherical harmonics."""

    name = "example-qball"
    # declared, not guessed; a plain dict, so this package does not import XScale
    capabilities = {"gives_odf": False, "gives_sh": True, "voxelwise": True}

    def __init__(self, *, sh_order_max=6, lambda_lb=0.006):
        self.sh_order_max = sh_order_max
        self.lambda_lb = lambda_lb

    def fit(self, data, gtab, *, mask=None):
        dwi = ~gtab.b0s_mask
        s0 = data[..., gtab.b0s_mask].mean(axis=-1, keepdims=True)
        signal = data[..., dwi]
        attenuation = np.divide(signal, s0, out=np.zeros_like(signal), where=s0 > 0)
        x, y, z = gtab.bvecs[dwi].T
        theta, phi = np.arccos(np.clip(z, -1, 1)), np.arctan2(y, x)
        basis, _, _ = real_sh_descoteaux(self.sh_order_max, theta, phi, legacy=False)
        _, l_values = sph_harm_ind_list(self.sh_order_max)
        penalty = self.lambda_lb * np.diag((l_values * (l_values + 1.0)) ** 2)
        solve = np.linalg.solve(basis.T @ basis + penalty, basis.T)  # (n_coeffs, n_dwi)
        funk_radon = 2 * np.pi * eval_legendre(l_values, 0.0)
        coeffs = (attenuation @ solve.T) * funk_radon
        if mask is not None:
            coeffs[~np.asarray(mask, dtype=bool)] = 0.0
        return ExampleQballFit(coeffs)
