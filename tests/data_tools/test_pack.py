"""data_tools/pack.py on real photos written in many formats and modes: kept bytes, flat and corrupt skips,
dedup, tiles, crops, manifest, resume, parts."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tests.conftest import real_photos
from vosr.data.crops import CropSpec, cut, decode
from vosr.images import composite_on_white, rgb8_on_white, to_rgb8

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "data_tools" / "pack.py"


def load_pack():
    """Import data_tools/pack.py from its path, the way a user's script would."""
    spec = importlib.util.spec_from_file_location("data_tools_pack_under_test", PACK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pack = load_pack()


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one), written chunk by chunk."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Real photos as files: many formats and modes, plus broken, tiny and duplicate files."""
    root = tmp_path_factory.mktemp("photos")
    astro, coffee, chelsea, rocket, moto = real_photos()
    save(Image.fromarray(astro), root / "a" / "astro.png")
    save(Image.fromarray(coffee), root / "a" / "COFFEE.JPG", quality=95)
    save(Image.fromarray(chelsea).convert("CMYK"), root / "b" / "cmyk.jpg", quality=95)
    gray = rocket[..., 0].astype(np.uint16) * 257
    save(Image.fromarray(gray), root / "b" / "gray16.png")
    (root / "b" / "rgb16.png").write_bytes(png16(chelsea[:200, :300].astype(np.uint16) * 257))
    save(Image.fromarray(moto).quantize(64), root / "c" / "palette.png")
    rgba = np.dstack([coffee[:256, :256], np.full((256, 256), 255, np.uint8)])
    rgba[:64, :64, 3] = 0  # a transparent corner: composited on white
    save(Image.fromarray(rgba), root / "c" / "rgba.png")
    opaque = np.dstack([rocket[:256, :300], np.full((256, 300), 255, np.uint8)])
    save(Image.fromarray(opaque), root / "c" / "opaque.png")
    save(Image.fromarray(moto).convert("L"), root / "c" / "gray.jpeg", quality=95)
    save(Image.fromarray(moto[:300, :400]), root / "c" / "photo.webp", lossless=True)
    save(Image.fromarray(rocket[:200, :260]), root / "c" / "photo.BMP")
    save(Image.fromarray(chelsea[:220, :200]), root / "c" / "photo.tif")
    buf = io.BytesIO()
    Image.fromarray(coffee).save(buf, format="JPEG", quality=95)
    (root / "d").mkdir()
    (root / "d" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "d" / "garbage.png").write_bytes(b"this is not an image" * 50)
    save(Image.fromarray(astro[:40, :50]), root / "d" / "tiny.png")
    (root / "d" / "z_dup.png").write_bytes((root / "a" / "astro.png").read_bytes())  # the same file bytes
    save(Image.fromarray(astro), root / "d" / "z_pixdup.png", compress_level=1)  # other bytes, same pixels
    broken = bytearray((root / "c" / "opaque.png").read_bytes())
    broken[len(broken) // 2] ^= 0xFF  # one flipped bit pattern inside the image data: its chunk CRC fails
    (root / "d" / "crc.png").write_bytes(bytes(broken))
    overlay = np.dstack([chelsea[:200, :300], np.zeros((200, 300), np.uint8)])  # fully transparent: white
    save(Image.fromarray(overlay), root / "e" / "overlay.png")
    save(Image.fromarray(np.full((240, 320, 3), 181, np.uint8)), root / "e" / "gray_card.jpg", quality=90)
    (root / "d" / "notes.md").write_text("not listed: not an image extension")
    return root


N_INPUTS, N_SKIPPED, N_DUPS = 20, 6, 1
SKIP_REASONS = {"truncated.jpg": "corrupt", "garbage.png": "not_an_image", "tiny.png": "too_small",
                "crc.png": "corrupt", "overlay.png": "flat", "gray_card.jpg": "flat"}
ODD_MODES = {"cmyk.jpg": "CMYK", "gray16.png": "I;16", "rgb16.png": "RGB;16", "palette.png": "P", "rgba.png": "RGBA",
             "opaque.png": "RGBA", "gray.jpeg": "L"}


def read_samples(out: Path, decoded: bool = True) -> list[dict]:
    """Every sample of every shard through webdataset, decoded to RGB numpy (else raw bytes)."""
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return list(dataset.decode("rgb8") if decoded else dataset)


def image_of(sample: dict) -> np.ndarray:
    return next(sample[k] for k in ("png", "jpg", "webp") if k in sample)


def test_pack_folder_manifest_and_webdataset(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    pack.main([str(photo_dir), "--out", str(out), "--min-size", "64", "--max-samples", "4", "--workers", "2",
               "--no-progress"])
    m = json.loads((out / "manifest.json").read_text())
    assert (m["inputs"], m["skipped_count"], m["duplicates_count"]) == (N_INPUTS, N_SKIPPED, N_DUPS)
    assert m["samples"] == m["source_images"] == N_INPUTS - N_SKIPPED - N_DUPS
    reasons = {Path(s["path"]).name: s["reason"].split(":")[0] for s in m["skipped"]}
    assert reasons == SKIP_REASONS and m["skipped_by_reason"]["flat"] == 2
    assert [(Path(d["path"]).name, Path(d["duplicate_of"]).name) for d in m["duplicates"]] == [("z_dup.png",
                                                                                              "astro.png")]
    sizes = json.loads((out / "sizes.json").read_text())
    assert sorted(sizes) == [p.name for p in sorted(out.glob("*.tar"))] and max(sizes.values()) <= 4
    assert sum(sizes.values()) == m["samples"] and sum(m["size_histogram"].values()) == m["source_images"]
    samples = read_samples(out)
    assert len(samples) == m["samples"]
    by_name = {}
    for s in samples:
        img, meta = image_of(s), s["json"]
        assert img.dtype == np.uint8 and img.shape == (meta["height"], meta["width"], 3)
        by_name[Path(meta["source"]).name] = (s, meta, img)
    assert m["total_pixels"] == sum(meta["width"] * meta["height"] for _, meta, _ in by_name.values())
    raw = {Path(json.loads(s["json"])["source"]).name: s for s in read_samples(out, decoded=False)}
    check_conversions(by_name, raw)


def stream_rgb(files: dict) -> np.ndarray:
    """A packed sample's raw files as the training stream sees them: decoded and converted by vosr.data.crops."""
    img = decode({k: v for k, v in files.items() if k in ("png", "jpg", "webp")}, CropSpec(size=8))
    return img if isinstance(img, np.ndarray) else rgb8_on_white(img)


def check_conversions(by_name: dict, raw: dict) -> None:
    """Every JPEG/PNG/WebP keeps its bytes whatever its mode; the stream converts them to the RGB that pack
    itself made of them before (pixels of the source through vosr.images, alpha over white); BMP/TIFF are
    converted at pack time."""
    astro, coffee, chelsea, rocket, moto = real_photos()
    for name, meta_mode in (("astro.png", "RGB"), ("COFFEE.JPG", "RGB"), ("photo.webp", "RGB"), *ODD_MODES.items()):
        sample, meta, _ = by_name[name]
        assert meta["encoding"] == "original" and "converted_from" not in meta and meta["mode"] == meta_mode, name
        assert meta["sha256"] == hashlib.sha256(Path(meta["source"]).read_bytes()).hexdigest()
        with Image.open(meta["source"]) as src:  # what pack converted such a file to before it kept the bytes
            before = composite_on_white(*to_rgb8(src))
        np.testing.assert_array_equal(stream_rgb(raw[name]), before, err_msg=name)
        files = {k: v for k, v in raw[name].items() if k in ("png", "jpg", "webp")}
        (crop,) = cut(decode(files, CropSpec(size=32)), [(5, 7, False, False)], 32)  # per-crop conversion
        np.testing.assert_array_equal(crop, before[7:39, 5:37], err_msg=name)
    np.testing.assert_array_equal(stream_rgb(raw["astro.png"]), astro)
    assert np.abs(stream_rgb(raw["cmyk.jpg"]).astype(int) - chelsea).mean() < 4  # jpeg q95 round trip
    np.testing.assert_array_equal(stream_rgb(raw["gray16.png"]), np.repeat(rocket[..., :1], 3, axis=2))
    np.testing.assert_array_equal(stream_rgb(raw["rgb16.png"]), chelsea[:200, :300])
    rgba = stream_rgb(raw["rgba.png"])
    assert (rgba[:64, :64] == 255).all() and (rgba[64:, 64:] == coffee[64:256, 64:256]).all()
    np.testing.assert_array_equal(stream_rgb(raw["opaque.png"]), rocket[:256, :300])
    for name, expected in (("photo.BMP", rocket[:200, :260]), ("photo.tif", chelsea[:220, :200])):
        assert by_name[name][1]["encoding"] == "png"
        np.testing.assert_array_equal(by_name[name][2], expected)


def test_max_bytes_bounds_shards(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    limit = 600_000
    pack.main([str(photo_dir / "a"), str(photo_dir / "c"), "--out", str(out), "--max-bytes", "600000",
               "--format", "png", "--no-progress"])
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["shards"]) > 2
    for shard in m["shards"]:
        size = (out / shard["name"]).stat().st_size
        assert size == shard["bytes"] and (size <= limit or shard["samples"] == 1)
    assert all("png" in s for s in read_samples(out))


@pytest.mark.parametrize("fmt, extra, ext", [("webp", ["--webp-lossless"], "webp"), ("jpg", [], "jpg"),
                                              ("png", ["--png-level", "1"], "png")])
def test_reencode_formats(photo_dir: Path, tmp_path: Path, fmt: str, extra: list[str], ext: str) -> None:
    out = tmp_path / "shards"
    pack.main([str(photo_dir / "a"), "--out", str(out), "--format", fmt, *extra, "--no-progress"])
    samples = {Path(s["json"]["source"]).name: s for s in read_samples(out)}
    assert sorted(samples) == ["COFFEE.JPG", "astro.png"]
    astro = samples["astro.png"]
    assert ext in astro and astro["json"]["encoding"] == ext
    if fmt == "jpg":
        assert np.abs(astro[ext].astype(int) - real_photos()[0]).mean() < 3
    else:
        np.testing.assert_array_equal(astro[ext], real_photos()[0])


def test_crops_from_file_list(photo_dir: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    rel = os.path.relpath(photo_dir / "a" / "astro.png", tmp_path)
    listing.write_text(f"# comment\n{rel}\n\n{photo_dir / 'a' / 'COFFEE.JPG'}\n{photo_dir / 'd' / 'tiny.png'}\n")
    out = tmp_path / "shards"
    pack.main([str(listing), "--out", str(out), "--crop-size", "200", "--crop-stride", "150", "--no-progress"])
    astro, coffee = real_photos()[:2]
    boxes: dict[str, list] = {}
    for s in read_samples(out):
        meta = s["json"]
        name = Path(meta["source"]).name
        if name == "tiny.png":  # smaller than the crop: stored whole, no crop box
            assert "box" not in meta and (meta["width"], meta["height"]) == (50, 40)
            continue
        x0, y0, x1, y1 = meta["box"]
        src = astro if name == "astro.png" else coffee
        assert (x1 - x0, y1 - y0) == (200, 200) == (meta["width"], meta["height"]) and "png" in s
        if name == "astro.png":
            np.testing.assert_array_equal(s["png"], src[y0:y1, x0:x1])
        boxes.setdefault(name, []).append((x0, y0))
    grid = lambda xs, ys: sorted((x, y) for y in ys for x in xs)  # noqa: E731
    assert sorted(boxes["astro.png"]) == grid([0, 150, 300, 312], [0, 150, 300, 312])  # 512 x 512
    assert sorted(boxes["COFFEE.JPG"]) == grid([0, 150, 300, 400], [0, 150, 200])  # 600 wide, 400 high


def test_tiles_reassemble_to_the_source(tmp_path: Path) -> None:
    """--tile: abutting tiles named by source and box; JPEGs cut losslessly on the MCU grid (same DCT
    coefficients: decoded without fancy upsampling, the tiles are the source's pixels), PNGs in their own mode."""
    from turbojpeg import TJFLAG_FASTUPSAMPLE, TJPF_RGB, TurboJPEG

    astro, coffee, chelsea, *_ = real_photos()
    src = tmp_path / "src"
    save(Image.fromarray(np.concatenate([chelsea, chelsea[:, ::-1]], axis=1)), src / "wide.jpg", quality=90)
    rgba = np.dstack([astro[:500, :450], np.tile(np.arange(450, dtype=np.uint8) // 2, (500, 1))])
    save(Image.fromarray(rgba), src / "alpha.png")
    out = tmp_path / "tiles"
    pack.main([str(src), "--out", str(out), "--tile", "200", "--no-progress"])
    jpeg = TurboJPEG()
    for name, source in (("wide.jpg", None), ("alpha.png", rgba)):
        tiles = [s for s in read_samples(out, decoded=False) if json.loads(s["json"])["source"].endswith(name)]
        metas = [json.loads(t["json"]) for t in tiles]
        width, height = metas[0]["source_width"], metas[0]["source_height"]
        canvas = np.zeros((height, width, 4 if source is not None else 3), np.uint8)
        covered = np.zeros((height, width), int)
        raw = (src / name).read_bytes()
        for tile, meta in zip(tiles, metas):
            x0, y0, x1, y1 = meta["box"]
            assert (meta["width"], meta["height"]) == (x1 - x0, y1 - y0) and 150 <= x1 - x0 < 300
            data = tile["jpg" if source is None else "png"]
            assert meta["source"] == str(src / name) and meta["sha256"] == hashlib.sha256(data).hexdigest()
            if source is None:
                assert meta["encoding"] == "lossless_crop" and x0 % 16 == 0 and y0 % 16 == 0
                canvas[y0:y1, x0:x1] = jpeg.decode(tile["jpg"], pixel_format=TJPF_RGB, flags=TJFLAG_FASTUPSAMPLE)
            else:
                assert meta["encoding"] == "png" and meta["mode"] == "RGBA"
                canvas[y0:y1, x0:x1] = np.asarray(Image.open(io.BytesIO(tile["png"])))
            covered[y0:y1, x0:x1] += 1
        assert (covered == 1).all(), name  # no gaps, no overlap
        expected = source if source is not None else jpeg.decode(raw, pixel_format=TJPF_RGB, flags=TJFLAG_FASTUPSAMPLE)
        np.testing.assert_array_equal(canvas, expected, err_msg=name)


def test_dedup_pixels_and_flat_threshold(photo_dir: Path, tmp_path: Path) -> None:
    """--dedup pixels also drops a re-encoded copy; --flat-threshold 0 keeps the flat images."""
    out = tmp_path / "shards"
    pack.main([str(photo_dir / "a"), str(photo_dir / "d"), str(photo_dir / "e"), "--out", str(out), "--dedup",
               "pixels", "--flat-threshold", "0", "--no-progress"])
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(d["path"]).name for d in m["duplicates"]) == ["z_dup.png", "z_pixdup.png"]
    assert "flat" not in m["skipped_by_reason"]
    kept = {Path(s["json"]["source"]).name for s in read_samples(out)}
    assert {"overlay.png", "gray_card.jpg"} <= kept


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_resume_after_kill(photo_dir: Path, tmp_path: Path) -> None:
    args = [str(photo_dir), "--crop-size", "256", "--crop-stride", "256", "--max-samples", "5", "--no-progress"]
    pack.main([*args, "--out", str(tmp_path / "ref")])
    reference = shard_bytes(tmp_path / "ref")
    out = tmp_path / "run"
    pack.main([*args, "--out", str(out)])
    assert shard_bytes(out) == reference  # deterministic: same inputs -> byte-identical shards
    names = sorted(reference)
    assert len(names) >= 4
    # Kill-like state: shard 0 finished; shard 1 record written but its tar still a truncated .tmp; nothing later.
    tmp = out / (names[1] + ".tmp")
    os.replace(out / names[1], tmp)
    tmp.write_bytes(tmp.read_bytes()[:5000])
    for name in names[2:]:
        (out / name).unlink()
        (out / ".pack-state" / name.replace(".tar", ".json")).unlink()
    (out / "manifest.json").unlink()
    (out / "sizes.json").unlink()
    os.utime(out / names[0], ns=(10**18, 10**18))
    pack.main([*args, "--out", str(out)])
    assert shard_bytes(out) == reference and not list(out.glob("*.tmp"))
    assert (out / names[0]).stat().st_mtime_ns == 10**18  # finished shard not rewritten
    assert (out / names[1]).stat().st_mtime_ns != 10**18
    m, m_ref = (json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "ref"))
    assert m == m_ref
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    pack.main([*args, "--out", str(out)])  # complete: a re-run rewrites no shard
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    with pytest.raises(ValueError, match="new --out"):
        pack.main([*args[:-1], "--max-samples", "6", "--out", str(out)])


def test_job_array_parts_merge(photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack.main([str(photo_dir), "--out", str(tmp_path / "single"), "--no-progress"])
    single = json.loads((tmp_path / "single" / "manifest.json").read_text())
    out = tmp_path / "parts"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    for task in (1, 2):  # parts 0 and 1 from the Slurm environment (array 1-3)
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        pack.main([str(photo_dir), "--out", str(out), "--no-progress"])
    assert not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match=r"parts \[2\]"):
        pack.main(["--merge-manifests", "--out", str(out)])
    pack.main([str(photo_dir), "--out", str(out), "--num-parts", "3", "--part", "2", "--no-progress"])
    merged = json.loads((out / "manifest.json").read_text())  # written by the last part to finish
    sources = []
    for i in range(3):
        part = json.loads((out / f"manifest-part{i:04d}.json").read_text())
        assert all(s["name"].startswith(f"shard-p{i:04d}-") for s in part["shards"])
        urls = [str(out / s["name"]) for s in part["shards"]]
        sources.append({json.loads(s["json"])["source"] for s in wds.WebDataset(urls, shardshuffle=False)})
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    assert merged["inputs"] == single["inputs"] and merged["skipped_count"] == single["skipped_count"]
    n_cross = len(merged["cross_part_duplicates"])
    assert merged["samples"] == single["samples"] + n_cross  # dedup runs within a part; the rest is listed
    assert merged["duplicates_count"] + n_cross == single["duplicates_count"]
    assert json.loads((out / "sizes.json").read_text()) == {s["name"]: s["samples"] for s in merged["shards"]}
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in merged["shards"])
    pack.main(["--merge-manifests", "--out", str(out)])
    assert json.loads((out / "manifest.json").read_text()) == merged


def test_verify_catches_corruption(photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "shards"
    pack.main([str(photo_dir / "a"), str(photo_dir / "c"), "--out", str(out), "--max-samples", "3", "--no-progress"])
    pack.main(["--verify", "--out", str(out)])
    assert "0 bad" in capsys.readouterr().out
    shards = sorted(out.glob("*.tar"))
    with tarfile.open(shards[1]) as tar:
        member = next(m for m in tar if not m.name.endswith(".json"))
    data = bytearray(shards[1].read_bytes())
    mid = member.offset_data + member.size // 2
    data[mid:mid + 64] = bytes(64)  # zero 64 bytes inside an image payload
    shards[1].write_bytes(bytes(data))
    shards[2].write_bytes(shards[2].read_bytes()[:3000])  # truncated shard
    with pytest.raises(SystemExit) as exc:
        pack.main(["--verify", str(out), "--workers", "2"])
    assert exc.value.code == 1
    report = capsys.readouterr().out
    assert f"BAD {shards[1].name}: {member.name.split('.')[0]}" in report and f"BAD {shards[2].name}" in report
    assert "2 bad" in report


def test_short_sides_store_lanczos_copies(photo_dir: Path, tmp_path: Path) -> None:
    """--short-side 256,100: each photo twice, downscaled by Lanczos; one smaller than a side is kept once."""
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photo_dir / 'a' / 'astro.png'}\n{photo_dir / 'd' / 'tiny.png'}\n")
    out = tmp_path / "shards"
    pack.main([str(listing), "--out", str(out), "--short-side", "256,100", "--no-progress"])
    astro = Image.fromarray(real_photos()[0])  # 512 x 512
    got = {(Path(s["json"]["source"]).name, s["json"]["short_side"]): s for s in read_samples(out)}
    assert sorted(got) == [("astro.png", 100), ("astro.png", 256), ("tiny.png", 40)]  # tiny: 50 x 40, once
    for side in (256, 100):
        np.testing.assert_array_equal(got["astro.png", side]["png"],
                                      np.asarray(astro.resize((side, side), Image.LANCZOS, reducing_gap=3.0)))
    assert got["tiny.png", 40]["png"].shape == (40, 50, 3)
    # with --tile the copies are tiled: the 256 copy into 2 x 2 tiles of 128, the 100 copy kept whole
    tiled = tmp_path / "tiled"
    pack.main([str(photo_dir / "a" / "astro.png"), "--out", str(tiled), "--short-side", "256,100", "--tile", "128",
               "--no-progress"])
    sizes = sorted((s["json"]["short_side"], s["json"]["width"], s["json"]["height"]) for s in read_samples(tiled))
    assert sizes == [(100, 100, 100)] + [(256, 128, 128)] * 4


def test_bad_arguments(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--part"):
        pack.main([str(photo_dir), "--out", str(tmp_path), "--num-parts", "2", "--part", "2"])
    with pytest.raises(FileNotFoundError, match="SRC"):
        pack.main([str(tmp_path / "missing"), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--crop-stride"):
        pack.main([str(photo_dir), "--out", str(tmp_path), "--crop-size", "100", "--crop-stride", "200"])
    with pytest.raises(ValueError, match="--short-side"):
        pack.main([str(photo_dir), "--out", str(tmp_path), "--short-side", "512,x"])


def test_missing_out_is_a_usage_error(photo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        pack.main([str(photo_dir)])
    assert exc.value.code == 2 and "--out is required" in capsys.readouterr().err


def test_cli_help() -> None:
    res = subprocess.run([sys.executable, str(PACK), "--help"], capture_output=True, text=True, check=True,
                         cwd="/")
    for flag in ("--out", "--max-samples", "--max-bytes", "--min-size", "--crop-size", "--format", "--workers",
                 "--num-parts", "--part", "--merge-manifests", "--verify", "--tile", "--dedup", "--flat-threshold"):
        assert flag in res.stdout
