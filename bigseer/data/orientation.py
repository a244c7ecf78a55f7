"""EXIF orientations as PIL transposes and as array views, and PIL images over decoded RGBX arrays: the pixel
helpers both decoding (:mod:`bigseer.data.decode`) and cropping (:mod:`bigseer.data.multicrop`) use."""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

TRANSPOSE = {  # EXIF orientation -> the PIL transposes that show it upright
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


_ORIENT_ARRAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {  # the views equal to TRANSPOSE's ops
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def orient_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 1..8 applied to an HxWxC array exactly as PIL's transposes (one copy; none for 1)."""
    op = _ORIENT_ARRAY.get(orientation)
    return arr if op is None else np.ascontiguousarray(op(arr))
