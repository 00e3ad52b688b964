"""Image reading and writing that survives what real photo folders contain.

Reads PNG/JPEG/WebP/TIFF/BMP through Pillow, applies EXIF orientation, and
normalises every mode (grayscale, palette, RGBA, 16-bit) to a float RGB tensor in
[0, 1] plus what is needed to write the result back in the input's own form
(alpha plane, grayscale flag, bit depth). Failures raise `ImageReadError`
naming the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


class ImageReadError(RuntimeError):
    """An image file could not be decoded; the message names the file."""


@dataclass
class LoadedImage:
    """An image as float RGB in [0, 1] (3, H, W) plus how to write it back.

    Attributes:
        rgb: Colour planes, float32, (3, H, W).
        alpha: Alpha plane (1, H, W) in [0, 1], or None.
        grayscale: The file held a single luminance channel.
        bit_depth: 8 or 16 bits per channel in the file.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor | None = None
    grayscale: bool = False
    bit_depth: int = 8


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `root`, sorted by relative path.

    Raises:
        FileNotFoundError: `root` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if root.is_file():
        return [root]
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_float(array: np.ndarray) -> tuple[np.ndarray, int]:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0, 8
    if array.dtype in (np.uint16, np.int32, np.int16, np.uint32):
        # 16-bit data (PNG, TIFF) arrives as these; wider values would be silently clipped
        if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
            raise ImageReadError(f"integer pixels from {int(array.min())} to {int(array.max())} do not fit "
                                 "16 bits; save the image as 8- or 16-bit")
        return array.astype(np.float32) / 65535.0, 16
    if array.dtype == bool:
        return array.astype(np.float32), 8
    if np.issubdtype(array.dtype, np.floating):
        # float images (TIFF mode F) are read as [0, 1]; other ranges would turn into garbage
        finite = bool(np.isfinite(array).all())
        if array.size and not (finite and array.min() >= -1e-3 and array.max() <= 1 + 1e-3):
            raise ImageReadError(f"float pixels from {np.nanmin(array):g} to {np.nanmax(array):g} (NaN or inf "
                                 f"{'absent' if finite else 'present'}); float images "
                                 "are read as [0, 1]: rescale it or save it as 8- or 16-bit")
        return np.clip(array.astype(np.float32), 0.0, 1.0), 16
    raise ImageReadError(f"unsupported pixel type {array.dtype}")


# Largest image (in pixels) read_image decodes: a guard against decompression bombs (a small file
# that claims huge dimensions). 2^28 = 268 Mpx: a 16K x 16K photo passes, a bomb does not.
# Raise it with the HEADSUP_MAX_PIXELS environment variable.
MAX_PIXELS = int(os.environ.get("HEADSUP_MAX_PIXELS", 2**28))


def read_image(path: str | os.PathLike, box: tuple[int, int, int, int] | None = None) -> LoadedImage:
    """Decode `path` into a `LoadedImage`; with `box` (left, top, right, bottom, in the upright
    image after EXIF orientation) only that region is converted, which spares the float copy of
    a whole 4K photo when a crop is all that is needed.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageReadError(_too_large(path, img.width, img.height))
            deep_colour = img.mode in ("RGB", "RGBA") and _bits_per_sample(img) == 16
            img = ImageOps.exif_transpose(img)
            img.load()
            if box is not None and not deep_colour:
                img = img.crop(box)
    except FileNotFoundError as err:
        raise ImageReadError(f"image not found: {path}") from err
    except Image.DecompressionBombError as err:  # Pillow's own check, at open, for far larger claims
        raise ImageReadError(f"cannot read image {path}: {err} (headsup's limit: HEADSUP_MAX_PIXELS)") from err
    except IsADirectoryError as err:
        raise ImageReadError(f"not an image file but a folder: {path}") from err
    except PermissionError as err:
        raise ImageReadError(f"no permission to read image {path}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    if deep_colour:
        loaded = _read_deep_colour(path)
        if box is not None:
            left, top, right, bottom = box
            loaded.rgb = loaded.rgb[:, top:bottom, left:right]
            loaded.alpha = loaded.alpha[:, top:bottom, left:right] if loaded.alpha is not None else None
        return loaded
    return pil_to_loaded(img, path)


def _too_large(path: Path, width: int, height: int) -> str:
    return (f"image {path} claims {width} x {height} = {width * height / 1e6:.0f} Mpx, above the limit of "
            f"{MAX_PIXELS / 1e6:.0f} Mpx (a decompression bomb, or raise HEADSUP_MAX_PIXELS)")


def _bits_per_sample(img: Image.Image) -> int:
    """Bit depth stored in the file (Pillow decodes 16-bit colour to 8 bits)."""
    if img.format == "PNG":
        with open(img.filename, "rb") as handle:
            header = handle.read(25)
        return header[24] if len(header) == 25 else 8
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, (8,))
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 8


def _read_deep_colour(path: Path) -> LoadedImage:
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 3:
        raise ImageReadError(f"cannot read 16-bit image {path}")
    array = array[..., [2, 1, 0, 3][: array.shape[2]]]  # BGR(A) -> RGB(A)
    planes, bit_depth = _to_float(array)
    rgb = torch.from_numpy(np.ascontiguousarray(planes[..., :3].transpose(2, 0, 1)))
    alpha = torch.from_numpy(np.ascontiguousarray(planes[..., 3]))[None] if planes.shape[2] == 4 else None
    return LoadedImage(rgb=rgb, alpha=alpha, grayscale=False, bit_depth=bit_depth)


def pil_to_loaded(img: Image.Image, name: str | os.PathLike = "<image>") -> LoadedImage:
    """Normalise a Pillow image of any mode; see `read_image`."""
    mode = img.mode
    alpha = None
    grayscale = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(img.getchannel("A"))
        img = img.convert("RGB" if mode == "RGBA" else "L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    array = np.asarray(img)
    try:
        planes, bit_depth = _to_float(array)
    except ImageReadError as err:
        raise ImageReadError(f"cannot read image {name}: {err}") from err
    if planes.ndim == 2:
        planes = np.repeat(planes[..., None], 3, axis=2)
    if planes.ndim != 3 or planes.shape[2] != 3:
        raise ImageReadError(f"cannot read image {name}: unexpected shape {array.shape} (mode {mode})")
    rgb = torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))
    alpha_t = None
    if alpha is not None:
        alpha_f, _ = _to_float(alpha)
        alpha_t = torch.from_numpy(np.ascontiguousarray(alpha_f))[None]
    return LoadedImage(rgb=rgb, alpha=alpha_t, grayscale=grayscale, bit_depth=bit_depth)


def to_uint(image: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8/uint16 array, rounded."""
    peak = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    array = (image.detach().float().clamp(0, 1) * peak).round().cpu().numpy().astype(dtype)
    return array.transpose(1, 2, 0)


def save_image(
    path: str | os.PathLike,
    rgb: torch.Tensor,
    alpha: torch.Tensor | None = None,
    grayscale: bool = False,
    bit_depth: int = 8,
    quality: int = 95,
) -> Path:
    """Write an image atomically (temporary file then rename), keeping the input's form.

    Grayscale sources are written as luminance (ITU-R BT.601 weights), alpha is re-attached,
    16-bit is kept where the format allows it (PNG, TIFF).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        bit_depth = 8
    if grayscale:
        weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
        rgb = (rgb * weights).sum(0, keepdim=True)
    planes = [rgb] + ([alpha] if alpha is not None and suffix not in (".jpg", ".jpeg") else [])
    array = to_uint(torch.cat(planes, 0), bit_depth)
    if array.shape[2] == 1:
        array = array[..., 0]
    if bit_depth == 16 and array.ndim == 3:
        # Pillow cannot hold 16-bit colour; PNG through OpenCV keeps it.
        import cv2

        order = [2, 1, 0, 3][: array.shape[2]]
        ok, data = cv2.imencode(suffix, np.ascontiguousarray(array[..., order]))
        if not ok:
            raise OSError(f"could not encode {path}")
        payload = data.tobytes()
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(payload))
        return path
    if bit_depth == 16:
        img = Image.fromarray(array.astype(np.uint16))
    else:
        img = Image.fromarray(array)
    kwargs = {"quality": quality} if suffix in (".jpg", ".jpeg", ".webp") else {}
    atomic_write(path, lambda tmp: img.save(tmp, **kwargs))
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`.

    Readers never see a half-written file, and a failed write leaves the old file in place.
    The temporary name keeps the suffix, so format-by-extension writers work. The file gets the
    permissions a plain `open` would give it (mkstemp's are owner-only).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
