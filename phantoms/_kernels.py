"""Compiled inner loops (numba): disc packing, tube rasterisation, per-voxel signal sums.

Each kernel is deterministic: it draws no randomness except from the integer seed it is
given, and it visits segments in the order given, so a result never depends on threads or
on how a volume is cut into chunks.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def pack_discs(radii, region_radius, seed, max_tries, gap):  # pragma: no cover - compiled
    """Random sequential addition of discs (largest first) inside a disc of ``region_radius``.

    Returns centres (n, 2) and a bool array of which discs were placed.
    """
    np.random.seed(seed)  # noqa: NPY002 - numba-compiled: its own generator, seeded here
    n = radii.shape[0]
    centres = np.zeros((n, 2))
    placed = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return centres, placed
    rmax = radii.max()
    cell = 2.0 * rmax + gap
    ncell = int(math.ceil(2.0 * region_radius / cell)) + 1
    # cell lists as linked lists: head per cell, next per disc
    head = -np.ones((ncell, ncell), dtype=np.int64)
    nxt = -np.ones(n, dtype=np.int64)
    for i in range(n):
        r = radii[i]
        lim = region_radius - r
        if lim <= 0:
            continue
        for _ in range(max_tries):
            # uniform point in the disc of radius lim
            rr = lim * math.sqrt(np.random.random())  # noqa: NPY002
            ph = 2.0 * math.pi * np.random.random()  # noqa: NPY002
            x = rr * math.cos(ph)
            y = rr * math.sin(ph)
            cx = int((x + region_radius) / cell)
            cy = int((y + region_radius) / cell)
            ok = True
            for ax in range(max(cx - 1, 0), min(cx + 2, ncell)):
                if not ok:
                    break
                for ay in range(max(cy - 1, 0), min(cy + 2, ncell)):
                    j = head[ax, ay]
                    while j >= 0:
                        dx = centres[j, 0] - x
                        dy = centres[j, 1] - y
                        lim2 = r + radii[j] + gap
                        if dx * dx + dy * dy < lim2 * lim2:
                            ok = False
                            break
                        j = nxt[j]
                    if not ok:
                        break
            if ok:
                centres[i, 0] = x
                centres[i, 1] = y
                placed[i] = True
                nxt[i] = head[cx, cy]
                head[cx, cy] = i
                break
    return centres, placed


@njit(cache=True, nogil=True)
def _occupancy(rho, d, h):  # pragma: no cover - compiled
    """Anti-aliased fraction of a voxel of size ``h`` covered by a tube of radius ``rho`` at
    distance ``d``: a linear ramp of width ``h`` about radius ``max(rho, h/2)``, scaled so
    that its cross-section integral is exactly ``pi rho^2`` (a sub-voxel tube is drawn
    about a voxel wide with its area kept)."""
    if rho <= 0.0:
        return 0.0
    re = max(rho, 0.5 * h)
    v = (re - d) / h + 0.5
    if v <= 0.0:
        return 0.0
    if v > 1.0:
        v = 1.0
    return v * (rho * rho) / (re * re + h * h / 12.0)


@njit(cache=True, nogil=True, fastmath=True)
def rasterise_tubes(
    origin, shape, spacing, p0, p1, radius, inner_ratio, tube_id, seg_index
):  # pragma: no cover - compiled
    """Occupancy of tubes on a block of voxels.

    ``origin``: physical position (um) of the block's voxel (0, 0, 0) centre; ``shape``
    block shape; ``spacing`` (3,) um. Segments ``seg_index`` of ``p0``/``p1`` (n, 3) um
    with per-segment ``radius`` and ``inner_ratio`` (g-ratio or lumen ratio). Returns
    (outer, inner) float32 occupancies summed over segments. A voxel belongs to the
    segment onto whose half-open slab [p0, p1) it projects, so consecutive segments of a
    polyline never count a voxel twice (at a bend of angle a, a wedge of angle a is
    missed on the outside and doubled on the inside; a few degrees here). ``tube_id`` is
    kept for the signature's stability.
    """
    nx, ny, nz = shape[0], shape[1], shape[2]
    outer = np.zeros((nx, ny, nz), dtype=np.float32)
    inner = np.zeros((nx, ny, nz), dtype=np.float32)
    h = (spacing[0] + spacing[1] + spacing[2]) / 3.0
    for q in range(seg_index.shape[0]):
        s = seg_index[q]
        r = radius[s]
        ri = r * inner_ratio[s]
        ax0 = p0[s, 0]
        ay0 = p0[s, 1]
        az0 = p0[s, 2]
        dx = p1[s, 0] - ax0
        dy = p1[s, 1] - ay0
        dz = p1[s, 2] - az0
        L2 = dx * dx + dy * dy + dz * dz
        if L2 <= 0.0:
            continue
        reach = max(r, 0.5 * h) + 0.5 * h  # support of the occupancy ramp
        # bounding box of the capsule, in block voxel indices
        lo0 = int(math.floor((min(ax0, ax0 + dx) - reach - origin[0]) / spacing[0])) + 1
        hi0 = int(math.floor((max(ax0, ax0 + dx) + reach - origin[0]) / spacing[0]))
        lo1 = int(math.floor((min(ay0, ay0 + dy) - reach - origin[1]) / spacing[1])) + 1
        hi1 = int(math.floor((max(ay0, ay0 + dy) + reach - origin[1]) / spacing[1]))
        lo2 = int(math.floor((min(az0, az0 + dz) - reach - origin[2]) / spacing[2])) + 1
        hi2 = int(math.floor((max(az0, az0 + dz) + reach - origin[2]) / spacing[2]))
        if hi0 < 0 or hi1 < 0 or hi2 < 0 or lo0 >= nx or lo1 >= ny or lo2 >= nz:
            continue
        lo0 = max(lo0, 0)
        lo1 = max(lo1, 0)
        lo2 = max(lo2, 0)
        hi0 = min(hi0, nx - 1)
        hi1 = min(hi1, ny - 1)
        hi2 = min(hi2, nz - 1)
        L = math.sqrt(L2)
        ux, uy, uz = dx / L, dy / L, dz / L
        sz = spacing[2]
        qa = (1.0 - uz * uz) * sz * sz
        reach2 = reach * reach
        for i in range(lo0, hi0 + 1):
            awx = origin[0] + i * spacing[0] - ax0
            for j in range(lo1, hi1 + 1):
                awy = origin[1] + j * spacing[1] - ay0
                # squared distance to the line along the row is quadratic in k: only
                # visit the k interval where it is below reach^2
                awz = origin[2] - az0
                au = awx * ux + awy * uy + awz * uz
                qb = 2.0 * sz * (awz - au * uz)
                qc = awx * awx + awy * awy + awz * awz - au * au - reach2
                k0 = lo2
                k1 = hi2
                if qa > 1e-12 * sz * sz:
                    disc = qb * qb - 4.0 * qa * qc
                    if disc < 0.0:
                        continue
                    sq = math.sqrt(disc)
                    k0 = max(k0, int(math.ceil((-qb - sq) / (2.0 * qa))))
                    k1 = min(k1, int(math.floor((-qb + sq) / (2.0 * qa))))
                elif qc > 0.0:
                    continue
                for k in range(k0, k1 + 1):
                    wz = awz + k * sz
                    t = (awx * dx + awy * dy + wz * dz) / L2
                    if t < 0.0 or t >= 1.0:
                        continue
                    ex = awx - t * dx
                    ey = awy - t * dy
                    ez = wz - t * dz
                    d2 = ex * ex + ey * ey + ez * ez
                    if d2 >= reach2:
                        continue
                    d = math.sqrt(d2)
                    vo = _occupancy(r, d, h)
                    if vo > 0.0:
                        outer[i, j, k] += vo
                        vi = _occupancy(ri, d, h)
                        if vi > 0.0:
                            inner[i, j, k] += vi
    return outer, inner


@njit(cache=True, nogil=True)
def _splitmix(z):  # pragma: no cover - compiled
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (float(z >> np.uint64(11)) + 0.5) / 9007199254740992.0


@njit(cache=True, nogil=True)
def hashed_normal(origin, shape, full_shape, seed):  # pragma: no cover - compiled
    """Standard normal noise from a counter-based hash of (seed, global voxel index), so a
    voxel's noise does not depend on the chunk it is computed in."""
    out = np.empty((shape[0], shape[1], shape[2]), dtype=np.float32)
    key = np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
    for i in range(shape[0]):
        for j in range(shape[1]):
            base = ((origin[0] + i) * full_shape[1] + (origin[1] + j)) * full_shape[2] + origin[2]
            for k in range(shape[2]):
                lin = np.uint64(base + k) * np.uint64(2)
                u0 = _splitmix(lin ^ key)
                u1 = _splitmix((lin + np.uint64(1)) ^ key)
                out[i, j, k] = math.sqrt(-2.0 * math.log(u0)) * math.cos(2.0 * math.pi * u1)
    return out


@njit(cache=True)
def accumulate_voxels(
    p0, p1, radius, g_ratio, bundle, shape, voxel_um, n_bundles, bvals, bvecs, d_intra, powers
):  # pragma: no cover - compiled
    """Per dMRI voxel and bundle: fibre volume (um^3), intra-axonal volume, the volume-
    weighted scatter matrix of segment directions, and the intra-axonal stick signal
    (sum over segments of intra volume * exp(-b d_intra (g.u)^2)), unnormalised, and the
    volume-weighted moments sum(v x^a y^b z^c) for the exponent rows of ``powers``.

    A segment belongs to the voxel of its midpoint.
    """
    nx, ny, nz = shape[0], shape[1], shape[2]
    nv = nx * ny * nz
    ng = bvals.shape[0]
    fib = np.zeros((nv, n_bundles))
    intra = np.zeros(nv)
    scatter = np.zeros((nv, n_bundles, 3, 3))
    stick = np.zeros((nv, ng))
    npow = powers.shape[0]
    deg = powers.max()
    moments = np.zeros((nv, npow))
    px = np.empty(deg + 1)
    py = np.empty(deg + 1)
    pz = np.empty(deg + 1)
    vox = -np.ones(p0.shape[0], dtype=np.int64)
    for s in range(p0.shape[0]):
        mx = 0.5 * (p0[s, 0] + p1[s, 0])
        my = 0.5 * (p0[s, 1] + p1[s, 1])
        mz = 0.5 * (p0[s, 2] + p1[s, 2])
        i = int(math.floor(mx / voxel_um[0]))
        j = int(math.floor(my / voxel_um[1]))
        k = int(math.floor(mz / voxel_um[2]))
        if i < 0 or j < 0 or k < 0 or i >= nx or j >= ny or k >= nz:
            continue
        v = (i * ny + j) * nz + k
        dx = p1[s, 0] - p0[s, 0]
        dy = p1[s, 1] - p0[s, 1]
        dz = p1[s, 2] - p0[s, 2]
        L = math.sqrt(dx * dx + dy * dy + dz * dz)
        if L == 0.0:
            continue
        vox[s] = v
        ux, uy, uz = dx / L, dy / L, dz / L
        r = radius[s]
        vf = math.pi * r * r * L
        ri = r * g_ratio[s]
        vi = math.pi * ri * ri * L
        b = bundle[s]
        fib[v, b] += vf
        intra[v] += vi
        u = (ux, uy, uz)
        for a in range(3):
            for c in range(3):
                scatter[v, b, a, c] += vf * u[a] * u[c]
        for g in range(ng):
            cg = bvecs[g, 0] * ux + bvecs[g, 1] * uy + bvecs[g, 2] * uz
            stick[v, g] += vi * math.exp(-bvals[g] * d_intra * cg * cg)
        px[0] = 1.0
        py[0] = 1.0
        pz[0] = 1.0
        for e in range(1, deg + 1):
            px[e] = px[e - 1] * ux
            py[e] = py[e - 1] * uy
            pz[e] = pz[e - 1] * uz
        for q in range(npow):
            moments[v, q] += vf * px[powers[q, 0]] * py[powers[q, 1]] * pz[powers[q, 2]]
    return fib, intra, scatter, stick, vox, moments


@njit(cache=True)
def traversed_voxels(points, offsets, lengths, shape):  # pragma: no cover - compiled
    """Flat indices of the voxels each polyline passes through (voxel coordinates, voxel
    centres at integers, voxel ``floor(p + 0.5)``), the voxelisation of
    ``metrics.tractography``: the voxels of a segment's end points plus, at every voxel
    face ``x_a = k + 1/2`` it crosses, the two voxels on either side of the face (the other
    coordinates taken at the crossing). Voxels outside the grid are skipped.

    Returns ``(flat, counts)``: the voxels of polyline ``s`` (repeats included) are
    ``flat[sum(counts[:s]):sum(counts[:s + 1])]``.
    """
    nx, ny, nz = shape[0], shape[1], shape[2]
    out = np.empty(max(16, 8 * points.shape[0]), np.int64)
    counts = np.zeros(offsets.shape[0], np.int64)
    vox = np.empty(3, np.int64)
    n = 0
    for s in range(offsets.shape[0]):
        start = n
        for a in range(offsets[s], offsets[s] + max(lengths[s] - 1, 1)):
            # room for this segment's voxels: 2 ends + 2 per crossed face
            need = 2
            if lengths[s] > 1:
                for c in range(3):
                    need += 2 * abs(np.int64(math.floor(points[a + 1, c] + 0.5))
                                    - np.int64(math.floor(points[a, c] + 0.5)))
            if n + need > out.shape[0]:
                grown = np.empty(2 * out.shape[0] + need, np.int64)
                grown[:n] = out[:n]
                out = grown
            ends = 2 if lengths[s] > 1 else 1
            for end in range(ends):
                for c in range(3):
                    vox[c] = np.int64(math.floor(points[a + end, c] + 0.5))
                if 0 <= vox[0] < nx and 0 <= vox[1] < ny and 0 <= vox[2] < nz:
                    out[n] = (vox[0] * ny + vox[1]) * nz + vox[2]
                    n += 1
            if lengths[s] < 2:
                continue
            for axis in range(3):
                x0 = points[a, axis]
                x1 = points[a + 1, axis]
                v0 = np.int64(math.floor(x0 + 0.5))
                v1 = np.int64(math.floor(x1 + 0.5))
                for face in range(min(v0, v1), max(v0, v1)):
                    t = (face + 0.5 - x0) / (x1 - x0)
                    for c in range(3):
                        if c != axis:
                            q = points[a, c] + t * (points[a + 1, c] - points[a, c])
                            vox[c] = np.int64(math.floor(q + 0.5))
                    for side in range(2):
                        vox[axis] = face + side
                        if 0 <= vox[0] < nx and 0 <= vox[1] < ny and 0 <= vox[2] < nz:
                            out[n] = (vox[0] * ny + vox[1]) * nz + vox[2]
                            n += 1
        counts[s] = n - start
    return out[:n], counts


@njit(cache=True)
def clip_polylines(p0, p1, tube, use, voxel_um, shape, inset):  # pragma: no cover - compiled
    """Clip the segments of tubes to the grid's field of view, in dMRI voxel coordinates.

    Segments (``p0``, ``p1`` in um, grouped by tube and ordered along it; only those with
    ``use``) are mapped to voxel coordinates ``x / voxel_um - 0.5`` and clipped to the box
    [-0.5, n - 0.5] (Liang-Barsky). Consecutive clipped segments of one tube that join
    inside the box form a run (a polyline). All points are then clamped ``inset`` voxels
    inside the box.

    Returns ``points`` (P, 3), ``offsets`` (R,), ``lengths`` (R,), ``run_tube`` (R,).
    """
    n_seg = p0.shape[0]
    points = np.empty((2 * n_seg, 3))
    offsets = np.empty(n_seg, np.int64)
    run_tube = np.empty(n_seg, np.int64)
    a = np.empty(3)
    d = np.empty(3)
    n_pts = 0
    n_runs = 0
    open_run = False  # the previous segment ended inside and the run may go on
    prev = -1
    for s in range(n_seg):
        if not use[s]:
            open_run = False
            continue
        t0 = 0.0
        t1 = 1.0
        empty = False
        for c in range(3):
            a[c] = p0[s, c] / voxel_um[c] - 0.5
            d[c] = (p1[s, c] / voxel_um[c] - 0.5) - a[c]
            lo = -0.5
            hi = shape[c] - 0.5
            if d[c] == 0.0:
                if a[c] < lo or a[c] > hi:
                    empty = True
                continue
            ta = (lo - a[c]) / d[c]
            tb = (hi - a[c]) / d[c]
            if ta > tb:
                ta, tb = tb, ta
            t0 = max(t0, ta)
            t1 = min(t1, tb)
        if empty or not t0 < t1:
            open_run = False
            continue
        joined = (
            open_run and t0 == 0.0 and prev == s - 1 and tube[s] == tube[prev]
            and p0[s, 0] == p1[prev, 0] and p0[s, 1] == p1[prev, 1]
            and p0[s, 2] == p1[prev, 2]
        )
        if not joined:
            offsets[n_runs] = n_pts
            run_tube[n_runs] = tube[s]
            n_runs += 1
            for c in range(3):
                points[n_pts, c] = a[c] + t0 * d[c]
            n_pts += 1
        for c in range(3):
            points[n_pts, c] = a[c] + t1 * d[c]
        n_pts += 1
        open_run = t1 == 1.0
        prev = s
    points = points[:n_pts]
    for p in range(n_pts):
        for c in range(3):
            points[p, c] = min(max(points[p, c], -0.5 + inset), shape[c] - 0.5 - inset)
    offsets = offsets[:n_runs].copy()
    lengths = np.empty(n_runs, np.int64)
    for r in range(n_runs):
        end = offsets[r + 1] if r + 1 < n_runs else n_pts
        lengths[r] = end - offsets[r]
    return points, offsets, lengths, run_tube[:n_runs].copy()
