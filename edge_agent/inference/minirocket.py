"""A MiniRocket-style random-convolution-kernel transform, its numpy twin and its graph stages.

Training side only (the `train` extra); the daemon never imports it: the transform is written
into the ONNX and TFLite graphs, which compute it from raw windows.

What it computes (after Dempster, Schmidt and Webb, "MiniRocket", KDD 2021): the 84 kernels
of length 9 whose weights are -1 except three 2s (so every kernel sums to zero), each at a few
exponentially spaced dilations, each applied to a random subset of the channels (the channel
outputs are summed; channels are first scaled to unit standard deviation). For every kernel
and dilation, a few biases are drawn as quantiles of the kernel's output on random training
windows, and the feature is the proportion of positive values (PPV) of `output - bias` over
the window. A linear classifier on these features is the MiniRocket recipe; here the
hand-made window features (`export.FeatureLayout`) are concatenated to them, because the
zero-sum kernels are blind to a constant offset and a constant offset (gravity along each
axis) is what tells sitting from standing.

Differences from the reference: convolutions are "valid" (no padding), so every output uses
only samples of the window; channel subsets and biases are drawn per kernel and dilation with
a seeded generator; quantiles follow a golden-ratio low-discrepancy sequence as in the paper.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]

KERNEL_LENGTH = 9
# The 84 kernels: every choice of 3 positions out of 9 holding 2, the rest -1.
KERNELS: F32 = np.array(
    [
        [2.0 if j in chosen else -1.0 for j in range(KERNEL_LENGTH)]
        for chosen in itertools.combinations(range(KERNEL_LENGTH), 3)
    ],
    dtype=np.float32,
)
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class Dilation:
    """All kernels at one dilation, as one convolution with `kernels * biases` outputs.

    Attributes:
        dilation: Spacing of the kernel taps, in samples.
        weights: [outputs, channels, 9]: each kernel (channel scale folded in, zero for
            channels outside its subset), repeated once per bias.
        biases: [outputs]: the bias each output is compared with.
    """

    dilation: int
    weights: F32
    biases: F32


@dataclass(frozen=True)
class MiniRocket:
    """A fitted transform for windows of `window` samples of `channels` channels."""

    window: int
    channels: int
    dilations: tuple[Dilation, ...]

    @property
    def width(self) -> int:
        """Number of features it produces."""
        return sum(len(d.biases) for d in self.dilations)

    def describe(self) -> str:
        """One sentence for manifests and cards."""
        ds = ", ".join(str(d.dilation) for d in self.dilations)
        per = len(self.dilations[0].biases) // len(KERNELS) if self.dilations else 0
        return (
            f"MiniRocket-style transform: 84 zero-sum kernels of length 9 at dilations {ds} "
            f"on random channel subsets, {per} biases each, proportion of positive values "
            f"({self.width} features)"
        )


def _convolve(windows: F32, dilation: int, weights: F32) -> F32:
    """Valid dilated convolution: [N, T, C] with [K, C, 9] -> [N, T - 8 d, K]."""
    length = windows.shape[1] - (KERNEL_LENGTH - 1) * dilation
    taps = np.stack(
        [windows[:, j * dilation : j * dilation + length, :] for j in range(KERNEL_LENGTH)],
        axis=-1,
    )
    out: F32 = np.einsum("ntcj,kcj->ntk", taps, weights, optimize=True).astype(np.float32)
    return out


def fit_minirocket(
    windows: F32, *, dilations: int = 6, biases: int = 4, seed: int = 0
) -> MiniRocket:
    """Draw channel subsets and biases from training windows [N, T, C].

    Args:
        windows: Training windows in physical units.
        dilations: How many exponentially spaced dilations (1 up to (T - 1) / 8).
        biases: Biases (so features) per kernel and dilation.
        seed: Seed of the channel subsets and of the windows the biases come from.

    Raises:
        ValueError: windows too short for a kernel of length 9, or no windows.
    """
    n, t, c = windows.shape
    if n == 0 or t < KERNEL_LENGTH:
        raise ValueError(f"need windows of at least {KERNEL_LENGTH} samples, got {windows.shape}")
    rng = np.random.default_rng(seed)
    largest = max(1, (t - 1) // (KERNEL_LENGTH - 1))
    spaced = np.floor(2.0 ** np.linspace(0.0, np.log2(largest), dilations)).astype(int)
    std = windows.reshape(-1, c).std(axis=0)
    scale = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
    k = len(KERNELS)
    out: list[Dilation] = []
    q = 0
    for d in sorted({int(v) for v in spaced}):
        mask = np.zeros((k, c), dtype=np.float32)
        for i in range(k):
            size = int(2.0 ** rng.uniform(0.0, np.log2(min(c, KERNEL_LENGTH) + 1)))
            mask[i, rng.choice(c, size=max(1, min(size, c)), replace=False)] = 1.0
        weights = KERNELS[:, None, :] * mask[:, :, None] * scale[None, :, None]
        # One random training window per kernel gives that kernel's bias quantiles.
        picked = rng.integers(0, n, size=k)
        response = _convolve(windows[picked], d, weights)
        bias = np.empty((k, biases), dtype=np.float32)
        for i in range(k):
            quantiles = [((q + j) * _GOLDEN) % 1.0 for j in range(biases)]
            q += biases
            bias[i] = np.quantile(response[i, :, i], quantiles)
        out.append(
            Dilation(
                dilation=d,
                weights=np.repeat(weights, biases, axis=0).astype(np.float32),
                biases=bias.reshape(-1).astype(np.float32),
            )
        )
    return MiniRocket(window=t, channels=c, dilations=tuple(out))


def transform(windows: F32, rocket: MiniRocket, chunk: int = 256) -> F32:
    """PPV features of [N, T, C] windows as [N, rocket.width], like the graphs compute them."""
    windows = np.asarray(windows, dtype=np.float32)
    parts: list[F32] = []
    for start in range(0, len(windows), chunk):
        batch = windows[start : start + chunk]
        row = [
            (_convolve(batch, d.dilation, d.weights) > d.biases).mean(axis=1, dtype=np.float32)
            for d in rocket.dilations
        ]
        parts.append(np.concatenate(row, axis=1))
    if not parts:
        return np.empty((0, rocket.width), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)
