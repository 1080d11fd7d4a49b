"""`data/ingest.probe_image`, each refusal with its own reason (the quarantine shows it to the user), the
byte cap at its bound, and the digest and perceptual hash of what was accepted."""

import hashlib
import os

import imagehash
import pytest
from PIL import Image

from mathllava.data.ingest import ImageLimits, probe_image


@pytest.fixture()
def png(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def test_an_accepted_image_carries_the_file_digest_and_the_perceptual_hash(png):
    info = probe_image(png, ImageLimits())
    assert info.ok and info.error is None
    assert info.sha256 == hashlib.sha256(png.read_bytes()).hexdigest()
    with Image.open(png) as img:
        assert info.phash == str(imagehash.phash(img))
    assert (info.width, info.height, info.format, info.size) == (64, 48, "PNG", png.stat().st_size)


def test_a_file_read_in_several_chunks_has_the_digest_of_all_its_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr("mathllava.data.ingest.CHUNK", 100)
    path = tmp_path / "b.png"
    Image.effect_noise((80, 80), 60).save(path)
    assert path.stat().st_size > 1000
    assert probe_image(path, ImageLimits()).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_byte_cap_admits_a_file_of_exactly_max_bytes(png):
    size = png.stat().st_size
    assert probe_image(png, ImageLimits(max_bytes=size)).ok
    refused = probe_image(png, ImageLimits(max_bytes=size - 1))
    assert not refused.ok and refused.sha256 is None
    assert refused.error == f"image file too large: {size} bytes > {size - 1}"


def test_missing_empty_and_not_a_file_each_say_so(tmp_path, png):
    assert probe_image(tmp_path / "nope.png", ImageLimits()).error == f"image file missing: {tmp_path / 'nope.png'}"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert probe_image(empty, ImageLimits()).error == "image file is empty"
    one = tmp_path / "one.png"
    one.write_bytes(b"\x89")           # one byte: not empty, not an image
    assert probe_image(one, ImageLimits()).error.startswith("image does not decode: UnidentifiedImageError: ")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert probe_image(folder, ImageLimits()).error == f"image path is not a file: {folder}"
    below_a_file = png / "x.png"       # stat fails with ENOTDIR, not ENOENT
    info = probe_image(below_a_file, ImageLimits())
    assert not info.ok and info.error == f"image file unreadable: {below_a_file}: {os.strerror(20)}"


def test_a_read_error_while_hashing_is_reported_with_its_cause(png, monkeypatch):
    def failing_open(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("mathllava.data.ingest.open", failing_open, raising=False)
    info = probe_image(png, ImageLimits())
    assert not info.ok and info.sha256 is None
    assert info.error == f"image file unreadable: {png}: Input/output error"


def test_pillows_own_bomb_guard_is_reported_as_a_bomb(png, monkeypatch):
    """Pillow refuses an image over twice its MAX_IMAGE_PIXELS while opening it, before our own cap is read."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    info = probe_image(png, ImageLimits(max_pixels=10**9))
    assert not info.ok and info.phash is None
    assert info.error.startswith("decompression bomb refused: Image size (3072 pixels) exceeds limit of 200 pixels")


def test_a_decode_error_names_the_exception_and_is_cut_at_300_characters(tmp_path):
    long_name = tmp_path / ("x" * 240 + ".png")
    long_name.write_bytes(b"not an image at all" * 10)
    info = probe_image(long_name, ImageLimits())
    assert not info.ok and info.sha256 == hashlib.sha256(long_name.read_bytes()).hexdigest()
    full = f"image does not decode: UnidentifiedImageError: cannot identify image file {str(long_name)!r}"
    assert len(full) > 300 and info.error == full[:300]
