"""Files of a data folder: the one folder walk and the one list of image extensions.

:func:`walk_files` is the folder source's rule (``--data FOLDER``, ``bigseer shard FOLDER``, the recipe
probe): every non-hidden file below the folder, recursively, in sorted order, whatever its extension (the
decoder skips what is not an image). :data:`IMAGE_EXTENSIONS` names the image members of tar samples and
the images of labeled (ImageFolder) data.
"""

from __future__ import annotations

import os

# lower case, without the dot
IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif bmp webp tif tiff ppm pgm pbm pnm tga ico jp2 j2k avif heic".split())


def has_image_extension(name: str) -> bool:
    """True when the file name ``name`` ends in ``.EXT`` (any case) for an EXT of :data:`IMAGE_EXTENSIONS`."""
    base = os.path.basename(name)
    return "." in base and base.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def walk_files(root: str) -> list[str]:
    """Every non-hidden file below ``root`` (hidden folders are not entered), recursively, sorted per folder."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files
