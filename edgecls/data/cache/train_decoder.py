"""The training rows of the decoded-image cache: each image squashed to the cache resolution.

Free of torch, so the gpu cache's reader processes (`fill_workers`) can import it cheaply.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgecls.data.images import INTERPOLATIONS, to_rgb
from edgecls.data.shards.member import open_source


class TrainDecoder:
    """Squash to the cache resolution; JPEGs decode at a reduced DCT scale when that is still large enough."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bilinear"):
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = interpolation

    def describe(self) -> str:
        return f"train:{self.size[0]}x{self.size[1]}:{self.interpolation}"

    def __call__(self, source) -> tuple[np.ndarray, tuple[int, int]]:
        """(uint8 H x W x 3 row, (W, H) of the upright original) for a path, a shard Member or a binary file."""
        h, w = self.size
        with Image.open(open_source(source)) as img:
            full_w, full_h = img.size
            swapped = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF rotations by 90 degrees
            if img.format == "JPEG":
                side = max(h, w)  # rotation may swap axes: ask for enough pixels both ways
                img.draft(None, (side, side))
            img.load()
            rgb = to_rgb(img)
        orig = (full_h, full_w) if swapped else (full_w, full_h)
        return np.asarray(rgb.resize((w, h), INTERPOLATIONS[self.interpolation]), np.uint8), orig
