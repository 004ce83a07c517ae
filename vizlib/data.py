"""Images and small datasets for the book: sample photos, the EfficientNet-Lite
input pipeline, and synthetic / toy classification sets with ground truth.

Everything here works offline: photos come from the files bundled with
scikit-image and scikit-learn, and the datasets are generated or bundled.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from dataclasses import dataclass

import numpy as np
import skimage.data
import skimage.draw
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "BLACK",
    "IMAGE_NAMES",
    "MEAN",
    "MID_GREY",
    "SHAPE_CLASSES",
    "STD",
    "WHITE",
    "ImageSet",
    "crop_box",
    "deprocess",
    "digits",
    "gaussian_blur",
    "load_image",
    "normalize",
    "preprocess",
    "shapes",
    "mosaics",
]

# ----------------------------------------------------------------------------
# Sample photos
# ----------------------------------------------------------------------------

_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",  # grayscale: exercises the conversion to three channels
)
_SKLEARN_PHOTOS = ("china", "flower")

IMAGE_NAMES = (*_SKIMAGE_PHOTOS, *_SKLEARN_PHOTOS, "cat_and_coffee")

# (x0, y0, x1, y1) portrait crops (1 wide : 2 high) of the cat's face and of the cup on its saucer,
# so that side by side they fill the square the network sees, with no letterbox bands.
_CAT_BOX = (150, 0, 300, 300)
_COFFEE_BOX = (200, 0, 400, 400)


def load_image(name: str) -> np.ndarray:
    """Return the photo called `name` (one of `IMAGE_NAMES`) as uint8 H×W×3 RGB."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in _SKIMAGE_PHOTOS:
        return _to_rgb(getattr(skimage.data, name)())
    if name in _SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image     # on use: scikit-learn is slow to import

        return load_sample_image(f"{name}.jpg")
    if name == "cat_and_coffee":
        return _cat_and_coffee()
    close = difflib.get_close_matches(name, IMAGE_NAMES, n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    valid = ", ".join(IMAGE_NAMES)
    raise ValueError(f"unknown image name {name!r}.{hint} Valid names: {valid}")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _cat_and_coffee() -> np.ndarray:
    """The cat beside the coffee cup: one square photo holding two ImageNet objects.

    The cat fills the left half and the cup the right half of the region that `preprocess` keeps
    (the central 87.5 %), so the network sees only photo pixels. The margin it crops away is
    mid-grey (pixel 127).
    """
    canvas_side = 512
    margin = (canvas_side - round(canvas_side * 224 / 256)) // 2
    half = (canvas_side - 2 * margin) // 2
    canvas = np.full((canvas_side, canvas_side, 3), round(MEAN), dtype=np.uint8)
    for column, (photo, box) in enumerate([(skimage.data.chelsea(), _CAT_BOX), (skimage.data.coffee(), _COFFEE_BOX)]):
        part = Image.fromarray(photo).crop(box).resize((half, 2 * half), Image.Resampling.LANCZOS)
        left = margin + column * half
        canvas[margin: margin + 2 * half, left: left + half] = np.asarray(part)
    return canvas


# ----------------------------------------------------------------------------
# EfficientNet-Lite input pipeline
# ----------------------------------------------------------------------------

# The normalisation's offset and scale: (pixel - 127) / 128. MEAN is the pixel value that becomes 0
# (mid-grey), not the mean colour of any photo or data set.
MEAN = 127.0
STD = 128.0
# Named normalised values (chapter 0's table). An input of 0 is mid-grey, not black.
BLACK = (0 - MEAN) / STD        # pixel 0   -> -0.992
MID_GREY = (127 - MEAN) / STD   # pixel 127 ->  0
WHITE = (255 - MEAN) / STD      # pixel 255 -> +1 (exactly)
_CROP_PADDING = 32  # TF's efficientnet eval crops size/(size + 32) of the short side


def normalize(x255: torch.Tensor) -> torch.Tensor:
    """Map pixel values in 0..255 to the network's input range, (x - 127) / 128: black (0) becomes
    `BLACK` = -0.992, mid-grey (127) becomes 0, white (255) becomes `WHITE` = +1."""
    return (x255 - MEAN) / STD


def crop_box(height: int, width: int, size: int = 224) -> tuple[int, int, int]:
    """Return (top, left, side) of the centred square that `preprocess` crops.

    The side is size/(size+32) of the short side (0.875 for size 224), rounded. Odd margins
    leave the extra pixel at the bottom/right. (TF's `_decode_and_center_crop` puts it at the
    top/left; on chelsea that one-pixel shift moves "tiger cat" from 0.39 to 0.41.)
    """
    _check_int(height, "height", minimum=1)
    _check_int(width, "width", minimum=1)
    _check_int(size, "size", minimum=1)
    side = max(1, round(size / (size + _CROP_PADDING) * min(height, width)))
    return (height - side) // 2, (width - side) // 2, side


def preprocess(image, size: int = 224) -> torch.Tensor:
    """Turn photos into a float32 [N, 3, size, size] batch for EfficientNet-Lite.

    `image` is an H×W×3 uint8 array, a list of them (sizes may differ), or a
    uint8/float tensor [3, H, W] or [N, 3, H, W] with values in 0..255.
    Each image is centre-cropped (see `crop_box`), resized with antialiased
    bicubic interpolation, clamped to 0..255 and normalised.
    """
    _check_int(size, "size", minimum=1)
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image must not be an empty list")
        return torch.cat([preprocess(item, size) for item in image])
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image array must be uint8 H×W×3, got {image.dtype} with shape {image.shape}"
            )
        batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]   # a writable copy
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise TypeError(f"image tensor must be uint8 or floating point, got {image.dtype}")
        batch = image[None] if image.dim() == 3 else image
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(
                f"image tensor must have shape [3, H, W] or [N, 3, H, W], got {list(image.shape)}"
            )
    else:
        raise TypeError(
            f"image must be a numpy array, a torch tensor or a list of arrays, "
            f"got {type(image).__name__}"
        )
    top, left, side = crop_box(batch.shape[2], batch.shape[3], size)
    # Float64 makes the interpolation weights sum to 1 closely enough that flat regions
    # stay exactly flat in float32 (MPS has no float64).
    work_dtype = torch.float32 if batch.device.type == "mps" else torch.float64
    crop = batch[:, :, top : top + side, left : left + side].to(work_dtype)
    resized = F.interpolate(
        crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    return normalize(resized.clamp(0, 255).float())


def deprocess(x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: float H×W×3 in [0, 1] (N×H×W×3 for a batch of N > 1)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"x must have shape [3, H, W] or [N, 3, H, W], got {list(x.shape)}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    pixels = ((x.detach().float() * STD + MEAN) / 255).clamp(0, 1)
    return pixels.movedim(-3, -1).cpu().numpy()


def gaussian_blur(x: torch.Tensor, sigma) -> torch.Tensor:
    """Blur images [N, C, H, W] with a Gaussian of standard deviation `sigma` pixels.

    `sigma` is a number or a tensor with one value per image (σ = 0 leaves an image unchanged). The
    kernel spans the whole image and is renormalised where it leaves it, so a constant image stays
    constant and any σ works, however large; the result is differentiable in `x` and in `sigma`.
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected [N, C, H, W], got shape {tuple(x.shape)}")
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    if (sigma < 0).any():
        raise ValueError(f"sigma: expected values >= 0, got {sigma.min().item()}")

    def blur_matrix(size: int) -> torch.Tensor:
        positions = torch.arange(size, dtype=x.dtype, device=x.device)
        squared_distance = (positions[:, None] - positions[None, :]).square()
        variance = 2 * sigma.clamp(min=1e-6).square().view(-1, 1, 1)
        return (-squared_distance / variance).softmax(dim=-1)        # [N, size, size], rows sum to 1

    rows, columns = blur_matrix(x.shape[2]), blur_matrix(x.shape[3])
    return rows[:, None] @ x @ columns[:, None].transpose(-1, -2)


# ----------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class ImageSet(torch.utils.data.Dataset):
    """Labelled images with optional per-image ground truth.

    images: float32 [N, C, H, W] in [0, 1], fed to the small nets as they are (no `normalize`), so
    here 0 is black and 0.5 mid-grey, unlike EfficientNet-Lite0's inputs; labels: int64 [N]; classes: names.
    masks: bool [N, H, W], the object's pixels. boxes: int64 [N, 4], the
    object's (x0, y0, x1, y1) with x1, y1 exclusive. colors: float32 [N, 3],
    the object's flat colour. shortcut_masks: bool [N, H, W], pixels of a
    class-correlated watermark that is not part of the object. instance_masks: bool [N, K, H, W],
    the pixels of each of K instances of the labelled class (`mosaics`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    colors: torch.Tensor | None = None
    shortcut_masks: torch.Tensor | None = None
    instance_masks: torch.Tensor | None = None

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {list(self.images.shape)}")
        n, _, height, width = self.images.shape
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape [{n}], got {list(self.labels.shape)}")
        self.classes = tuple(self.classes)
        expected = {
            "masks": (n, height, width),
            "boxes": (n, 4),
            "colors": (n, 3),
            "shortcut_masks": (n, height, width),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
        instances = self.instance_masks
        if instances is not None and (instances.dim() != 4 or instances.shape[0] != n
                                      or tuple(instances.shape[2:]) != (height, width)):
            raise ValueError(f"instance_masks must have shape [{n}, K, {height}, {width}], "
                             f"got {list(instances.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        optional = [f.name for f in dataclasses.fields(self) if f.default is None]
        present = [name for name in optional if getattr(self, name) is not None]
        return (
            f"ImageSet({len(self)} images of {list(self.images.shape[1:])}, "
            f"classes={self.classes}, with={present})"
        )

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images at `indices`, with all their per-image ground truth."""
        per_image = {
            f.name: getattr(self, f.name)[indices]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **per_image)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Deterministic random (train, test) split."""
        if not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        _check_int(seed, "seed", minimum=0)
        n_test = round(len(self) * test_fraction)
        if not 0 < n_test < len(self):
            raise ValueError(
                f"test_fraction={test_fraction} leaves an empty part of a set of {len(self)} images"
            )
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[n_test:]), self.subset(order[:n_test])


SHAPE_CLASSES = ("circle", "square", "triangle", "cross")


def shapes(n: int, size: int = 64, *, seed: int = 0, shortcut: bool = False) -> ImageSet:
    """Synthetic 4-class set of flat-coloured shapes on textured noise.

    Each image holds one circle, square, triangle or cross of random size (30-50%
    of the image), position, rotation and colour; `masks`, `boxes` and `colors`
    give its exact pixels, tight box and colour. Objects keep clear of a border
    band, where `shortcut=True` paints a white watermark in a corner chosen by
    the class (a Clever-Hans cue, recorded in `shortcut_masks`). Apart from the
    watermark, the same seed gives the same images with and without shortcut.
    """
    _check_int(n, "n", minimum=1)
    _check_int(size, "size", minimum=16)
    _check_int(seed, "seed", minimum=0)
    if not isinstance(shortcut, bool):
        raise TypeError(f"shortcut must be a bool, got {type(shortcut).__name__}")

    label_rng, background_rng, object_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    labels = np.arange(n) % len(SHAPE_CLASSES)
    label_rng.shuffle(labels)

    backgrounds = _textured_backgrounds(n, size, background_rng)
    mark_offset, mark_side = size // 32, max(2, size // 12)
    border = mark_offset + mark_side + 1
    masks = np.stack([_draw_shape(label, size, border, object_rng) for label in labels])
    colors = _contrasting_colors(backgrounds, object_rng)
    images = np.where(masks[:, None], colors[:, :, None, None], backgrounds)

    shortcut_masks = None
    if shortcut:
        shortcut_masks = np.zeros_like(masks)
        near, far = mark_offset, size - mark_offset - mark_side
        corners = [(near, near), (near, far), (far, near), (far, far)]  # (top, left) per class
        for label, (top, left) in enumerate(corners):
            shortcut_masks[labels == label, top : top + mark_side, left : left + mark_side] = True
        images = np.where(shortcut_masks[:, None], np.float32(1), images)

    return ImageSet(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels).long(),
        classes=SHAPE_CLASSES,
        masks=torch.from_numpy(masks),
        boxes=torch.from_numpy(_tight_boxes(masks)).long(),
        colors=torch.from_numpy(colors),
        shortcut_masks=None if shortcut_masks is None else torch.from_numpy(shortcut_masks),
    )


def mosaics(source: ImageSet, n: int, *, instances: int = 2, seed: int = 0) -> ImageSet:
    """2 × 2 mosaics of `source` images for the survey's multiple-objects criterion (§3.1.1).

    Each mosaic holds `instances` images of one class (its label) and 4 − `instances` of other
    classes, in random tiles; `masks` is the union of the labelled class's objects and
    `instance_masks` [n, instances, 2H, 2W] holds each of them. `source` needs `masks`; an image
    appears in at most one mosaic, so `source` must hold enough of each class.
    """
    if not isinstance(source, ImageSet) or source.masks is None:
        raise TypeError("source: expected a vizlib.data.ImageSet with masks (e.g. data.shapes)")
    _check_int(n, "n", minimum=1)
    _check_int(instances, "instances", minimum=1)
    _check_int(seed, "seed", minimum=0)
    if instances > 4:
        raise ValueError(f"instances: a 2 x 2 mosaic has 4 tiles, got {instances}")
    rng = np.random.default_rng(seed)
    source_labels = source.labels.numpy()
    unused = {c: list(rng.permutation(np.flatnonzero(source_labels == c))) for c in range(len(source.classes))}
    labels = rng.integers(len(source.classes), size=n)
    tiles, owners = [], []
    for label in labels:
        others = [c for c in unused if c != label]
        picks = [label] * instances + list(rng.choice(others, size=4 - instances))
        order = rng.permutation(4)
        try:
            tiles.append([unused[picks[k]].pop() for k in order])
        except IndexError:
            raise ValueError(f"source: {len(source)} images are too few for {n} mosaics of "
                             f"{instances} instances") from None
        owners.append([int(k) < instances for k in order])
    index = torch.tensor(tiles)
    height, width = source.images.shape[2:]

    def tile(parts):                        # [n, 4, ..., H, W] → [n, ..., 2H, 2W]
        top = torch.cat([parts[:, 0], parts[:, 1]], dim=-1)
        return torch.cat([top, torch.cat([parts[:, 2], parts[:, 3]], dim=-1)], dim=-2)

    owned = torch.tensor(owners)
    object_masks = source.masks[index] & owned[:, :, None, None]
    instance_masks = torch.stack([tile(torch.where((owned.cumsum(1) == k + 1)[:, :, None, None] & owned[:, :, None, None],
                                                   object_masks, False)) for k in range(instances)], dim=1)
    return ImageSet(images=tile(source.images[index]), labels=torch.from_numpy(labels).long(),
                    classes=source.classes, masks=instance_masks.any(dim=1), instance_masks=instance_masks)


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """[n, 4] (x0, y0, x1, y1) bounds of non-empty [n, H, W] masks, x1 and y1 exclusive."""

    def first_and_past_last(hits):
        return hits.argmax(axis=1), hits.shape[1] - hits[:, ::-1].argmax(axis=1)

    x0, x1 = first_and_past_last(masks.any(axis=1))
    y0, y1 = first_and_past_last(masks.any(axis=2))
    return np.stack([x0, y0, x1, y1], axis=1)


def _textured_backgrounds(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [n, 3, size, size]: two muted colours blended by smooth noise, plus grain."""
    coarse, medium = (
        torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32)) for cells in (4, 12)
    )
    octaves = F.interpolate(coarse, size=medium.shape[2:], mode="bicubic", align_corners=False)
    octaves += 0.35 * medium
    field = F.interpolate(octaves, size=(size, size), mode="bicubic", align_corners=False)
    low, high = field.amin(dim=(2, 3), keepdim=True), field.amax(dim=(2, 3), keepdim=True)
    field = (field - low) / (high - low)
    color_a, color_b = (
        torch.from_numpy(rng.uniform(0.25, 0.75, (n, 3, 1, 1)).astype(np.float32)) for _ in range(2)
    )
    grain = torch.from_numpy(rng.standard_normal((n, 3, size, size), dtype=np.float32))
    return torch.lerp(color_a, color_b, field).add_(grain, alpha=0.04).clamp_(0, 1).numpy()


def _contrasting_colors(backgrounds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 [n, 3] colours: light on dark backgrounds, dark on light ones."""
    luminance = backgrounds.mean(axis=(2, 3)) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    base = rng.uniform(0, 0.35, (len(backgrounds), 3)).astype(np.float32)
    return np.where((luminance < 0.5)[:, None], base + np.float32(0.65), base)


def _draw_shape(label: int, size: int, border: int, rng: np.random.Generator) -> np.ndarray:
    """bool [size, size] mask of one randomly placed shape of class `label`."""
    radius = rng.uniform(0.15, 0.25) * size  # of the circle through the shape's corners
    low, high = border + radius, size - 1 - border - radius
    center_row, center_col = rng.uniform(low, high, 2)
    angle = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((size, size), dtype=bool)
    name = SHAPE_CLASSES[label]
    if name == "circle":
        mask[skimage.draw.disk((center_row, center_col), radius, shape=mask.shape)] = True
        return mask
    if name == "square":
        corners = _regular_polygon(4, radius)
    elif name == "triangle":
        corners = _regular_polygon(3, radius)
    else:  # a plus sign whose arms are a third as thick as they are long
        arm, half_width = radius / np.hypot(1, 1 / 3), radius / np.hypot(3, 1)
        arm_end = np.array([[arm, -half_width], [arm, half_width], [half_width, half_width]])
        corners = np.concatenate([_rotate(arm_end, k * np.pi / 2) for k in range(4)])
    cols, rows = (_rotate(corners, angle) + (center_col, center_row)).T
    mask[skimage.draw.polygon(rows, cols, shape=mask.shape)] = True
    return mask


def _regular_polygon(sides: int, radius: float) -> np.ndarray:
    angles = np.arange(sides) * 2 * np.pi / sides
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (x, y) rows of `points` by `angle` radians about the origin."""
    cos, sin = np.cos(angle), np.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def digits(size: int = 28) -> ImageSet:
    """scikit-learn's 1797 handwritten digits, [1797, 1, size, size] in [0, 1]."""
    _check_int(size, "size", minimum=8)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images / 16.0).float()[:, None]
    images = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return ImageSet(
        images=images.clamp(0, 1),
        labels=torch.from_numpy(bunch.target).long(),
        classes=tuple(str(digit) for digit in range(10)),
    )


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
