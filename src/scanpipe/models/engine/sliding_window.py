"""nnU-Net's sliding-window inference over a preprocessed case.

The network sees fixed-size patches. Patches overlap by ``1 - tile_step``
and are spread evenly from the first voxel to the last; each patch's logits
are weighted by a Gaussian importance map (centre trusted more than the
border) and the weighted sum is divided by the summed weights. With
mirroring, every patch is also predicted flipped along each combination of
the allowed axes and the logits are averaged, as nnU-Net's test-time
augmentation does. A case smaller than the patch is padded with zeros
(the normalised mean) and the padding cut off afterwards.

The weighted sums are kept in float16, as nnU-Net keeps them: it halves the
largest arrays of a case, and it is what makes the masks agree with
nnU-Net's voxel for voxel rather than almost everywhere (float16 rounds
the logits, and where the Gaussian is tiny, at patch corners, it rounds
them a lot). Each patch's own arithmetic stays in float32. Should a sum
overflow float16, the case is run again in float32 instead of failing as
nnU-Net does.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
#: Runs the network on a batch (N, C, *patch) and returns (N, heads, *patch).
Network = Callable[[FloatArray], FloatArray]


def compute_steps(
    image_size: Sequence[int], tile_size: Sequence[int], tile_step: float
) -> list[list[int]]:
    """Start of every patch along each axis, nnU-Net's way.

    The number of steps is the fewest that keep the step at most
    ``tile_size * tile_step``; they are then spread evenly so that the last
    patch ends at the image's last voxel.
    """
    if not 0 < tile_step <= 1:
        raise ValueError(f"Expected a tile step in (0, 1], got {tile_step}.")
    steps = []
    for image, tile in zip(image_size, tile_size, strict=True):
        if image < tile:
            raise ValueError(f"Expected an image of at least {tile}, got {image}.")
        count = int(np.ceil((image - tile) / (tile * tile_step))) + 1
        largest = image - tile
        # One step needs no spacing; the large value only keeps the formula.
        actual = largest / (count - 1) if count > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(count)])
    return steps


@functools.lru_cache(maxsize=4)
def gaussian_importance(
    tile_size: tuple[int, ...], sigma_scale: float = 1 / 8, value_scale: float = 10
) -> FloatArray:
    """nnU-Net's importance map: a Gaussian with its peak at ``value_scale``.

    nnU-Net keeps it in float16, so it is rounded through float16 here to
    weight patches exactly alike; zeros are raised to the smallest nonzero
    value so that no voxel ends with zero total weight.
    """
    impulse = np.zeros(tile_size)
    impulse[tuple(n // 2 for n in tile_size)] = 1
    sigmas = [n * sigma_scale for n in tile_size]
    gaussian = ndimage.gaussian_filter(impulse, sigmas, 0, mode="constant", cval=0)
    gaussian /= np.max(gaussian) / value_scale
    half = gaussian.astype(np.float16)
    half[half == 0] = np.min(half[half != 0])
    weights = half.astype(np.float32)
    weights.flags.writeable = False
    return weights


def pad_to_patch(
    data: FloatArray, patch_size: Sequence[int]
) -> tuple[FloatArray, tuple[slice, ...]]:
    """Pad (C, *shape) with zeros to at least the patch size, centred.

    Returns:
        The padded data and the slices that cut the padding off again.
    """
    shape = data.shape[1:]
    pads = [max(p - n, 0) for p, n in zip(patch_size, shape, strict=True)]
    if not any(pads):
        return data, tuple(slice(0, n) for n in shape)
    widths = [(0, 0)] + [(d // 2, d // 2 + d % 2) for d in pads]
    padded = np.pad(data, widths, mode="constant", constant_values=0)
    revert = tuple(
        slice(lo, lo + n) for (lo, _), n in zip(widths[1:], shape, strict=True)
    )
    return padded, revert


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every non-empty combination of the spatial mirror axes, plus no flip."""
    if not axes:
        return [()]
    combos: list[tuple[int, ...]] = [()]
    for size in range(1, len(axes) + 1):
        combos += list(itertools.combinations(axes, size))
    return combos


def predict_logits(
    data: FloatArray,
    network: Network,
    *,
    patch_size: Sequence[int],
    num_heads: int,
    tile_step: float = 0.5,
    mirror_axes: Sequence[int] | None = None,
    batch_size: int = 1,
) -> npt.NDArray[np.floating]:
    """Sliding-window logits of one preprocessed case.

    Args:
        data: (C, *shape) at the plans' spacing.
        network: runs a batch of patches; see :data:`Network`.
        patch_size: the plans' patch size.
        num_heads: number of network outputs.
        tile_step: step between patches as a fraction of the patch size.
        mirror_axes: spatial axes (0-based) to mirror over, or None.
        batch_size: patches (mirrored copies included) per network call.

    Returns:
        (num_heads, *shape) logits averaged over overlaps and mirrors:
        float16 like nnU-Net's, or float32 if float16 overflowed.
    """
    args = (data, network, patch_size, num_heads, tile_step, mirror_axes, batch_size)
    logits = _accumulate(*args, dtype=np.float16)
    if not np.isfinite(logits).all():
        log.warning("float16 logits overflowed; running the case again in float32")
        logits = _accumulate(*args, dtype=np.float32)
    return logits


def _accumulate(
    data: FloatArray,
    network: Network,
    patch_size: Sequence[int],
    num_heads: int,
    tile_step: float,
    mirror_axes: Sequence[int] | None,
    batch_size: int,
    *,
    dtype: type[np.floating],
) -> npt.NDArray[np.floating]:
    padded, revert = pad_to_patch(data, patch_size)
    shape = padded.shape[1:]
    steps = compute_steps(shape, patch_size, tile_step)
    weights = gaussian_importance(tuple(patch_size))
    combos = mirror_combinations(mirror_axes)

    logits = np.zeros((num_heads, *shape), dtype=dtype)
    total = np.zeros(shape, dtype=dtype)
    windows = [
        tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
        for start in itertools.product(*steps)
    ]
    log.debug(
        "sliding window shape=%s patches=%d mirrors=%d",
        shape,
        len(windows),
        len(combos),
    )
    # Work items are (patch index, flip); a batch may span patches.
    items = [(w, c) for w in range(len(windows)) for c in range(len(combos))]
    pending: dict[int, FloatArray] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = np.stack(
            [_flip(padded[(slice(None), *windows[w])], combos[c]) for w, c in chunk]
        )
        outputs = network(np.ascontiguousarray(batch))
        for (w, c), output in zip(chunk, outputs, strict=True):
            unflipped = _flip(output, combos[c])
            if w in pending:
                pending[w] += unflipped
            else:
                pending[w] = unflipped.astype(np.float32, copy=True)
            if c < len(combos) - 1:
                continue
            patch = pending.pop(w)
            if len(combos) > 1:
                patch /= np.float32(len(combos))
            patch *= weights
            # Adds in float32 and rounds into the accumulator's precision.
            target = logits[(slice(None), *windows[w])]
            np.add(target, patch, out=target, casting="unsafe")
            np.add(total[windows[w]], weights, out=total[windows[w]], casting="unsafe")

    with np.errstate(over="ignore"):
        np.divide(logits, total, out=logits)
    return logits[(slice(None), *revert)]


def _flip(array: npt.NDArray[np.float32], axes: tuple[int, ...]) -> FloatArray:
    """Flip (C, *spatial) along spatial ``axes``."""
    if not axes:
        return array
    return np.flip(array, tuple(a + 1 for a in axes))
