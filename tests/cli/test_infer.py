"""``python -m vosr.infer`` end to end with a tiny random-weight export on real photos and bad files."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.export_helpers import make_export, photo
from vosr.infer import main
from vosr.inference.files import plan_outputs

FAST = ["--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("ckpt") / "student.safetensors", "model.with_r=true")


def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_folder_any_aspect_skip_existing_and_overwrite(tmp_path, teacher):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "wide.png", Image.fromarray(photo(0, 20, 37, 50, 50)))
    _save(src / "tall.jpg", Image.fromarray(photo(3, 29, 14, 100, 200)), quality=95)
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(out), *FAST]) == 0
    assert _read(out / "wide.png").shape == (80, 148, 3)
    assert _read(out / "tall.png").shape == (116, 56, 3)
    first = (out / "wide.png").read_bytes()
    stamp = (out / "wide.png").stat().st_mtime_ns
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(out), *FAST, "--seed", "5"]) == 0
    assert (out / "wide.png").stat().st_mtime_ns == stamp  # existing output skipped
    assert main(["-c", str(teacher), "-i", str(src / "wide.png"), "-o", str(out), *FAST, "--seed", "5",
                 "--overwrite"]) == 0
    assert (out / "wide.png").read_bytes() != first  # other seed, rewritten
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_seeded_one_step_student_is_deterministic(tmp_path, student):
    src = _save(tmp_path / "a.png", Image.fromarray(photo(2, 24, 24, 80, 120)))
    outs = []
    for name, seed in (("o1", 3), ("o2", 3), ("o3", 4)):
        assert main(["-c", str(student), "-i", str(src), "-o", str(tmp_path / name), "--seed", str(seed),
                     "--device", "cpu", "--color-fix", "wavelet"]) == 0
        outs.append(_read(tmp_path / name / "a.png"))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_student_steps_chain_and_refuses_guidance(tmp_path, student, capsys):
    """--steps 2 runs the student's two-step chain; --guidance on a student is an error, not silently ignored."""
    src = _save(tmp_path / "a.png", Image.fromarray(photo(2, 24, 24, 80, 120)))
    assert main(["-c", str(student), "-i", str(src), "-o", str(tmp_path / "one"), "--device", "cpu"]) == 0
    assert main(["-c", str(student), "-i", str(src), "-o", str(tmp_path / "two"), "--device", "cpu",
                 "--steps", "2"]) == 0
    assert not np.array_equal(_read(tmp_path / "one" / "a.png"), _read(tmp_path / "two" / "a.png"))
    assert main(["-c", str(student), "-i", str(src), "-o", str(tmp_path / "g"), "--guidance", "0.5"]) == 2
    assert "distilled student" in capsys.readouterr().err and not (tmp_path / "g" / "a.png").exists()


def test_options_scale_tile_colorfix(tmp_path, teacher):
    src = _save(tmp_path / "in" / "x.png", Image.fromarray(photo(1, 30, 44, 120, 160)))
    args = ["-c", str(teacher), "-i", str(src), *FAST]
    assert main([*args, "-o", str(tmp_path / "s2"), "--scale", "2"]) == 0
    assert _read(tmp_path / "s2" / "x.png").shape == (60, 88, 3)
    assert main([*args, "-o", str(tmp_path / "t"), "--tile", "64", "--overlap", "16", "--batch", "2",
                 "--color-fix", "adain", "--guidance", "-0.5", "--weak-anchor", "0.1"]) == 0
    assert _read(tmp_path / "t" / "x.png").shape == (120, 176, 3)


def _png_rgb48(path: Path, rgb16: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _bad_inputs(folder: Path) -> dict[str, bool]:
    """Write awkward files; map name -> whether an output is expected."""
    rgb = photo(4, 36, 40, 100, 100)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    (folder / "truncated_jpeg.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "notes.jpg").write_bytes(b"this is not an image")
    _save(folder / "gray.png", Image.fromarray(rgb).convert("L"))
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (36, 1))))
    _save(folder / "rgba.png", rgba)
    _save(folder / "deep16.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    _png_rgb48(folder / "rgb48.png", rgb.astype(np.uint16) * 257)
    _save(folder / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    _save(folder / "palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    _save(folder / "tiny.png", Image.fromarray(rgb[:5, :6]))
    _save(folder / "huge.png", Image.fromarray(photo(0, 80, 80)))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise on display
    _save(folder / "rotated.jpg", Image.fromarray(rgb[:, :20]), quality=95, exif=exif)
    return {"truncated": False, "truncated_jpeg": False, "corrupt": False, "notes": False, "gray": True,
            "rgba": True, "deep16": True, "rgb48": True, "cmyk": True, "palette": True, "tiny": False, "huge": False,
            "rotated": True}


def test_bad_inputs_are_handled_or_skipped(tmp_path, teacher, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    expected = _bad_inputs(src)
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(out), *FAST, "--max-pixels", "5000"]) == 0
    produced = {p.stem for p in out.glob("*.png")}
    assert produced == {name for name, ok in expected.items() if ok}
    for name in ("truncated", "corrupt", "notes", "tiny", "huge"):
        assert any(name in r.getMessage() and "skip" in r.getMessage() for r in caplog.records), name
    assert _read(out / "rgba.png").shape == (144, 160, 4)  # transparency carried over
    assert _read(out / "rotated.png").shape == (80, 144, 3)  # EXIF rotation applied before upscaling
    gray = _read(out / "deep16.png")
    assert gray.shape == (144, 160, 3) and gray.std() > 5  # 16-bit scaled to 8 bits, not clipped flat
    assert _read(out / "rgb48.png").shape == (144, 160, 3)


def test_nothing_produced_is_an_error(tmp_path, teacher):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.png").write_bytes(b"garbage")
    assert main(["-c", str(teacher), "-i", str(src), "-o", str(tmp_path / "out"), *FAST]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-c", str(teacher), "-i", str(empty), "-o", str(tmp_path / "out"), *FAST]) == 1


def test_never_overwrites_inputs(tmp_path, teacher):
    src = _save(tmp_path / "a.png", Image.fromarray(photo(1, 16, 16)))
    before = src.read_bytes()
    assert main(["-c", str(teacher), "-i", str(tmp_path), "-o", str(tmp_path), *FAST]) == 2
    assert src.read_bytes() == before
    pairs = plan_outputs([tmp_path / "b.jpg", tmp_path / "b.png", tmp_path / "c.webp"], tmp_path / "o")
    assert [p[1].name for p in pairs] == ["b_jpg.png", "b_png.png", "c.png"]


def test_missing_checkpoint_and_released_without_config(tmp_path):
    src = _save(tmp_path / "a.png", Image.fromarray(photo(1, 16, 16)))
    assert main(["-c", str(tmp_path / "nope.safetensors"), "-i", str(src), "-o", str(tmp_path / "o")]) == 2
