"""Reading real-world image files, writing marked copies safely, and the manifest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data as skdata

from tracemark.errors import TracemarkError
from tracemark.images import (
    ImageSet,
    detect_mode,
    encode_image,
    list_images,
    plan_outputs,
    quantize,
    read_folder,
    read_image,
    read_manifest,
    sha256_bytes,
    to_uint8,
    write_images,
    write_manifest,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()[100:196, 150:278]  # uint8 (96, 128, 3), a face


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return skdata.camera()[100:180, 200:264]  # uint8 (80, 64)


# --------------------------------------------------------------------------- listing


def test_list_images_recursive_sorted_skips_hidden(tmp_path):
    for rel in ["b.PNG", "a.jpg", "sub/c.jpeg", "sub/deep/d.webp", "e.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    for rel in [".hidden.png", ".git/f.png", "sub/.cache/g.png", "notes.txt", "h.tiff"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert list_images(tmp_path) == ["a.jpg", "b.PNG", "e.bmp", "sub/c.jpeg", "sub/deep/d.webp"]


def test_list_images_errors(tmp_path):
    with pytest.raises(TracemarkError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(TracemarkError, match="not a folder"):
        list_images(tmp_path / "f.png")


# --------------------------------------------------------------------------- reading


def test_exif_orientation_is_applied(tmp_path, astronaut):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(astronaut).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"), dtype=np.float32) / 255  # as stored, 96x128
    x = read_image(path)
    assert stored.shape == (96, 128, 3)
    assert x.shape == (128, 96, 3)
    np.testing.assert_array_equal(x, np.rot90(stored, k=-1))
    # The stored top-left corner is now the top-right corner.
    np.testing.assert_array_equal(x[0, -1], stored[0, 0])


def test_rgb_png_round_trip_exact(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.dtype == np.float32 and x.shape == (96, 128, 3)
    np.testing.assert_array_equal(to_uint8(x), astronaut)


def test_rgba_transparent_pixels_become_white(tmp_path, astronaut):
    alpha = np.full(astronaut.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0
    alpha[:, 40:60] = 128
    Image.fromarray(np.dstack([astronaut, alpha])).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.shape == (96, 128, 3)
    np.testing.assert_array_equal(x[:, :40], 1.0)
    np.testing.assert_allclose(x[:, 60:], astronaut[:, 60:] / 255, atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(x[:, 40:60], astronaut[:, 40:60] / 255 * a + (1 - a), atol=1e-6)
    grey = read_image(tmp_path / "a.png", mode="L")
    assert grey.shape == (96, 128, 1)
    np.testing.assert_allclose(grey[:, :40], 1.0, atol=1e-6)


def test_palette_image(tmp_path, astronaut):
    im = Image.fromarray(astronaut).quantize(64)
    assert im.mode == "P"
    im.save(tmp_path / "p.png")
    x = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(to_uint8(x), np.asarray(im.convert("RGB")))
    assert detect_mode([tmp_path / "p.png"]) == "RGB"


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 4, 8))
    im.info["transparency"] = 1
    im.save(tmp_path / "t.png", transparency=1)
    x = read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(x[:, :4], 1.0)  # transparent blue → white
    np.testing.assert_array_equal(x[:, 4:], np.broadcast_to([1.0, 0.0, 0.0], (8, 4, 3)))


def test_grey_palette_detected_as_grey(tmp_path, camera):
    im = Image.fromarray(camera).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    grey = [v for i in range(256) for v in (i, i, i)]
    im.putpalette(grey)
    im.save(tmp_path / "gp.png")
    assert detect_mode([tmp_path / "gp.png"]) == "L"
    assert read_image(tmp_path / "gp.png", mode="L").shape == (80, 64, 1)


def test_la_image(tmp_path, camera):
    alpha = np.full(camera.shape, 255, np.uint8)
    alpha[:10] = 0
    Image.fromarray(np.dstack([camera, alpha]), mode="LA").save(tmp_path / "la.png")
    assert detect_mode([tmp_path / "la.png"]) == "L"
    x = read_image(tmp_path / "la.png", mode="L")
    assert x.shape == (80, 64, 1)
    np.testing.assert_array_equal(x[:10], 1.0)
    np.testing.assert_allclose(x[10:, :, 0], camera[10:] / 255, atol=1e-6)
    rgb = read_image(tmp_path / "la.png", mode="RGB")
    np.testing.assert_array_equal(rgb, np.repeat(x, 3, axis=-1))


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    assert detect_mode([tmp_path / "deep.png"]) == "L"
    x = read_image(tmp_path / "deep.png", mode="L")
    np.testing.assert_allclose(x[0, :, 0], a[0] / 65535, rtol=1e-6)
    assert 0.49 < x[0, 2, 0] < 0.51  # Pillow's convert("L") would give 1.0 here


def test_mode_i_and_f(tmp_path):
    Image.fromarray(np.array([[0, 65535, 70000, -5]], np.int32)).save(tmp_path / "i.tif")
    x = read_image(tmp_path / "i.tif", mode="L")
    np.testing.assert_allclose(x[0, :, 0], [0, 1, 1, 0])
    Image.fromarray(np.array([[-3.0, 0.0, 127.5, 255.0, 300.0]], np.float32)).save(
        tmp_path / "f.tif"
    )
    y = read_image(tmp_path / "f.tif", mode="L")
    np.testing.assert_allclose(y[0, :, 0], [0, 0, 0.5, 1, 1])


def test_cmyk(tmp_path, astronaut):
    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "c.tif")
    with Image.open(tmp_path / "c.tif") as im:
        assert im.mode == "CMYK"
    x = read_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(to_uint8(x), astronaut)
    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert read_image(tmp_path / "c.jpg").shape == (96, 128, 3)


def test_one_bit(tmp_path, camera):
    bits = camera > 128
    Image.fromarray(bits).save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "1"
    assert detect_mode([tmp_path / "b.png"]) == "L"
    x = read_image(tmp_path / "b.png", mode="L")
    np.testing.assert_array_equal(x[..., 0], bits.astype(np.float32))


def test_rgb_as_grey_matches_pillow(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", mode="L")
    expected = np.asarray(Image.fromarray(astronaut).convert("L"), dtype=np.float32) / 255
    np.testing.assert_array_equal(x[..., 0], expected)


def test_resize(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", size=(32, 48))
    assert x.shape == (32, 48, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    ref = np.asarray(Image.fromarray(astronaut).resize((48, 32), Image.Resampling.BICUBIC)) / 255
    assert np.abs(x - ref).max() < 3 / 255


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(2000), b"\x89PNG\r\n\x1a\n" + os.urandom(100), b"hello, this is text"],
)
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken-holiday.png"
    path.write_bytes(content)
    with pytest.raises(TracemarkError, match=r"broken-holiday\.png"):
        read_image(path)


def test_truncated_png_and_jpeg(tmp_path, astronaut):
    for name in ("cut.png", "cut.jpg"):
        full = tmp_path / f"full-{name}"
        Image.fromarray(astronaut).save(full)
        blob = full.read_bytes()
        (tmp_path / name).write_bytes(blob[: len(blob) // 2])
        with pytest.raises(TracemarkError, match=name):
            read_image(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(TracemarkError, match=r"ghost\.png"):
        read_image(tmp_path / "ghost.png")


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(TracemarkError, match=r"big\.png.*decompression bomb.*max_pixels"):
        read_image(tmp_path / "big.png", max_pixels=1_000_000)

    loads = []
    original = ImageFile.ImageFile.load

    def spy(self):
        loads.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(TracemarkError, match="decompression bomb"):
        read_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert loads == []  # refused from the header alone
    assert read_image(tmp_path / "big.png", max_pixels=9_000_000, mode="L").shape[:2] == (
        3000,
        3000,
    )
    assert loads  # the spy does see real decodes


def test_pillow_bomb_error_is_translated(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow errors above 2x this
    with pytest.raises(TracemarkError, match=r"b\.png.*decompression bomb"):
        read_image(tmp_path / "b.png")


# --------------------------------------------------------------------------- folders


def test_read_folder_auto_mode_progress_and_stack(tmp_path, camera, astronaut):
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(camera, i, axis=0)).save(grey / f"{i}.png")
    calls = []
    s = read_folder(grey, progress=calls.append)
    assert isinstance(s, ImageSet)
    assert s.mode == "L" and calls == [1, 1, 1] and s.rel_paths == ["0.png", "1.png", "2.png"]
    assert s.stack().shape == (3, 80, 64, 1)
    Image.fromarray(astronaut).save(grey / "3.png")
    mixed = read_folder(grey)
    assert mixed.mode == "RGB"
    with pytest.raises(TracemarkError, match="--size"):
        mixed.stack()
    assert read_folder(grey, size=(20, 30)).stack().shape == (4, 20, 30, 3)


def test_read_folder_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(TracemarkError, match="contains no images"):
        read_folder(tmp_path)


# --------------------------------------------------------------------------- writing


def test_to_uint8_and_quantize():
    x = np.array([-0.1, 0.0, 0.5 / 255, 0.2, 1.0, 1.5, np.nan], np.float32)
    u = to_uint8(x)
    assert u.dtype == np.uint8
    np.testing.assert_array_equal(u, [0, 0, 0, 51, 255, 255, 0])
    q = quantize(x)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q, u / np.float32(255))


def test_png_round_trip_exact_through_quantize(tmp_path):
    rng = np.random.default_rng(0)
    for c in (1, 3):
        x = rng.random((17, 23, c), dtype=np.float32)
        (tmp_path / f"x{c}.png").write_bytes(encode_image(x))
        back = read_image(tmp_path / f"x{c}.png", mode="L" if c == 1 else "RGB")
        np.testing.assert_array_equal(back, quantize(x))


def test_encode_jpeg_and_bad_input(astronaut):
    blob = encode_image(astronaut / 255, fmt="jpeg", quality=90)
    assert blob[:3] == b"\xff\xd8\xff"
    with pytest.raises(TracemarkError):
        encode_image(np.zeros((4, 4, 2), np.float32))
    with pytest.raises(TracemarkError):
        encode_image(np.zeros((4, 4, 3), np.float32), fmt="gif")


def _images(n=3, shape=(12, 10, 3)):
    rng = np.random.default_rng(1)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def test_write_images_mirrors_tree_and_hashes(tmp_path):
    src = tmp_path / "src"
    out = tmp_path / "out"
    src.mkdir()
    rels = ["a.jpg", "sub/b.JPEG", "sub/deep/c.webp"]
    imgs = _images()
    calls = []
    written = write_images(imgs, rels, out, src_root=src, progress=calls.append)
    assert [w["marked"] for w in written] == ["a.png", "sub/b.png", "sub/deep/c.png"]
    assert calls == [1, 1, 1]
    for w, x in zip(written, imgs, strict=True):
        assert sha256_bytes((out / w["marked"]).read_bytes()) == w["marked_sha256"]
        np.testing.assert_array_equal(read_image(out / w["marked"]), quantize(x))
    assert list_images(out) == ["a.png", "sub/b.png", "sub/deep/c.png"]
    # atomic writes leave no temporary files behind
    assert [p.name for p in out.rglob("*") if p.name.startswith(".")] == []
    jpg = write_images(imgs, rels, tmp_path / "jpg", fmt="jpeg", quality=80)
    assert jpg[0]["marked"] == "a.jpg"
    assert read_image(tmp_path / "jpg" / "a.jpg").shape == (12, 10, 3)


def test_write_images_refuses_existing_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"precious")
    imgs = _images()
    with pytest.raises(TracemarkError, match=r"b\.png.*--force"):
        write_images(imgs, ["a.png", "b.png", "c.png"], out)
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]  # nothing written
    assert (out / "b.png").read_bytes() == b"precious"
    written = write_images(imgs, ["a.png", "b.png", "c.png"], out, force=True)
    assert (out / "b.png").read_bytes() != b"precious"
    assert sha256_bytes((out / "b.png").read_bytes()) == written[1]["marked_sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]


def test_write_images_refuses_to_write_into_source(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    imgs, rels = _images(1), ["a.png"]
    with pytest.raises(TracemarkError, match="is the source folder"):
        write_images(imgs, rels, src, src_root=src)
    with pytest.raises(TracemarkError, match="inside the source folder"):
        write_images(imgs, rels, src / "marked", src_root=src)
    with pytest.raises(TracemarkError, match="contains the source folder"):
        write_images(imgs, rels, tmp_path, src_root=src)
    link = tmp_path / "alias"
    link.symlink_to(src)
    with pytest.raises(TracemarkError, match="is the source folder"):
        write_images(imgs, rels, link, src_root=src)
    with pytest.raises(TracemarkError, match="inside the source folder"):
        write_images(imgs, rels, link / "out", src_root=src)
    assert list(src.iterdir()) == []


def test_plan_outputs_collision(tmp_path):
    assert plan_outputs(tmp_path, ["x/a.bmp", "b.png"], tmp_path / "o", "jpeg") == [
        "x/a.jpg",
        "b.jpg",
    ]
    with pytest.raises(TracemarkError, match=r"a\.jpg and a\.png.*rename"):
        plan_outputs(tmp_path, ["a.jpg", "a.png"], tmp_path / "o", "png")
    with pytest.raises(TracemarkError):
        plan_outputs(tmp_path, ["../escape.png"], tmp_path / "o", "png")
    with pytest.raises(TracemarkError, match="rename"):
        write_images(_images(2), ["a.jpg", "a.png"], tmp_path / "o")
    bad = [*_images(2), np.zeros((4, 4, 2), np.float32)]
    with pytest.raises(TracemarkError, match="nothing was written"):
        write_images(bad, ["a.png", "b.png", "c.png"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trip_and_no_overwrite(tmp_path):
    path = tmp_path / "m.json"
    entries = [{"source": "a.png", "marked": "a.png", "marked_sha256": "00" * 32}]
    meta = {"method": "tracker", "params": {"eps": np.float32(0.5), "n": np.int64(3)}}
    write_manifest(path, entries, meta)
    doc = read_manifest(path)
    assert doc["format"] == "tracemark-manifest" and doc["version"] == 1
    assert doc["files"] == entries and doc["method"] == "tracker"
    assert doc["params"] == {"eps": 0.5, "n": 3}
    with pytest.raises(TracemarkError, match="--force"):
        write_manifest(path, [], meta)
    assert read_manifest(path)["files"] == entries
    write_manifest(path, [], meta, force=True)
    assert read_manifest(path)["files"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(TracemarkError, match="does not exist"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TracemarkError, match=r"bad\.json"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something", "files": []}))
    with pytest.raises(TracemarkError, match="not a tracemark manifest"):
        read_manifest(tmp_path / "other.json")
    (tmp_path / "v9.json").write_text(
        json.dumps({"format": "tracemark-manifest", "version": 9, "files": []})
    )
    with pytest.raises(TracemarkError, match="upgrade"):
        read_manifest(tmp_path / "v9.json")


def _numpy_to_uint8(x):
    """The 8-bit rounding as NumPy defines it: float32, fmax 0, times 255, rint, min 255."""
    v = np.fmax(np.asarray(x).astype(np.float32), np.float32(0)) * np.float32(255)
    return np.minimum(np.rint(v), np.float32(255)).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_datasets_round_and_read_back_as_single_images_do(dtype):
    """Arrays of COMPILED_FROM values or more take the compiled loops on every core; they
    give every value the NumPy loops give (NaN, infinities, negatives, above 1, the
    halfway points between 8-bit levels, and the float32 rounding of float64 input)."""
    from tracemark.images import COMPILED_FROM, from_uint8, to_uint8

    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 1.2, COMPILED_FROM + 12345).astype(dtype)
    levels = (np.arange(256) + 0.5) / 255  # exactly between two levels
    x[: 2 * 256 : 2] = levels.astype(dtype)
    x[1 : 2 * 256 : 2] = np.nextafter(levels, 2).astype(dtype)
    x[600:606] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0]
    np.testing.assert_array_equal(to_uint8(x), _numpy_to_uint8(x))
    small = to_uint8(x[:4096])  # the NumPy path
    np.testing.assert_array_equal(small, _numpy_to_uint8(x[:4096]))
    pixels = rng.integers(0, 256, (COMPILED_FROM // 3 + 7, 3), dtype=np.uint8)
    back = from_uint8(pixels)
    assert back.dtype == np.float32 and back.shape == pixels.shape
    want = pixels.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(back.view(np.uint32), want.view(np.uint32))
