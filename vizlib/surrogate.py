"""Model-agnostic surrogates: fit a simple model to a black box's answers (survey §2.1.6).

The image is cut into M segments (superpixels or a grid: `segments`, an integer map [H, W] or
[N, H, W] with labels 0..M-1). A coalition z ∈ {0, 1}^M keeps the segments with z_j = 1 and switches
the others off, filling them with `baseline` (a number, a tensor, or a fill of `perturbation.fill`):
the image h_x(z). The black box answers f_c(h_x(z)) for many coalitions, and a linear model in z,

    g(z) = φ_0 + Σ_j φ_j z_j,                                             survey Eq. (37),

is fitted to the answers. LIME weights the coalitions by their closeness to the full image; Kernel
SHAP weights them so that the fit gives the Shapley values of the game v(S) = f_c(h_x(1_S)).
`model` may be any callable mapping images [B, C, H, W] to scores [B, K]; the perturbed images are
made chunk by chunk and forwarded `batch_size` at a time (`mechanics.scores_in_batches`).
`gradient_shap` and `deep_shap` are the gradient-based SHAP variants and need a differentiable
model. Chapter: book/07_surrogates.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .backprop import _input_gradient
from .mechanics import batches, check_input, check_target, preserved, scores_in_batches
from .perturbation import _check_segments, _remover, _scores_and_target

__all__ = [
    "SegmentAttribution",
    "lime",
    "kernel_shap",
    "shapley_exact",
    "shapley_values",
    "gradient_shap",
    "deep_shap",
    "segment_probe",
    "lime_kernel",
    "shapley_kernel",
    "shapley_coalitions",
    "REGRESSORS",
    "MAX_EXACT_SEGMENTS",
]

REGRESSORS = ("ridge", "lasso")
MAX_EXACT_SEGMENTS = 16   # 2^16 = 65 536 forward passes per image


@dataclass
class SegmentAttribution:
    """What `lime`, `kernel_shap` and `shapley_exact` return.

    weights: φ_1..φ_M per image [N, M]; intercept: φ_0 [N]; map: each pixel painted with its
    segment's weight [N, 1, H, W]; score: the weighted R² of the fit [N] (1 for exact values);
    masks: the coalitions used [S, M] (1 keeps a segment), to inject them again with `masks=`.
    """

    weights: torch.Tensor
    intercept: torch.Tensor
    map: torch.Tensor
    score: torch.Tensor
    masks: torch.Tensor


# --- coalitions and their scores ------------------------------------------------------------------

def _segment_maps(segments, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`segments` as a LongTensor [N, H, W] in which every image uses each label 0..M-1; and M."""
    segments = _check_segments(segments, x)
    count = int(segments.max()) + 1
    present = torch.zeros(len(segments), count, dtype=torch.bool, device=x.device)
    present.scatter_(1, segments.flatten(1), True)
    if not present.all():
        image, label = (~present).nonzero()[0].tolist()
        raise ValueError(f"segments: label {label} has no pixels in image {image}; labels must be 0..{count - 1} "
                         "with none empty (relabel, e.g. with skimage.segmentation.relabel_sequential)")
    return segments, count


def _check_masks(masks, count: int) -> torch.Tensor:
    masks = torch.as_tensor(masks)
    if masks.dim() != 2 or masks.shape[1] != count or len(masks) == 0:
        raise ValueError(f"masks: expected a 0/1 tensor [S, {count}] (one column per segment), got shape "
                         f"{tuple(masks.shape)}")
    if not ((masks == 0) | (masks == 1)).all():
        raise ValueError("masks: expected only 0 and 1 (1 keeps a segment, 0 switches it off)")
    return masks.long().cpu()


def _check_count(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _coalition_scores(model, x, target, segments, masks, *, baseline, softmax, seed, batch_size, progress,
                      description) -> torch.Tensor:
    """f_c(h_x(z)) for every coalition z (the rows of `masks` [S, M]) and image: [S, N] in float64.

    Copy k·N + i is coalition k on image i; the pixels of the switched-off segments get `baseline`.
    """
    n, (height, width) = x.shape[0], x.shape[-2:]
    remove = _remover(x, baseline, seed)
    keep = masks.to(device=x.device, dtype=torch.bool)
    labels = segments.flatten(1)

    def perturbed(chunk: slice) -> torch.Tensor:
        items = torch.arange(chunk.start, chunk.stop, device=x.device)
        kept = keep[items // n].gather(1, labels[items % n]).view(-1, 1, height, width)
        return remove(items % n, ~kept)

    scores = scores_in_batches(model, len(masks) * n, perturbed, target.repeat(len(masks)), batch_size=batch_size,
                               softmax=softmax, progress=progress, description=description)
    return scores.view(len(masks), n).to(device=x.device, dtype=torch.float64)


def _result(weights, intercept, score, masks, segments, x) -> SegmentAttribution:
    weights = weights.to(x.dtype)
    painted = weights.gather(1, segments.flatten(1)).view(len(x), 1, *x.shape[-2:])
    return SegmentAttribution(weights, intercept.to(x.dtype), painted, score.to(x.dtype), masks)


# --- weighted fits --------------------------------------------------------------------------------

def _weighted_r2(values, fitted, sample_weights) -> torch.Tensor:
    """1 − Σ π (y − ŷ)² / Σ π (y − ȳ_π)² per column of `values` [S, N] (scikit-learn's `score`)."""
    mean = sample_weights @ values / sample_weights.sum()
    residual = sample_weights @ (values - fitted) ** 2
    spread = sample_weights @ (values - mean) ** 2
    return torch.where(spread > 0, 1 - residual / spread.clamp(min=torch.finfo(spread.dtype).tiny),
                       (residual == 0).to(values.dtype))


def _centered(coalitions, values, sample_weights):
    share = sample_weights / sample_weights.sum()
    coalition_mean, value_mean = share @ coalitions, share @ values
    return coalitions - coalition_mean, values - value_mean, coalition_mean, value_mean


def _ridge(coalitions, values, sample_weights, alpha: float):
    """argmin_φ Σ_z π(z) (y_z − φ_0 − φ·z)² + α‖φ‖², for every column of `values` [S, N]."""
    z, y, z_mean, y_mean = _centered(coalitions, values, sample_weights)
    gram = z.T @ (sample_weights[:, None] * z) + alpha * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    if torch.linalg.matrix_rank(gram) < z.shape[1]:
        raise ValueError(f"n_samples: the {len(z)} coalitions do not determine the {z.shape[1]} weights; "
                         "use more samples or alpha > 0")
    weights = torch.linalg.solve(gram, z.T @ (sample_weights[:, None] * y)).T
    return weights, y_mean - weights @ z_mean


def _lasso(coalitions, values, sample_weights, alpha: float, *, max_iter: int = 10_000, tol: float = 1e-12):
    """argmin_φ Σ_z π(z) (y_z − φ_0 − φ·z)² / (2 Σ_z π(z)) + α‖φ‖₁ by cyclic coordinate descent,
    for every column of `values` [S, N] (scikit-learn's `Lasso` objective with sample weights)."""
    z, y, z_mean, y_mean = _centered(coalitions, values, sample_weights)
    share = sample_weights / sample_weights.sum()
    curvature = share @ z ** 2
    weights = torch.zeros(y.shape[1], z.shape[1], dtype=z.dtype, device=z.device)
    residual = y.T.clone()   # [N, S]
    for _ in range(max_iter):
        largest_step = 0.0
        for j in torch.nonzero(curvature > 0).flatten().tolist():
            old = weights[:, j].clone()
            correlation = (residual * share) @ z[:, j] + curvature[j] * old
            new = correlation.sign() * (correlation.abs() - alpha).clamp(min=0) / curvature[j]
            residual -= (new - old)[:, None] * z[:, j]
            weights[:, j] = new
            largest_step = max(largest_step, (new - old).abs().max().item())
        if largest_step < tol:
            break
    return weights, y_mean - weights @ z_mean


def lime_kernel(masks: torch.Tensor, kernel_width: float = 0.25) -> torch.Tensor:
    """LIME's sample weights π(z) = √exp(−d(z)²/σ²), survey Eq. (35), d the cosine distance between z
    and the all-ones coalition (1 for the empty one, as scikit-learn defines it), σ = `kernel_width`:
    the image explainer of the `lime` package."""
    masks = masks.double()
    norms = masks.norm(dim=1)
    cosine = torch.where(norms > 0, masks.sum(1) / (norms.clamp(min=1e-300) * math.sqrt(masks.shape[1])),
                         torch.zeros_like(norms))
    return torch.exp(-(1 - cosine) ** 2 / kernel_width ** 2).sqrt()


# --- LIME -----------------------------------------------------------------------------------------

def lime(model, x: torch.Tensor, target=None, *, segments, n_samples: int = 1000, kernel_width: float = 0.25,
         regressor: str = "ridge", alpha: float = 1.0, baseline=0.0, masks=None, softmax: bool = True,
         seed: int = 0, batch_size: int | str | None = "auto", progress: bool = False) -> SegmentAttribution:
    """LIME (Ribeiro et al., 2016); survey §2.1.6, item 1, Eq. (34)–(36), Fig. 29.

    ξ(x) = argmin_g Σ_z π_x(z) (f_c(h_x(z)) − g(z))² + Ω(g),  g(z) = φ_0 + Σ_j φ_j z_j,
    over `n_samples` coalitions z: the first keeps every segment, the others are uniform on {0, 1}^M,
    as the `lime` package draws them. π_x is `lime_kernel` (cosine distance in the interpretable
    space, width `kernel_width`); Ω(g) = α‖φ‖² for `regressor="ridge"`, the package's default, or
    α‖φ‖₁ for "lasso" (scikit-learn's scaling). The fit has an intercept φ_0. `masks` [S, M] injects
    the coalitions instead of drawing them. `softmax=True` explains the class probability.
    """
    x = check_input(x)
    segments, count = _segment_maps(segments, x)
    if regressor not in REGRESSORS:
        raise ValueError(f"regressor: expected one of {', '.join(map(repr, REGRESSORS))}, got {regressor!r}")
    if not alpha >= 0 or (regressor == "lasso" and not alpha > 0):
        raise ValueError(f"alpha: expected a number {'> 0' if regressor == 'lasso' else '>= 0'}, got {alpha!r}")
    if not kernel_width > 0:
        raise ValueError(f"kernel_width: expected a positive number, got {kernel_width!r}")
    if masks is None:
        _check_count(n_samples, "n_samples", 2)
        masks = torch.randint(0, 2, (n_samples, count), generator=torch.Generator().manual_seed(seed))
        masks[0] = 1
    masks = _check_masks(masks, count)
    if len(masks) < 2:
        raise ValueError(f"masks: a fit with an intercept needs at least 2 coalitions, got {len(masks)}")
    _, target = _scores_and_target(model, x, target)
    values = _coalition_scores(model, x, target, segments, masks, baseline=baseline, softmax=softmax, seed=seed,
                               batch_size=batch_size, progress=progress, description="LIME")
    coalitions = masks.to(device=x.device, dtype=torch.float64)
    sample_weights = lime_kernel(coalitions, kernel_width)
    fit = _ridge if regressor == "ridge" else _lasso
    weights, intercept = fit(coalitions, values, sample_weights, alpha)
    score = _weighted_r2(values, intercept + coalitions @ weights.T, sample_weights)
    return _result(weights, intercept, score, masks, segments, x)


# --- Shapley values -------------------------------------------------------------------------------

def shapley_kernel(masks: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel π(z) = (M − 1) / (C(M, |z|) · |z| · (M − |z|)) of Lundberg & Lee (2017),
    infinite for the empty and the full coalition."""
    count, sizes = masks.shape[1], masks.sum(1).double()
    binomial = torch.exp(torch.lgamma(torch.tensor(count + 1.0)) - torch.lgamma(sizes + 1)
                         - torch.lgamma(count - sizes + 1))
    return (count - 1) / (binomial * sizes * (count - sizes))


def _size_masses(count: int) -> torch.Tensor:
    """Σ_{|z| = s} π(z) = (M − 1) / (s (M − s)) for s = 0..M (0 at the ends, which the constraints carry)."""
    sizes = torch.arange(count + 1, dtype=torch.float64)
    inner = (sizes > 0) & (sizes < count)
    return torch.where(inner, (count - 1) / (sizes * (count - sizes)).clamp(min=1), torch.zeros_like(sizes))


def shapley_coalitions(count: int, n_samples: int, *, paired: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """`n_samples` coalitions [n_samples, M] for Kernel SHAP, none empty or full.

    As in the `shap` package, the sizes s and M − s are enumerated completely, from the smallest
    (whose coalitions carry the most kernel weight) inwards, while the budget holds them all; all
    2^M − 2 coalitions when n_samples ≥ 2^M − 2. The rest of the budget is drawn: a size with
    probability ∝ its kernel mass (M − 1)/(s (M − s)), then a uniform subset of that size; with
    `paired`, each draw is followed by its complement (antithetic sampling).
    """
    rows, remaining, left = [], n_samples, []
    smallest = list(range(1, count // 2 + 1))
    for position, size in enumerate(smallest):
        sizes = sorted({size, count - size})
        total = sum(math.comb(count, s) for s in sizes)
        if total > remaining:
            left = [s for later in smallest[position:] for s in sorted({later, count - later})]
            break
        for s in sizes:
            for members in itertools.combinations(range(count), s):
                row = torch.zeros(count, dtype=torch.long)
                row[list(members)] = 1
                rows.append(row)
        remaining -= total
    if left and remaining > 0:
        masses = _size_masses(count)[left]
        draws = -(-remaining // 2) if paired else remaining
        sizes = torch.tensor(left)[torch.multinomial(masses, draws, replacement=True, generator=generator)]
        ranks = torch.rand(draws, count, generator=generator).argsort(1).argsort(1)
        drawn = (ranks < sizes[:, None]).long()
        if paired:
            drawn = torch.stack([drawn, 1 - drawn], dim=1).flatten(0, 1)
        rows.extend(drawn[:remaining])
    return torch.stack(rows) if rows else torch.zeros(0, count, dtype=torch.long)


def _stratified_weights(masks: torch.Tensor) -> torch.Tensor:
    """Regression weights of the coalitions: each size s shares its kernel mass equally among the
    rows of that size. A size enumerated completely gets exactly π(z) per coalition; a sampled size
    an unbiased estimate of it. Empty and full rows get 0: the constraints hold them exactly."""
    sizes = masks.sum(1)
    counts = torch.bincount(sizes, minlength=masks.shape[1] + 1).double()
    return (_size_masses(masks.shape[1]) / counts.clamp(min=1))[sizes]


def _constrained_fit(coalitions, gains, sample_weights, total):
    """argmin_φ Σ_z π(z) (gain_z − φ·z)²  subject to  Σ_j φ_j = total, per column of `gains` [S, N];
    solved as one bordered (KKT) linear system."""
    count = coalitions.shape[1]
    border = torch.zeros(count + 1, count + 1, dtype=torch.float64, device=coalitions.device)
    border[:count, :count] = coalitions.T @ (sample_weights[:, None] * coalitions)
    border[:count, count] = border[count, :count] = 1
    if torch.linalg.matrix_rank(border) < count + 1:
        raise ValueError(f"n_samples: the {int((sample_weights > 0).sum())} coalitions do not determine the "
                         f"{count} Shapley values; use more samples (a coalition and its complement count as one)")
    right = torch.cat([coalitions.T @ (sample_weights[:, None] * gains), total[None]])
    return torch.linalg.solve(border, right)[:count].T


def kernel_shap(model, x: torch.Tensor, target=None, *, segments, n_samples: int = 2048, baseline=0.0, masks=None,
                paired: bool = True, softmax: bool = False, seed: int = 0, batch_size: int | str | None = "auto",
                progress: bool = False) -> SegmentAttribution:
    """Kernel SHAP (Lundberg & Lee, 2017); survey §2.1.6, item 2, Eq. (37).

    Weighted least squares with the Shapley kernel (`shapley_kernel`) over the coalitions:
        φ = argmin Σ_z π(z) (v(z) − v(∅) − φ·z)²  subject to  Σ_j φ_j = v(1) − v(∅),
    with v(z) = f_c(h_x(z)); φ_0 = v(∅). The efficiency constraint is enforced exactly, in place of
    the infinite weights of the empty and full coalitions. With every coalition the solution is the
    exact Shapley value (Lundberg & Lee's theorem). `n_samples` coalitions come from
    `shapley_coalitions` (`paired` antithetic draws), or from `masks`; each size shares its kernel
    mass among its rows (`_stratified_weights`). Forward passes: n_samples + 3 per image.
    """
    x = check_input(x)
    segments, count = _segment_maps(segments, x)
    if masks is None:
        _check_count(n_samples, "n_samples", 1)
        masks = shapley_coalitions(count, n_samples, paired=paired, generator=torch.Generator().manual_seed(seed))
    masks = _check_masks(masks, count)
    _, target = _scores_and_target(model, x, target)
    ends = torch.stack([torch.ones(count, dtype=torch.long), torch.zeros(count, dtype=torch.long)])
    sizes = masks.sum(1)
    inner = masks[(sizes > 0) & (sizes < count)]
    values = _coalition_scores(model, x, target, segments, torch.cat([ends, inner]), baseline=baseline,
                               softmax=softmax, seed=seed, batch_size=batch_size, progress=progress,
                               description="Kernel SHAP")
    full, empty, values = values[0], values[1], values[2:]
    coalitions = inner.to(device=x.device, dtype=torch.float64)
    sample_weights = _stratified_weights(inner).to(x.device)
    weights = _constrained_fit(coalitions, values - empty, sample_weights, full - empty)
    score = _weighted_r2(values, empty + coalitions @ weights.T, sample_weights)
    return _result(weights, empty, score, masks, segments, x)


def _all_coalitions(count: int) -> torch.Tensor:
    """Every coalition [2^M, M]; row k is the binary expansion of k (bit j keeps segment j)."""
    return (torch.arange(2 ** count)[:, None] >> torch.arange(count)) & 1


def shapley_values(game: torch.Tensor) -> torch.Tensor:
    """The Shapley values (Shapley, 1953) of games given by their values v(S) on every coalition.

    `game` is [2^M] or [2^M, N]; entry k is v(S) for S the set bits of k. Returns [M] or [N, M]:
        φ_j = Σ_{S ⊆ {1..M} \\ {j}} |S|! (M − |S| − 1)! / M! · (v(S ∪ {j}) − v(S)).
    """
    if game.dim() not in (1, 2) or len(game) < 2 or len(game) & (len(game) - 1):
        raise ValueError(f"game: expected [2^M] or [2^M, N] coalition values with M >= 1, got shape "
                         f"{tuple(game.shape)}")
    values = game.double().reshape(len(game), -1)
    count = len(game).bit_length() - 1
    coalitions = torch.arange(len(game), device=game.device)
    sizes = _all_coalitions(count).sum(1).to(game.device)
    share = torch.tensor([math.factorial(s) * math.factorial(count - s - 1) / math.factorial(count)
                          for s in range(count)], dtype=torch.float64, device=game.device)
    phi = torch.empty(values.shape[1], count, dtype=torch.float64, device=game.device)
    for j in range(count):
        without = coalitions[(coalitions >> j) & 1 == 0]
        phi[:, j] = share[sizes[without]] @ (values[without | 1 << j] - values[without])
    return phi[0] if game.dim() == 1 else phi


def shapley_exact(model, x: torch.Tensor, target=None, *, segments, baseline=0.0, softmax: bool = False,
                  batch_size: int | str | None = "auto", progress: bool = False) -> SegmentAttribution:
    """Exact Shapley values of the segments (`shapley_values`), from all 2^M coalitions
    (M ≤ 16: 2^M forward passes per image). φ_0 = v(∅); Σ_j φ_j = v(1) − v(∅) exactly."""
    x = check_input(x)
    segments, count = _segment_maps(segments, x)
    if count > MAX_EXACT_SEGMENTS:
        raise ValueError(f"segments: {count} segments need 2^{count} forward passes per image; shapley_exact "
                         f"enumerates at most {MAX_EXACT_SEGMENTS} (use kernel_shap)")
    _, target = _scores_and_target(model, x, target)
    masks = _all_coalitions(count)
    values = _coalition_scores(model, x, target, segments, masks, baseline=baseline, softmax=softmax, seed=0,
                               batch_size=batch_size, progress=progress, description="exact Shapley")
    return _result(shapley_values(values), values[0], torch.ones_like(values[0]), masks, segments, x)


def segment_probe(model, x: torch.Tensor, target=None, *, segments, baseline=0.0, softmax: bool = True,
                  batch_size: int | str | None = "auto") -> torch.Tensor:
    """Each segment shown alone, everything else `baseline`: the target score f_c(h_x(e_j)) per
    segment j, [N, M] (seed article 004's probe of an MNIST net with Felzenszwalb segments).
    `target=None` probes the class predicted for the whole image."""
    x = check_input(x)
    segments, count = _segment_maps(segments, x)
    _, target = _scores_and_target(model, x, target)
    alone = torch.eye(count, dtype=torch.long)
    return _coalition_scores(model, x, target, segments, alone, baseline=baseline, softmax=softmax, seed=0,
                             batch_size=batch_size, progress=False, description="segment probe").T.to(x.dtype)


# --- gradient-based SHAP --------------------------------------------------------------------------

def _baseline_distribution(baselines, x: torch.Tensor) -> torch.Tensor:
    """`baselines` as images [B, C, H, W]: a number (one constant image), one image [C, H, W] or a batch."""
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full_like(x[:1], float(baselines))
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"baselines: expected a number or a tensor [B, C, H, W], got {type(baselines).__name__}")
    baselines = baselines[None] if baselines.dim() == 3 else baselines
    if baselines.dim() != 4 or baselines.shape[1:] != x.shape[1:] or len(baselines) == 0:
        raise ValueError(f"baselines: expected [B, {', '.join(map(str, x.shape[1:]))}] to match x, got shape "
                         f"{tuple(baselines.shape)}")
    return check_input(baselines.to(x), name="baselines")


def gradient_shap(model, x: torch.Tensor, target=None, *, baselines, n_samples: int = 50, stdev: float = 0.0,
                  seed: int = 0, batch_size: int | None = 64) -> torch.Tensor:
    """Gradient SHAP, expected gradients (Lundberg & Lee, 2017; Erion et al., 2021); survey §2.1.6.

        φ(x) = E_{b ~ baselines, α ~ U(0, 1), ε ~ N(0, stdev²)} [(x̃ − b) ⊙ ∂f_c(b + α (x̃ − b))/∂x],
    x̃ = x + ε, estimated with `n_samples` draws per image (b uniformly from the rows of `baselines`).
    `stdev` is absolute noise in input units, as in Captum's `GradientShap`. Σφ ≈ f_c(x) − E_b f_c(b).
    Returns a tensor shaped like `x`.
    """
    x = check_input(x)
    baselines = _baseline_distribution(baselines, x)
    _check_count(n_samples, "n_samples", 1)
    if not stdev >= 0:
        raise ValueError(f"stdev: expected a number >= 0, got {stdev!r}")
    n = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randint(len(baselines), (n_samples * n,), generator=generator).to(x.device)
    alphas = torch.rand(n_samples * n, generator=generator, dtype=x.dtype).to(x.device)
    total = torch.zeros_like(x)
    with preserved(model):
        with torch.no_grad():
            target = check_target(target, model(x))
        for chunk in batches(n_samples * n, batch_size):   # copy k·N + i is draw k for image i
            items = torch.arange(chunk.start, chunk.stop, device=x.device)
            noisy = x[items % n]
            if stdev > 0:   # drawn copy by copy, so the noise does not depend on batch_size
                noisy = noisy + stdev * torch.stack([torch.randn(x.shape[1:], generator=generator, dtype=x.dtype)
                                                     for _ in items]).to(x.device)
            difference = noisy - baselines[chosen[items]]
            grads, _ = _input_gradient(model, baselines[chosen[items]] + alphas[items].view(-1, 1, 1, 1)
                                       * difference, target[items % n])
            total.index_add_(0, items % n, difference * grads)
    return total / n_samples


def deep_shap(model, x: torch.Tensor, target=None, *, baselines, batch_size: int | None = 64) -> torch.Tensor:
    """Deep SHAP (Lundberg & Lee, 2017); survey §2.1.6: DeepLIFT averaged over a baseline distribution,
        φ(x) = (1/|B|) Σ_{b ∈ B} DeepLIFT(x; b),  so  Σφ = f_c(x) − (1/|B|) Σ_b f_c(b)
    by DeepLIFT's summation-to-delta. DeepLIFT is `lrp.deeplift` (rescale rule) of the relevance
    chapter. `batch_size` (image, baseline) pairs are explained at a time. Returns a tensor like `x`.
    """
    from .lrp import deeplift

    x = check_input(x)
    baselines = _baseline_distribution(baselines, x)
    n, count = x.shape[0], len(baselines)
    with torch.no_grad(), preserved(model):
        target = check_target(target, model(x))
    total = torch.zeros_like(x)
    for chunk in batches(count * n, batch_size):   # pair k·N + i is baseline k for image i
        items = torch.arange(chunk.start, chunk.stop, device=x.device)
        attributions = deeplift(model, x[items % n], target[items % n], baseline=baselines[items // n])
        total.index_add_(0, items % n, attributions.detach())
    return total / count
