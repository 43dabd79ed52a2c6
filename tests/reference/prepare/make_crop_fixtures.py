"""Reference crops for fer-data's crop rule and resize, computed with Pillow.

Writes into crates/data/tests/fixtures/prepare/:
  crop_input.png       a 40x30 RGB image (smooth gradients + a fixed noise pattern)
  crop_cases.json      per case: the face box, margin, the square crop Pillow used, output file
  crop_<name>.png      Pillow's crop + resize((16, 16), Image.BILINEAR) of each case

The box rule is re-implemented here from its documentation (crates/data/src/crop.rs), not
copied from the Rust code: grow by margin on each side, square around the centre,
round with floor(x + 0.5), shift inside the image, shrink to the short side if needed.

Run from the repository root: python3 tests/reference/prepare/make_crop_fixtures.py
"""

import json
import math
import os

import numpy as np
from PIL import Image

OUT = os.path.join("crates", "data", "tests", "fixtures", "prepare")
W, H, S = 40, 30, 16


def square_crop(x, y, w, h, margin, width, height):
    side = max(w, h) * (1 + 2 * margin)
    side = int(min(max(math.floor(side + 0.5), 1), min(width, height)))
    cx, cy = x + w / 2, y + h / 2
    left = min(max(math.floor(cx - side / 2 + 0.5), 0), width - side)
    top = min(max(math.floor(cy - side / 2 + 0.5), 0), height - side)
    return left, top, side, side


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack(
        [
            40 + 5 * xx,
            30 + 7 * yy,
            128 + 90 * np.sin(xx / 4.0) * np.cos(yy / 5.0),
        ],
        axis=-1,
    )
    img = np.clip(base + rng.integers(-25, 26, size=(H, W, 3)), 0, 255).astype(np.uint8)
    src = Image.fromarray(img, "RGB")
    src.save(os.path.join(OUT, "crop_input.png"))

    cases = [
        # name, box (x, y, w, h) or None for the whole image, margin
        ("interior_up", (12.0, 8.0, 10.0, 12.0), 0.1),  # 14 px crop, enlarged to 16
        ("corner_shift", (30.0, 20.0, 12.0, 12.0), 0.25),  # shifted back inside, 18 px
        ("large_shrink", (5.0, 2.0, 24.0, 22.0), 0.2),  # larger than the image: 30 px
        ("fractional", (3.4, 4.6, 17.3, 15.2), 0.15),  # fractional box, 22 px
        ("whole", None, 0.0),  # no box: the whole 40x30 image
    ]
    out = []
    for name, box, margin in cases:
        if box is None:
            rect = (0, 0, W, H)
        else:
            rect = square_crop(*box, margin, W, H)
        left, top, rw, rh = rect
        crop = src.crop((left, top, left + rw, top + rh)).resize((S, S), Image.BILINEAR)
        file = f"crop_{name}.png"
        crop.save(os.path.join(OUT, file))
        out.append(
            {
                "name": name,
                "box": list(box) if box else None,
                "margin": margin,
                "rect": [left, top, rw, rh],
                "size": S,
                "file": file,
            }
        )
    with open(os.path.join(OUT, "crop_cases.json"), "w") as f:
        json.dump({"input": "crop_input.png", "cases": out}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
