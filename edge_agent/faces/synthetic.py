"""Synthetic faces: deterministic drawings of made-up people, for tests, the demo and the bench.

No real face data set can be obtained here, and face images are biometric data besides.
Each identity is a seeded set of traits (skin and hair colour, face shape, where the eyes,
nose and mouth sit, a few smooth skin-tone blotches); each variant of it is a new "capture"
of the same person: other exposure, a shift of a few pixels, a slightly different
expression, sensor noise. They are cartoons, not faces: fit to exercise the data path and
the demo model, useless for judging a real face model.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SIZE = 112
"""Side of the generated images, the usual aligned-face crop size."""

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = ((_Y - cy) / ry) ** 2 + ((_X - cx) / rx) ** 2 <= 1.0
    return inside


def synthetic_face(identity: int, variant: int = 0, *, noise: float = 4.0) -> npt.NDArray[np.uint8]:
    """A ``(112, 112, 3)`` RGB uint8 image of person ``identity``, capture ``variant``.

    Args:
        identity: Which person (any non-negative integer; same number, same person).
        variant: Which capture of that person; 0 is the "enrolment photo".
        noise: Standard deviation of the sensor noise, in 0..255 units.
    """
    traits = np.random.default_rng([0xFACE, identity])
    shot = np.random.default_rng([0xCA11, identity, variant])
    skin = traits.uniform([150, 110, 80], [235, 190, 160])
    hair = traits.uniform(10, 120, size=3)
    background = traits.uniform(40, 220, size=3)
    face_ry, face_rx = traits.uniform(46, 54), traits.uniform(34, 44)
    eye_y, eye_dx, eye_r = traits.uniform(42, 52), traits.uniform(13, 19), traits.uniform(3.5, 6)
    iris = traits.uniform(20, 140, size=3)
    nose_len, nose_w = traits.uniform(10, 18), traits.uniform(4, 9)
    mouth_y, mouth_w = traits.uniform(76, 84), traits.uniform(10, 17)
    hairline = traits.uniform(14, 30)
    blotches = [
        (
            traits.uniform(30, 90),
            traits.uniform(25, 87),
            traits.uniform(5, 12),
            traits.uniform(-40, 40),
        )
        for _ in range(6)
    ]

    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = background
    cy, cx = 58.0, 56.0
    face = _ellipse(cy, cx, face_ry, face_rx)
    image[face] = skin
    for by, bx, radius, amp in blotches:
        bump = amp * np.exp(-((_Y - by) ** 2 + (_X - bx) ** 2) / (2 * radius**2))
        image += (bump * face)[..., None]
    image[face & (cy - face_ry + hairline > _Y)] = hair
    smile = shot.uniform(-1.5, 1.5)
    for side in (-1, 1):
        eye = _ellipse(eye_y, cx + side * eye_dx, eye_r * shot.uniform(0.8, 1.0), eye_r * 1.5)
        image[eye] = 245
        image[_ellipse(eye_y, cx + side * eye_dx, eye_r * 0.7, eye_r * 0.7)] = iris
    nose = (np.abs(_X - cx) < nose_w / 2) & (eye_y + 4 < _Y) & (eye_y + 4 + nose_len > _Y)
    image[nose] = skin * 0.8
    mouth = _ellipse(mouth_y + smile, cx, 2.5 + abs(smile), mouth_w)
    image[mouth] = [150, 50, 60]

    gain, offset = shot.uniform(0.8, 1.2), shot.uniform(-20, 20)
    image = image * gain + offset
    dy, dx = shot.integers(-2, 3, size=2)
    image = np.roll(image, (int(dy), int(dx)), axis=(0, 1))
    if noise:
        image += shot.normal(0, noise, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
