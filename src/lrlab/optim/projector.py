"""One low-rank gradient projector with interchangeable bases (GaLore, Fira, DCT, FRUGAL).

A projector maps a gradient G (m×n) to a small R and back. The side follows galore-torch:
`std` projects the smaller dimension — m ≥ n: R = G·Qᵀ with Q (r×n) the top-r right singular
vectors, back = R·Q; m < n: R = Pᵀ·G with P (m×r) the top-r left singular vectors, back = P·R.
`reverse_std` swaps the two; `left`/`right` force one; `full` uses both: R = Pᵀ·G·Qᵀ.

Bases (what P/Q are, recomputed from the current gradient at each refresh):
- `svd`: exact, `torch.linalg.svd` in fp32 (galore-torch's choice; sign-identical to it).
- `eigh`: eigenvectors of the smaller Gram matrix (G·Gᵀ or Gᵀ·G): the same subspace as `svd`
  for a fraction of the cost, since only min(m,n)² is decomposed.
- `randomized`: range finder with `power_iters` power iterations and QR, then an SVD of the
  small projected matrix (Halko et al. 2011).
- `dct`: SVD-free (Modoranu et al. 2025): one orthonormal DCT-II matrix D per size
  (D[i, j] = √(2/n)·cos(π·i·(2j+1)/2n), row 0 scaled by √½), shared by all layers; a score S is
  formed from G, the r basis vectors with the largest ℓ1 score are kept, and only their int64
  indices are stored per layer. `dct_variant` picks the basis vectors, as the official
  `sim_type` does (ista-daslab-optimizers, fft_low_rank/dct_adamw.py `setup_Q` and
  fft_projector.py `compute_similarity_*`, read at commit 4c98e6e):
  - `matmul` (the official default): the *columns* of D (`Q = dct3_matrix(n)` is D itself;
    its columns are the DCT-III basis): S = G·D (right side) or Dᵀ·G (left side), Q = D[:, idx]ᵀ
    (P = D[:, idx]). S is the DCT-III of G's rows (columns), computed by the inverse of
    Makhoul's algorithm (`dct3_l1_scores`).
  - `makhoul`: the *rows* of D (the DCT-II frequencies; the official code then uses Dᵀ as Q):
    S = G·Dᵀ (or D·G), the DCT-II of G's rows (columns), Q = D[idx] (P = D[idx]ᵀ), computed by
    Makhoul's algorithm (`dct_l1_scores`).
  Both score by one real FFT per block of G; S itself is never formed.
- `random`: a seeded Gaussian matrix orthonormalised by QR.

The projector is stateless: bases live as tensors in the optimizer state under the keys in
`STATE_KEYS`, so checkpoints hold no Python objects.
"""

import math

import torch

SIDES = ("std", "reverse_std", "left", "right", "full")
BASES = ("svd", "eigh", "randomized", "dct", "random")
DCT_VARIANTS = ("matmul", "makhoul")
STATE_KEYS = ("proj_left", "proj_right", "proj_left_idx", "proj_right_idx")

_DCT_CACHE: dict[tuple[int, str, str], torch.Tensor] = {}


def dct_matrix(n: int, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II matrix: D[i, j] = √(2/n)·cos(π·i·(2j+1)/(2n)), row 0 scaled by √½."""
    return dct_basis(n, device, "makhoul")


def dct_basis(n: int, device: torch.device, variant: str) -> torch.Tensor:
    """The basis vectors of `variant` as the rows of one cached fp32 matrix: D (`makhoul`) or
    Dᵀ (`matmul`), so that selecting r of them is a row gather either way."""
    key = (n, str(device), variant)
    if key not in _DCT_CACHE:
        i = torch.arange(n, dtype=torch.float64).unsqueeze(1)
        j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
        d = math.sqrt(2.0 / n) * torch.cos(math.pi * i * (2 * j + 1) / (2 * n))
        d[0] *= math.sqrt(0.5)
        rows = d if variant == "makhoul" else d.T
        _DCT_CACHE[key] = rows.contiguous().to(device=device, dtype=torch.float32)
    return _DCT_CACHE[key]


_MAKHOUL_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
DCT_BLOCK = 1 << 17  # elements of G transformed at once: the working set stays in cache


def _makhoul(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Makhoul's reordering (x₀, x₂, x₄, …, x₅, x₃, x₁) and the scaled twiddles s_k·e^{−iπk/2n}
    for k = 0 … n//2 (s₀ = 1/√n, s_k = √(2/n): the orthonormal DCT-II's row scales)."""
    key = (n, str(device))
    if key not in _MAKHOUL_CACHE:
        order = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])
        k = torch.arange(n // 2 + 1, dtype=torch.float64)
        scale = torch.full_like(k, math.sqrt(2.0 / n))
        scale[0] = math.sqrt(1.0 / n)
        twiddle = (scale * torch.exp(-1j * math.pi * k / (2 * n))).to(torch.complex64)
        _MAKHOUL_CACHE[key] = order.to(device), twiddle.to(device)
    return _MAKHOUL_CACHE[key]


def dct_l1_scores(x: torch.Tensor, dim: int) -> torch.Tensor:
    """ℓ1 norm of every frequency of the orthonormal DCT-II of `x` along `dim`, summed over the
    other dimension: (D·x).abs().sum(1) for dim 0, (x·Dᵀ).abs().sum(0) for dim 1.

    Makhoul (1980): with v = x reordered along `dim` and V = FFT(v), the DCT-II is
    c_k = s_k·Re(V_k·e^{−iπk/2n}). For real x, V_{n−k} = conj(V_k), hence
    c_{n−k} = −s_k·Im(V_k·e^{−iπk/2n}) (k ≥ 1): one rfft (n//2+1 bins) times the scaled twiddle
    holds every frequency in its real and imaginary parts. `x` is transformed in blocks along
    the other dimension, in its own memory layout (no transpose), so no full-size temporary is
    allocated.
    """
    n = x.shape[dim]
    half = n // 2 + 1
    order, twiddle = _makhoul(n, x.device)
    twiddle = twiddle if dim == 1 else twiddle.unsqueeze(1)
    sums = torch.zeros(half, 2, device=x.device)
    for block in x.split(max(1, DCT_BLOCK // n), dim=1 - dim):
        spectrum = torch.fft.rfft(block.index_select(dim, order), dim=dim).mul_(twiddle)
        sums += torch.view_as_real(spectrum).abs().sum(dim=1 - dim)
    return torch.cat([sums[:, 0], sums[1:n - half + 1, 1].flip(0)])


_INVERSE_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _inverse_makhoul(n: int, device: torch.device) -> torch.Tensor:
    """The twiddles e^{iπk/2n}/s_k for k = 0 … n//2 that invert `_makhoul`'s scaling."""
    key = (n, str(device))
    if key not in _INVERSE_CACHE:
        k = torch.arange(n // 2 + 1, dtype=torch.float64)
        scale = torch.full_like(k, math.sqrt(n / 2.0))
        scale[0] = math.sqrt(n)
        _INVERSE_CACHE[key] = (scale * torch.exp(1j * math.pi * k / (2 * n))).to(torch.complex64).to(device)
    return _INVERSE_CACHE[key]


def dct3_l1_scores(x: torch.Tensor, dim: int) -> torch.Tensor:
    """ℓ1 norm of every output of the orthonormal DCT-III (Dᵀ, the inverse of the DCT-II) of `x`
    along `dim`, summed over the other dimension: (Dᵀ·x).abs().sum(1) for dim 0, (x·D).abs().sum(0)
    for dim 1.

    The inverse of Makhoul's algorithm: y = Dᵀ·c means D·y = c, i.e. y's unnormalised DCT-II is
    C_k = c_k/s_k. With V = FFT(v), v = y reordered as in `_makhoul`, the forward relation
    e^{−iπk/2n}·V_k = C_k − i·C_{n−k} (C_n = 0) gives V_k = e^{iπk/2n}/s_k·(c_k − i·c_{n−k}) for
    k ≤ n//2 (s_k = s_{n−k} for k ≥ 1), v = irfft(V) and y[order] = v. Blocked along the other
    dimension like `dct_l1_scores`.
    """
    n = x.shape[dim]
    half = n // 2 + 1
    order, _ = _makhoul(n, x.device)
    twiddle = _inverse_makhoul(n, x.device)
    twiddle = twiddle if dim == 1 else twiddle.unsqueeze(1)
    sums = torch.zeros(n, device=x.device)
    for block in x.split(max(1, DCT_BLOCK // n), dim=1 - dim):
        mirrored = block.narrow(dim, n - half + 1, half - 1).flip(dim).neg()
        imaginary = torch.cat([torch.zeros_like(block.narrow(dim, 0, 1)), mirrored], dim=dim)
        spectrum = torch.complex(block.narrow(dim, 0, half).float(), imaginary.float()).mul_(twiddle)
        sums += torch.fft.irfft(spectrum, n, dim=dim).abs().sum(dim=1 - dim)
    return torch.empty_like(sums).index_copy_(0, order, sums)


def resolve_side(shape: torch.Size, proj_type: str) -> str:
    """`left`, `right` or `full` for a gradient of this shape."""
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def _top_left(grad: torch.Tensor, rank: int, basis: str, generator: torch.Generator | None,
              power_iters: int) -> torch.Tensor:
    """An m×r orthonormal basis of the dominant column space of `grad` (m×n)."""
    if basis == "svd":
        return torch.linalg.svd(grad, full_matrices=False)[0][:, :rank]
    if basis == "eigh":
        _, vectors = torch.linalg.eigh(grad @ grad.T)
        return vectors[:, -rank:].flip(1)
    if basis == "randomized":
        sketch = torch.randn(grad.shape[1], min(rank + 8, grad.shape[1]), generator=generator,
                             device="cpu").to(grad.device)
        q = torch.linalg.qr(grad @ sketch)[0]
        for _ in range(power_iters):
            q = torch.linalg.qr(grad @ torch.linalg.qr(grad.T @ q)[0])[0]
        small_u = torch.linalg.svd(q.T @ grad, full_matrices=False)[0]
        return q @ small_u[:, :rank]
    gaussian = torch.randn(grad.shape[0], rank, generator=generator, device="cpu").to(grad.device)
    return torch.linalg.qr(gaussian)[0]


def _top_dct(grad: torch.Tensor, rank: int, side: str, variant: str) -> torch.Tensor:
    """Indices of the r DCT basis vectors with the largest ℓ1 score over G's rows (right side)
    or columns (left side)."""
    transform = dct3_l1_scores if variant == "matmul" else dct_l1_scores
    scores = transform(grad, 1 if side == "right" else 0)
    return torch.topk(scores, rank, sorted=True).indices


def refresh(grad: torch.Tensor, rank: int, proj_type: str, basis: str, seed: int = 0,
            power_iters: int = 2, dct_variant: str = "matmul") -> dict[str, torch.Tensor]:
    """New basis tensors for `grad` (computed in fp32), keyed as in the optimizer state."""
    grad = grad.float()
    side = resolve_side(grad.shape, proj_type)
    generator = torch.Generator().manual_seed(seed) if basis in ("randomized", "random") else None
    new = {}
    if side in ("left", "full"):
        if basis == "dct":
            new["proj_left_idx"] = _top_dct(grad, rank, "left", dct_variant)
        else:
            new["proj_left"] = _top_left(grad, rank, basis, generator, power_iters).contiguous()
    if side in ("right", "full"):
        if basis == "dct":
            new["proj_right_idx"] = _top_dct(grad, rank, "right", dct_variant)
        elif basis == "svd":  # Vh of the same SVD as galore-torch, so signs match it exactly
            new["proj_right"] = torch.linalg.svd(grad, full_matrices=False)[2][:rank].contiguous()
        else:
            new["proj_right"] = _top_left(grad.T, rank, basis, generator, power_iters).T.contiguous()
    return new


def matrices(state: dict, shape: torch.Size, dct_variant: str = "matmul",
             rows: slice = slice(None)) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(P m×r or None, Q r×n or None) from the stored basis; P's rows `rows` only, for a gradient
    sharded by rows (a stored P holds just those rows already). DCT basis vectors are gathered at
    the stored indices on every call (an r×n copy, ~2 µs for r=64, n=256: not worth a cache)."""
    left, right = state.get("proj_left"), state.get("proj_right")
    if "proj_left_idx" in state:
        idx = state["proj_left_idx"]
        left = dct_basis(shape[0], idx.device, dct_variant).index_select(0, idx)[:, rows].T
    if "proj_right_idx" in state:
        idx = state["proj_right_idx"]
        right = dct_basis(shape[1], idx.device, dct_variant).index_select(0, idx)
    return left, right


def project(grad: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    low = grad if left is None else left.T @ grad
    return low if right is None else low @ right.T


def project_back(low: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    full = low if left is None else left @ low
    return full if right is None else full @ right


def back_factors(low: torch.Tensor, left: torch.Tensor | None,
                 right: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A·B = project_back(low): one matrix product, to fuse into an addmm."""
    if left is None:
        return low, right
    return (left, low) if right is None else (left @ low, right)


def state_bytes_formula(shape: torch.Size, rank: int, proj_type: str, basis: str) -> int:
    """Analytic optimizer-state bytes of one projected fp32 weight: two low-rank moments and
    the basis (fp32 matrix, or int64 indices for `dct`)."""
    m, n = shape
    side = resolve_side(shape, proj_type)
    low = (rank * rank if side == "full" else rank * (n if side == "left" else m))
    basis_bytes = 0
    for present, length in ((side in ("left", "full"), m), (side in ("right", "full"), n)):
        if present:
            basis_bytes += rank * 8 if basis == "dct" else rank * length * 4
    return 2 * low * 4 + basis_bytes
