from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kerve_manifest import InputSpec
from service import imaging
from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from tests.helpers import encode, solid, with_declared_size

LIMIT = 40_000_000


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of width x height zeros: tiny on the wire, 400 MP decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_png_bomb_is_refused_before_decoding():
    bomb = png_bomb()
    assert len(bomb) < 200_000
    with pytest.raises(PayloadTooLarge):
        imaging.decode_image(bomb, LIMIT)


def test_pixel_limit_is_enforced():
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        imaging.decode_image(encode(solid((1, 2, 3), (20, 20)), "PNG"), max_pixels=100)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", InvalidImage),
        (b"just some text, not a picture\n", InvalidImage),
        (b"\x89PNG\r\n\x1a\n garbage after a png signature", InvalidImage),
    ],
)
def test_undecodable_data_is_invalid(data, error):
    with pytest.raises(error):
        imaging.decode_image(data, LIMIT)


def test_truncated_jpeg_is_invalid(photo):
    jpeg = encode(photo, "JPEG")
    with pytest.raises(InvalidImage, match="truncated"):
        imaging.decode_image(jpeg[: len(jpeg) // 2], LIMIT)


def test_tiff_is_unsupported_media_type(photo):
    with pytest.raises(UnsupportedMediaType):
        imaging.decode_image(encode(photo, "TIFF"), LIMIT)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_accepted_formats_decode_to_their_size(photo, image_format):
    image = imaging.decode_image(encode(photo, image_format), LIMIT)
    assert image.size == (photo.shape[1], photo.shape[0])


def test_one_pixel_image_becomes_a_full_sample():
    spec = InputSpec.scaled(8, 8, 3, "unit")
    sample = imaging.load_sample(encode(solid((255, 0, 0), (1, 1)), "PNG"), spec, LIMIT)
    assert sample.shape == (8, 8, 3)
    np.testing.assert_allclose(sample[..., 0], 1.0)
    np.testing.assert_allclose(sample[..., 1:], 0.0)


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 tall, left half red; orientation 6 means "rotate 90 clockwise".
    stored = solid((0, 0, 255), (40, 20))
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION] = 6
    upright = imaging.decode_image(encode(stored, "JPEG", exif=exif, quality=95), LIMIT)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # the red half is now on top
    assert pixels[35, 10, 2] > 200


def test_large_jpeg_decodes_at_reduced_scale(photo):
    big = np.asarray(Image.fromarray(photo).resize((2400, 1600)))
    image = imaging.decode_image(encode(big, "JPEG"), LIMIT, target_size=(224, 224))
    # 1/8 would give 300x200, below the 224 target; 1/4 is the smallest that fits.
    assert image.size == (600, 400)


def test_jpeg_draft_never_goes_below_target():
    image = imaging.decode_image(encode(solid((9, 9, 9), (2000, 2000)), "JPEG"), LIMIT, (224, 224))
    assert image.size == (250, 250)  # 1/8 scale: the smallest that is still >= 224


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    image = imaging.to_mode(imaging.decode_image(encode(rgba, "PNG"), LIMIT), 3)
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[3, 3]) == (255, 255, 255)


def test_palette_with_transparency_is_composited():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 2, 4))
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    pixels = np.asarray(imaging.to_mode(imaging.decode_image(buffer.getvalue(), LIMIT), 3))
    assert tuple(pixels[0, 0]) == (0, 255, 0)
    assert tuple(pixels[0, 3]) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped():
    levels = np.array([[0, 32896, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG")
    image = imaging.decode_image(buffer.getvalue(), LIMIT)
    assert image.mode.startswith("I")
    pixels = np.asarray(imaging.to_mode(image, 3))
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    buffer = io.BytesIO()
    cmyk.save(buffer, format="JPEG", quality=95)
    pixels = np.asarray(imaging.to_mode(imaging.decode_image(buffer.getvalue(), LIMIT), 3))
    assert pixels[4, 4, 0] > 200 and pixels[4, 4, 1] < 60 and pixels[4, 4, 2] < 60


def test_grayscale_model_gets_one_channel(photo):
    spec = InputSpec.scaled(28, 28, 1, "unit")
    sample = imaging.load_sample(encode(photo, "JPEG"), spec, LIMIT)
    assert sample.shape == (28, 28, 1)
    assert sample.min() >= 0.0 and sample.max() <= 1.0


def test_normalisation_follows_the_manifest():
    spec = InputSpec(height=2, width=2, channels=3, mean=[100, 0, 50], std=[2, 1, 5])
    sample = imaging.load_sample(encode(solid((110, 20, 100), (2, 2)), "PNG"), spec, LIMIT)
    np.testing.assert_allclose(sample[0, 0], [5.0, 20.0, 10.0])


def test_class_palette_is_the_pascal_voc_colour_map():
    palette = imaging.class_palette(21)
    assert palette[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert palette[15].tolist() == [192, 128, 128]  # VOC "person"
    assert len({tuple(colour) for colour in palette}) == 21


def test_mask_png_keeps_class_indices_and_overlay_leaves_background_alone():
    classes = np.array([[0, 1], [2, 0]], np.uint8)
    mask = imaging.mask_image(classes, imaging.class_palette(3))
    decoded = Image.open(io.BytesIO(imaging.encode_png(mask)))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded), classes)
    photo = Image.fromarray(np.full((2, 2, 3), 100, np.uint8))
    blended = np.asarray(imaging.overlay(photo, mask))
    assert blended[0, 0].tolist() == [100, 100, 100] and blended[1, 1].tolist() == [100, 100, 100]
    assert blended[0, 1].tolist() == [114, 50, 50]  # halfway to (128, 0, 0)


@pytest.mark.parametrize(("shape", "mode"), [((28, 28), "L"), ((5, 64, 3), "RGB"), ((1, 1), "L")])
def test_small_png_is_written_here_and_decodes_to_the_same_pixels(shape, mode):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    png = imaging.encode_png(Image.fromarray(pixels, mode))
    assert png.startswith(imaging.PNG_SIGNATURE)
    # written by encode_png itself: IHDR, one IDAT, IEND and nothing else
    assert [png[i : i + 4] for i in (12, 37)] == [b"IHDR", b"IDAT"]
    (idat_length,) = struct.unpack(">I", png[33:37])
    assert len(png) == 8 + 25 + 12 + idat_length + 12 and png.endswith(b"IEND\xaeB`\x82")
    Image.open(io.BytesIO(png)).verify()  # every chunk's CRC
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == mode and np.array_equal(np.asarray(decoded), pixels)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_whose_data_ends_before_its_declared_size_is_refused(progressive):
    """libjpeg pads such an image with grey and only warns: 12 KB claiming 6000x6000."""
    pixels = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    small = encode(pixels, "JPEG", quality=90, progressive=progressive)
    with pytest.raises(InvalidImage, match="truncated.*6000x6000"):
        imaging.decode_image(with_declared_size(small, 6000, 6000), LIMIT)


@pytest.mark.parametrize("progressive", [False, True])
def test_the_smallest_real_jpegs_of_their_size_are_accepted(progressive):
    """One flat colour with optimised Huffman tables: as few bytes a pixel as JPEG gets."""
    flat = encode(solid((90, 90, 90), (3000, 2000)), "JPEG", optimize=True, progressive=progressive)
    assert len(flat) < 3000 * 2000 / 64  # well under a byte per block
    assert imaging.decode_image(flat, LIMIT).size == (3000, 2000)
