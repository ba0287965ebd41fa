"""An example XScale model plug-in: the inverted, normalised signal as an fODF.

Diffusion is fastest along a fibre, so the attenuation E(g) = S(g) / S0 is lowest there;
1 - E(g), fitted with spherical harmonics, has its maxima along the fibres. A crude but
honest model: it shows the whole contract in forty lines and needs only numpy and dipy.
"""

import numpy as np
from dipy.reconst.shm import real_sh_descoteaux, sph_harm_ind_list


class InvertedSignalFit:
    """SH coefficients (..., n_coeffs), dipy descoteaux07 with legacy=False."""

    def __init__(self, shm_coeff):
        self.shm_coeff = shm_coeff


class InvertedSignalModel:
    """1 - S/S0 in even spherical harmonics, with Laplace-Beltrami regularisation."""

    name = "inverted-signal"
    # declared, not guessed; a plain dict, so this package does not import XScale
    capabilities = {"gives_odf": False, "gives_sh": True, "voxelwise": True}

    def __init__(self, *, sh_order_max=6, lambda_lb=0.006):
        self.sh_order_max = sh_order_max
        self.lambda_lb = lambda_lb

    def fit(self, data, gtab, *, mask=None):
        dwi = ~gtab.b0s_mask
        s0 = data[..., gtab.b0s_mask].mean(axis=-1, keepdims=True)
        attenuation = np.divide(data[..., dwi], s0, out=np.zeros_like(data[..., dwi]),
                                where=s0 > 0)
        x, y, z = gtab.bvecs[dwi].T
        theta, phi = np.arccos(np.clip(z, -1, 1)), np.arctan2(y, x)
        basis, _, _ = real_sh_descoteaux(self.sh_order_max, theta, phi, legacy=False)
        _, l_values = sph_harm_ind_list(self.sh_order_max)
        penalty = self.lambda_lb * np.diag((l_values * (l_values + 1.0)) ** 2)
        solve = np.linalg.solve(basis.T @ basis + penalty, basis.T)  # (n_coeffs, n_dwi)
        coeffs = (1.0 - attenuation) @ solve.T
        if mask is not None:
            coeffs[~np.asarray(mask, dtype=bool)] = 0.0
        return InvertedSignalFit(coeffs)
