"""Dev-only: images as users have them (tests/fixtures/images), from one shipped test image.

The upright image is models/images/0000-ankle-boot.png (28x28 gray). Each fixture holds the
same picture another way: rotated on disk with an EXIF orientation that undoes the rotation
(6: rotate 90 clockwise to display, 8: 90 counter-clockwise, 3: 180), in WebP (lossless), BMP,
TIFF, 16-bit and palette PNG, and RGBA with an opaque alpha channel.

    python tests/python/make_image_fixtures.py
"""
import os

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(HERE, "..", "fixtures", "images")


def with_orientation(img, orientation, path):
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


def main():
    os.makedirs(OUT, exist_ok=True)
    src = Image.open(os.path.join(ROOT, "models", "images", "0000-ankle-boot.png")).convert("L")
    # On disk rotated; the tag tells the viewer how to turn it back upright.
    with_orientation(src.transpose(Image.Transpose.ROTATE_90), 6, os.path.join(OUT, "boot-exif6.png"))
    with_orientation(src.transpose(Image.Transpose.ROTATE_270), 8, os.path.join(OUT, "boot-exif8.png"))
    with_orientation(src.transpose(Image.Transpose.ROTATE_180), 3, os.path.join(OUT, "boot-exif3.png"))
    src.transpose(Image.Transpose.ROTATE_90).save(
        os.path.join(OUT, "boot-exif6.jpg"), quality=100, exif=_exif(6))
    src.save(os.path.join(OUT, "boot.webp"), lossless=True)
    src.save(os.path.join(OUT, "boot.bmp"))
    src.save(os.path.join(OUT, "boot.tiff"))
    src.convert("I;16").point(lambda v: v * 257).save(os.path.join(OUT, "boot-16bit.png"))
    src.convert("P").save(os.path.join(OUT, "boot-palette.png"))
    rgba = src.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(os.path.join(OUT, "boot-rgba.png"))


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


if __name__ == "__main__":
    main()
