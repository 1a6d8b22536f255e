"""The real photographs this project trains and evaluates on when no dataset is given.

* wallpapers: the Debian wallpaper packages scripts/setup.sh installs (lossy JPEG/PNG,
  mostly 1920-4000 px): the demo's and benchmarks/learn.py's training photos.
* heldout: lossless photographs shipped in the scikit-image and sporco wheels, never in the
  wallpapers, used as an evaluation set that was not trained on.

    python data_tools/photos.py heldout --out runs/heldout      # writes PNGs
    python data_tools/photos.py wallpapers                      # prints the wallpaper folders
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

WALLPAPER_DIRS = ("/usr/share/backgrounds", "/usr/share/wallpapers")
WALLPAPER_PACKAGES = "lomiri-wallpapers-16.04 mate-backgrounds plasma-workspace-wallpapers"
# scikit-image's colour photographs of everyday scenes (skimage.data names); not the microscopy or telescope ones.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
MIN_SIDE = 256


def wallpaper_dirs() -> list[Path]:
    """Installed wallpaper folders; raises with the install hint when there are none."""
    found = [Path(d) for d in WALLPAPER_DIRS if Path(d).is_dir() and any(Path(d).rglob("*.jpg"))]
    if not found:
        raise FileNotFoundError(f"no wallpaper photos under {WALLPAPER_DIRS}; run scripts/setup.sh "
                                f"(apt-get install {WALLPAPER_PACKAGES})")
    return found


def wallpaper_files(dirs: tuple[str, ...] = WALLPAPER_DIRS) -> list[Path]:
    """Every image under ``dirs`` (default: the installed wallpapers), symlinks resolved, each file
    once, previews named ``screenshot`` left out; sorted, empty when there are none."""
    suffixes = (".jpg", ".jpeg", ".png", ".webp")
    return sorted({p.resolve() for d in dirs if Path(d).is_dir() for p in Path(d).rglob("*")
                   if p.suffix.lower() in suffixes and "screenshot" not in p.name and p.is_file()})


def skimage_photos() -> Iterator[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) of scikit-image's everyday colour photographs (``SKIMAGE_PHOTOS``)."""
    from skimage import data

    for name in SKIMAGE_PHOTOS:
        if name == "motorcycle_left":
            yield name, data.stereo_motorcycle()[0]
        else:
            yield name, getattr(data, name)()


def _sporco_photos() -> Iterator[tuple[str, np.ndarray]]:
    try:
        from sporco.util import ExampleImages
    except ImportError:  # sporco is in the test extra; without it the set is scikit-image only
        return
    images = ExampleImages(scaled=False, zoom=None, gray=False)
    for name in images.images():
        img = np.asarray(images.image(name))
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= MIN_SIDE:
            yield f"sporco_{Path(name).stem}", img


def heldout_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) lossless colour photographs with a short side of at least 256 px."""
    out = []
    for name, img in (*skimage_photos(), *_sporco_photos()):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        if img.ndim == 3 and min(img.shape[:2]) >= MIN_SIDE:
            out.append((name, np.ascontiguousarray(img[..., :3])))
    return out


def write_heldout(out: Path) -> list[Path]:
    """Write the held-out photos as PNGs into ``out``; returns their paths."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in heldout_photos():
        path = out / f"{name}.png"
        if not path.exists():
            Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python data_tools/photos.py", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("which", metavar="which", choices=("heldout", "wallpapers"),
                   help="heldout: write the lossless held-out photos as PNGs into --out;\n"
                        "wallpapers: print the installed wallpaper folders")
    p.add_argument("--out", type=Path, help="folder for the held-out PNGs (needed for heldout)")
    args = p.parse_args(argv)
    if args.which == "wallpapers":
        try:
            print("\n".join(str(d) for d in wallpaper_dirs()))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.out is None:
        p.error("heldout needs --out")
    paths = write_heldout(args.out)
    print(f"{len(paths)} held-out photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
