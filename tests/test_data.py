"""The photos load offline, preprocess matches EfficientNet-Lite's pipeline, and the
synthetic datasets carry exact ground truth."""
import numpy as np
import pytest
import torch

from vizlib import data

LUMA = torch.tensor([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def clean():
    return data.shapes(64, seed=3)


@pytest.fixture(scope="module")
def cheat():
    return data.shapes(64, seed=3, shortcut=True)


def random_photo(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- photos ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", data.IMAGE_NAMES)
def test_every_named_image_loads_offline_as_uint8_rgb(name):
    image = data.load_image(name)
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3


def test_cat_and_coffee_fills_the_crop_with_the_two_photos_and_no_grey_bands():
    joined = data.load_image("cat_and_coffee")
    assert joined.shape[0] == joined.shape[1]
    assert (joined[:8] == 127).all() and (joined[:, :8] == 127).all()   # the margin the crop removes
    x = data.preprocess(joined)[0]
    grey = (x.abs() < 1 / 128).all(dim=0)                                # pixels left at mid-grey
    assert grey[2:-2, 2:-2].float().mean() < 0.01
    assert x[:, :, :110].std() > 0.1 and x[:, :, 114:].std() > 0.1


def test_unknown_image_name_suggests_the_close_match():
    with pytest.raises(ValueError, match="chelsea"):
        data.load_image("chelsae")


# --- preprocess / deprocess ------------------------------------------------------------------------

def test_preprocess_makes_one_224_square_float_batch():
    x = data.preprocess(data.load_image("chelsea"))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32


@pytest.mark.parametrize("value", [127, 255, 0])
def test_preprocess_maps_a_flat_image_exactly_to_its_normalised_value(value):
    x = data.preprocess(np.full((300, 451, 3), value, dtype=np.uint8))
    assert torch.all(x == (value - 127) / 128)


@pytest.mark.parametrize("pixel, name", [(0, "BLACK"), (127, "MID_GREY"), (255, "WHITE")])
def test_named_values_are_what_preprocess_makes_of_black_mid_grey_and_white(pixel, name):
    x = data.preprocess(np.full((40, 40, 3), pixel, dtype=np.uint8))
    assert torch.all(x == getattr(data, name))
    assert data.MID_GREY == 0 and round(data.BLACK, 3) == -0.992 and data.WHITE == 1


def test_preprocess_batches_a_list_of_differently_sized_photos():
    photos = [random_photo(120, 90, seed=1), random_photo(64, 200, seed=2)]
    batch = data.preprocess(photos, size=32)
    assert torch.equal(batch, torch.cat([data.preprocess(photo, size=32) for photo in photos]))


def test_preprocess_gives_the_same_result_for_arrays_and_uint8_or_float_tensors():
    photo = random_photo(100, 140)
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    expected = data.preprocess(photo)
    assert torch.equal(data.preprocess(chw), expected)
    assert torch.equal(data.preprocess(chw[None].float()), expected)


def test_deprocess_inverts_preprocess_to_the_centre_crop_resized():
    height, width = 128, 160  # centre crop: side 112 at offsets (8, 24)
    photo = random_photo(height, width)
    crop = torch.from_numpy(photo[8:120, 24:136]).permute(2, 0, 1)[None].double()
    reference = torch.nn.functional.interpolate(
        crop, size=(224, 224), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 255)[0].permute(1, 2, 0).numpy() / 255
    np.testing.assert_allclose(data.deprocess(data.preprocess(photo)), reference, atol=1e-5)


@pytest.mark.parametrize("height, width", [(117, 150), (300, 451), (640, 427), (50, 50)])
def test_crop_side_is_seven_eighths_of_the_short_side_rounded(height, width):
    assert data.crop_box(height, width)[2] == round(0.875 * min(height, width))


def test_no_pixel_outside_the_centre_crop_reaches_the_output():
    top, left, side = data.crop_box(117, 150)
    photo = np.zeros((117, 150, 3), dtype=np.uint8)
    photo[top : top + side, left : left + side] = 255
    assert torch.all(data.preprocess(photo) == 1.0)


def test_deprocess_returns_images_last_channel_and_clipped():
    x = torch.linspace(-3, 3, 2 * 3 * 5 * 7).reshape(2, 3, 5, 7).requires_grad_()
    batch = data.deprocess(x)
    assert batch.shape == (2, 5, 7, 3)
    assert batch.min() == 0 and batch.max() == 1
    assert data.deprocess(x[:1]).shape == data.deprocess(x[0]).shape == (5, 7, 3)
    np.testing.assert_array_equal(data.deprocess(x[1]), batch[1])


# --- ImageSet and shapes ---------------------------------------------------------------------------

def test_shapes_is_bit_identical_for_a_seed_and_differs_across_seeds(clean):
    again = data.shapes(64, seed=3)
    for field in ("images", "labels", "masks", "boxes", "colors"):
        assert torch.equal(getattr(clean, field), getattr(again, field)), field
    assert not torch.equal(clean.images, data.shapes(64, seed=4).images)


def test_shapes_images_are_float_in_unit_range_at_the_requested_size():
    images = data.shapes(8, size=32).images
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("n", [40, 42])
def test_shapes_classes_are_balanced(n):
    counts = torch.bincount(data.shapes(n, size=16).labels, minlength=4)
    assert counts.max() - counts.min() <= 1


def test_masks_are_exactly_the_pixels_of_the_object_colour(clean):
    # Would fail for a mask off by one pixel: the background never hits the colour exactly.
    has_object_colour = (clean.images == clean.colors[:, :, None, None]).all(dim=1)
    assert torch.equal(has_object_colour, clean.masks)
    assert clean.masks.flatten(1).any(dim=1).all()


def test_boxes_are_the_tight_bounds_of_the_masks(clean):
    for mask, (x0, y0, x1, y1) in zip(clean.masks, clean.boxes.tolist()):
        inside = mask[y0:y1, x0:x1]
        assert inside.sum() == mask.sum()
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_objects_differ_in_brightness_from_their_background(clean):
    outside = (~clean.masks)[:, None].float()
    background = (clean.images * outside).sum(dim=(2, 3)) / outside.sum(dim=(2, 3))
    assert torch.all(((background - clean.colors) @ LUMA).abs() > 0.1)


def test_shortcut_marks_are_absent_without_shortcut(clean):
    assert clean.shortcut_masks is None


def test_shortcut_marks_are_the_only_change_and_never_touch_the_object(clean, cheat):
    marks = cheat.shortcut_masks
    assert marks.flatten(1).any(dim=1).all()
    assert not (marks & cheat.masks).any()
    assert torch.equal(cheat.masks, clean.masks)
    unchanged = ~marks[:, None].expand_as(clean.images)
    assert torch.equal(cheat.images[unchanged], clean.images[unchanged])


def test_shortcut_marks_sit_in_one_corner_per_class(cheat):
    size = cheat.images.shape[-1]
    corners = set()
    for label in range(len(cheat.classes)):
        marks = cheat.shortcut_masks[cheat.labels == label]
        assert (marks == marks[0]).all(), "every image of a class has the same mark"
        rows, cols = marks[0].nonzero(as_tuple=True)
        assert rows.max() - rows.min() < size // 4 and cols.max() - cols.min() < size // 4
        corners.add((rows.float().mean().item() > size / 2, cols.float().mean().item() > size / 2))
    assert len(corners) == len(cheat.classes)


def test_imageset_items_are_image_label_pairs(clean):
    image, label = clean[5]
    assert torch.equal(image, clean.images[5]) and label == clean.labels[5]
    images, labels = next(iter(torch.utils.data.DataLoader(clean, batch_size=16)))
    assert images.shape == (16, *clean.images.shape[1:]) and labels.shape == (16,)


def test_split_is_a_deterministic_partition_carrying_ground_truth(cheat):
    train, test = cheat.split(test_fraction=0.25, seed=1)
    assert (len(train), len(test)) == (48, 16)
    assert torch.equal(test.images, cheat.split(test_fraction=0.25, seed=1)[1].images)
    shared = (train.images[:, None] == test.images[None]).flatten(2).all(dim=2)
    assert not shared.any()
    for part in (train, test):
        assert torch.equal((part.images == part.colors[:, :, None, None]).all(dim=1), part.masks)
        first_of_class = {label: cheat.shortcut_masks[cheat.labels == label][0] for label in range(4)}
        for marks, label in zip(part.shortcut_masks, part.labels.tolist()):
            assert torch.equal(marks, first_of_class[label])


# --- digits ----------------------------------------------------------------------------------------

def test_digits_are_1797_single_channel_images_of_ten_classes_in_unit_range():
    digits = data.digits()
    assert digits.images.shape == (1797, 1, 28, 28)
    assert digits.images.min() == 0 and digits.images.max() == 1
    assert digits.classes == tuple("0123456789")
    assert set(digits.labels.tolist()) == set(range(10))


def test_digits_honour_the_size_argument():
    assert data.digits(size=12).images.shape == (1797, 1, 12, 12)


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "call, error, argument",
    [
        (lambda: data.shapes(0), ValueError, "n"),
        (lambda: data.shapes(2.5), TypeError, "n"),
        (lambda: data.shapes(4, size=8), ValueError, "size"),
        (lambda: data.shapes(4, seed=-1), ValueError, "seed"),
        (lambda: data.shapes(4, shortcut="yes"), TypeError, "shortcut"),
        (lambda: data.digits(size=0), ValueError, "size"),
        (lambda: data.load_image(3), TypeError, "name"),
        (lambda: data.preprocess(random_photo(20, 20), size=0), ValueError, "size"),
        (lambda: data.preprocess(random_photo(20, 20)[:, :, 0]), ValueError, "image"),
        (lambda: data.preprocess(random_photo(20, 20).astype(float)), ValueError, "image"),
        (lambda: data.preprocess(torch.zeros(1, 1, 20, 20)), ValueError, "image"),
        (lambda: data.preprocess(torch.zeros(3, 20, 20, dtype=torch.int64)), TypeError, "image"),
        (lambda: data.preprocess("chelsea"), TypeError, "image"),
        (lambda: data.preprocess([]), ValueError, "image"),
        (lambda: data.deprocess(np.zeros((3, 4, 4))), TypeError, "x"),
        (lambda: data.deprocess(torch.zeros(4, 4)), ValueError, "x"),
        (lambda: data.shapes(8, size=16).split(test_fraction=1.5), ValueError, "test_fraction"),
        (lambda: data.shapes(2, size=16).split(test_fraction=0.1), ValueError, "test_fraction"),
        (lambda: data.ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(3), ("a",)), ValueError, "labels"),
        (lambda: data.ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2), ("a",), masks=torch.zeros(2, 4)),
         ValueError, "masks"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(call, error, argument):
    with pytest.raises(error, match=rf"^{argument}\b"):
        call()


def test_gaussian_blur_is_scipys_away_from_the_border_and_keeps_constants():
    import scipy.ndimage

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blurred = data.gaussian_blur(x, torch.tensor([2.0, 0.0], dtype=torch.float64))
    reference = scipy.ndimage.gaussian_filter(x[0].numpy(), sigma=(0, 2.0, 2.0), truncate=8.0)
    torch.testing.assert_close(blurred[0, :, 20:44, 20:44], torch.from_numpy(reference)[:, 20:44, 20:44])
    torch.testing.assert_close(blurred[1], x[1])
    constant = torch.full((1, 1, 9, 9), 3.0)
    torch.testing.assert_close(data.gaussian_blur(constant, 50.0), constant)


def test_mosaics_tile_instances_of_the_label_with_their_masks():
    source = data.shapes(60, seed=2)
    mosaics = data.mosaics(source, 5, instances=2, seed=1)
    assert mosaics.images.shape == (5, 3, 128, 128) and mosaics.instance_masks.shape == (5, 2, 128, 128)
    assert torch.equal(mosaics.masks, mosaics.instance_masks.any(dim=1))
    for image, label, instances in zip(mosaics.images, mosaics.labels, mosaics.instance_masks):
        tiles = image.unfold(1, 64, 64).unfold(2, 64, 64).permute(1, 2, 0, 3, 4).reshape(4, 3, 64, 64)
        sources = [int(((source.images - tile).abs().flatten(1).amax(1) == 0).nonzero()[0]) for tile in tiles]
        labels = source.labels[sources]
        assert (labels == label).sum() == 2
        tile_masks = instances.unfold(1, 64, 64).unfold(2, 64, 64).reshape(2, 4, 64, 64)
        for k in range(2):
            owner = int(tile_masks[k].flatten(1).any(1).nonzero()[0])
            assert labels[owner] == label and torch.equal(tile_masks[k, owner], source.masks[sources[owner]])
    assert not (mosaics.instance_masks[:, 0] & mosaics.instance_masks[:, 1]).any()
    assert torch.equal(data.mosaics(source, 5, instances=2, seed=1).images, mosaics.images)
    with pytest.raises(ValueError, match="too few"):
        data.mosaics(data.shapes(8, seed=2), 5, instances=3)
    with pytest.raises(ValueError, match="instances"):
        data.mosaics(source, 2, instances=5)
