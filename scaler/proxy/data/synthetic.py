"""The embedded default dataset ``synthetic``: street scenes drawn on the fly, deterministic per seed.

A search compares networks by training each briefly on this data, so it must reward capacity the
way real street scenes do; a task that colour lookup solves, or that no small net can learn, would
rank every candidate the same. Each scene is a street canyon seen from a car, and each feature is
there for one capacity dimension:

- **Ground plane in perspective** (road between two sidewalks, terrain strips beyond them): the
  road and the sidewalk have the *same mean colour* in every image and differ only in texture
  (fine asphalt grain with lane marks vs. a grid of paving tiles with per-tile shading), and
  vegetation and terrain share a colour and differ in texture too (coarse leafy blobs vs. fine
  grass). Texture fades towards the horizon, where only layout tells them apart (the sidewalk is
  the band beyond the road's edge). Telling them apart needs receptive field and channels: *depth
  and width*.
- **Facades**: buildings are blocks with a regular grid of windows; some are painted the
  vegetation's colour, so only the pattern separates them from rows of trees. Sky is above the
  skyline, and in overcast images (grey sky, low saturation) position is what separates it from
  facades and road: *context, depth*.
- **Thin and small objects**: poles 1-3 px wide, lamp arms, traffic signs of a few pixels, and
  persons whose height shrinks with distance to a handful of pixels. A network that resizes its
  input by 1/4 averages them away: *input resolution*. Trunks are wider than poles and brown,
  so shape and context, not mere thinness, identify a pole.
- **Objects in context**: cars stand on the road, persons and poles on the sidewalks, trees on
  terrain or the sidewalk's outer edge; car, person and sign colours are random, so their class
  follows from shape and place, not colour: *depth, width*.
- **Photometric variation**: per-image white balance (a random channel mix), gain, saturation, an
  illumination ramp, shadows cast over the street and sensor noise, so that no fixed colour
  threshold labels a class and the network must judge colours relative to the rest of the image.
- **Ignore label** (255): an ego-vehicle hood at the bottom of some images and unlabelled clutter
  (bins, boxes) on the ground, as in Cityscapes' ``ego vehicle`` and ``static`` regions.

Every sample is generated from its own ``numpy`` generator seeded with (seed, split, index), so the
same seed gives the same samples in any process and any access order, train and val differ, and
nothing is downloaded. Generation uses only IEEE-rounded arithmetic and comparisons (no
transcendental functions, no reductions, whose results can depend on the CPU's vector unit), so
samples are bit-identical across processes and machines with the same numpy. Generated samples
are cached in memory, up to :data:`CACHE_BYTES` per dataset (a
:class:`~scaler.proxy.data.base.SampleCache`), so later epochs do not redraw them.

This module is longer than the others because one scene is one concern: the painter methods of
:class:`_Scene` share its geometry (horizon, vanishing point, facades) and are kept together.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import torch

from scaler.proxy.data.base import (
    CACHE_BYTES,
    IGNORE_INDEX,
    DataError,
    DatasetInfo,
    SampleCache,
    SegmentationDataset,
    register_dataset,
)

__all__ = [
    "CACHE_BYTES",
    "CLASS_NAMES",
    "SyntheticOptions",
    "SyntheticStreets",
    "open_synthetic",
    "parse_options",
    "render_scene",
]

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "terrain",
    "sky",
    "car",
    "person",
    "pole",
    "traffic sign",
)
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, CAR, PERSON, POLE, SIGN = range(len(CLASS_NAMES))

_SPLIT_CODES = {"train": 0, "val": 1}
# Keeps this dataset's streams apart from other users of the same integer seed.
_STREAM_TAG = 0x5C3E7
_OPTION_KEYS = ("size", "train", "val")
_MIN_SIDE, _MAX_SIDE = 32, 4096
_MAX_LENGTH = 1_000_000


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """The options of a ``synthetic[:key=value,...]`` SPEC.

    Attributes:
        height: Image height in pixels (``size=HxW``).
        width: Image width in pixels.
        train: Number of images in the train split.
        val: Number of images in the val split.
    """

    height: int = 256
    width: int = 512
    train: int = 300
    val: int = 60

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _MIN_SIDE <= value <= _MAX_SIDE:
                raise ValueError(f"{name} must be in [{_MIN_SIDE}, {_MAX_SIDE}], got {value}")
        for name in ("train", "val"):
            value = getattr(self, name)
            if not 1 <= value <= _MAX_LENGTH:
                raise ValueError(f"{name} must be in [1, {_MAX_LENGTH}], got {value}")


def parse_options(argument: str) -> SyntheticOptions:
    """Parse the argument of a ``synthetic`` SPEC: empty, or comma-separated ``key=value`` options.

    Args:
        argument: The text after ``synthetic:``, e.g. ``"size=128x256,train=200,val=40"``.

    Returns:
        The options, defaults filled in.

    Raises:
        DataError: An unknown or repeated key, a missing ``=``, or a bad value; the one-line message
            names the key and value and lists the allowed keys.
    """
    allowed = f"allowed keys: {', '.join(_OPTION_KEYS)} (e.g. synthetic:size=256x512,train=300,val=60)"
    values: dict[str, int] = {}
    seen: set[str] = set()
    for item in argument.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq:
            raise DataError(f"synthetic: option {item!r} is not key=value; {allowed}")
        if key not in _OPTION_KEYS:
            raise DataError(f"synthetic: unknown option {key!r} (value {value!r}); {allowed}")
        if key in seen:
            raise DataError(f"synthetic: option {key!r} is given twice (value {value!r}); {allowed}")
        seen.add(key)
        if key == "size":
            height, sep, width = (part.strip() for part in value.lower().partition("x"))
            if not (sep and height.isdecimal() and width.isdecimal()):
                raise DataError(f"synthetic: bad value {value!r} for option 'size': expected HxW; {allowed}")
            if not (_MIN_SIDE <= int(height) <= _MAX_SIDE and _MIN_SIDE <= int(width) <= _MAX_SIDE):
                raise DataError(
                    f"synthetic: bad value {value!r} for option 'size': height and width must be in "
                    f"[{_MIN_SIDE}, {_MAX_SIDE}]; {allowed}"
                )
            values["height"], values["width"] = int(height), int(width)
        else:
            if not value.isdecimal() or not 1 <= int(value) <= _MAX_LENGTH:
                raise DataError(
                    f"synthetic: bad value {value!r} for option {key!r}: expected a number of images in "
                    f"[1, {_MAX_LENGTH}]; {allowed}"
                )
            values[key] = int(value)
    return SyntheticOptions(**values)


class SyntheticStreets(SegmentationDataset):
    """One split of the synthetic street scenes (see the module docstring for the scene model).

    Args:
        split: ``"train"`` or ``"val"``.
        seed: Selects the images; the same seed gives bit-identical samples.
        options: Image size and split lengths; defaults to :class:`SyntheticOptions`'s.

    Raises:
        ValueError: ``split`` is neither ``"train"`` nor ``"val"``.
    """

    info = DatasetInfo(name="synthetic", class_names=CLASS_NAMES, ignore_index=IGNORE_INDEX)

    def __init__(self, split: str = "train", *, seed: int = 0, options: SyntheticOptions | None = None) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split = split
        self.seed = int(seed)
        self.options = options or SyntheticOptions()
        self.length = self.options.train if split == "train" else self.options.val
        self._cache = SampleCache()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._check_index(index)
        return self._cache.get(index, lambda: self._render(index))

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from: split, index, seed and size (it is generated, not read)."""
        o = self.options
        return f"synthetic[{self.split}] sample {index} (seed {self.seed}, {o.height}x{o.width}, generated)"

    def _render(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = render_scene(self._rng(index), self.options.height, self.options.width)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(mask)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"synthetic[{self.split}] has {self.length} samples, index {index} is out of range")
        return index

    def _rng(self, index: int) -> np.random.Generator:
        entropy = [_STREAM_TAG, self.seed % 2**64, _SPLIT_CODES[self.split], index]
        return np.random.default_rng(np.random.SeedSequence(entropy))


@register_dataset("synthetic")
def open_synthetic(argument: str, split: str, seed: int) -> SegmentationDataset:
    """Open a split of the synthetic street scenes from the argument of a ``synthetic[:k=v,...]`` SPEC.

    Args:
        argument: Empty, or comma-separated options ``size=HxW``, ``train=N``, ``val=N``.
        split: ``"train"`` or ``"val"``.
        seed: Selects the images.

    Returns:
        The dataset split.

    Raises:
        DataError: A bad option (see :func:`parse_options`).
    """
    return SyntheticStreets(split, seed=seed, options=parse_options(argument))


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene.

    Args:
        rng: The only source of randomness; the same generator state gives the same scene.
        height: Image height in pixels.
        width: Image width in pixels.

    Returns:
        ``(image, mask)``: ``uint8`` RGB ``[H, W, 3]`` and ``uint8`` labels ``[H, W]`` with values
        in ``[0, len(CLASS_NAMES))`` or ``IGNORE_INDEX``.
    """
    return _Scene(rng, height, width).render()


@functools.lru_cache(maxsize=8)
def _grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] whose blobs are about ``cell`` pixels across, as ``float32 [H, W]``."""
    cell = max(cell, 1.0)
    grid = rng.random((int(height / cell) + 3, int(width / cell) + 3), dtype=np.float32)
    ty = np.arange(height, dtype=np.float32) / np.float32(cell) + rng.random(dtype=np.float32)
    tx = np.arange(width, dtype=np.float32) / np.float32(cell) + rng.random(dtype=np.float32)
    fy, fx = ty - np.floor(ty), tx - np.floor(tx)
    iy, ix = ty.astype(np.int64), tx.astype(np.int64)
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    # Interpolate along x on the small grid first, so that only two full-size row gathers remain.
    rows = grid[:, ix] * (1 - fx) + grid[:, ix + 1] * fx
    return rows[iy] * (1 - fy)[:, None] + rows[iy + 1] * fy[:, None]


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], spread: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32), 0.02, 1.0)


_BUILDING_COLOURS = ((0.62, 0.56, 0.48), (0.48, 0.48, 0.5), (0.58, 0.36, 0.28), (0.74, 0.72, 0.66), (0.5, 0.44, 0.36))
_ANY_COLOURS = (
    (0.85, 0.85, 0.85),
    (0.12, 0.12, 0.13),
    (0.55, 0.56, 0.58),
    (0.7, 0.12, 0.1),
    (0.12, 0.22, 0.6),
    (0.2, 0.45, 0.25),
    (0.8, 0.7, 0.2),
    (0.45, 0.3, 0.2),
)
_SIGN_COLOURS = ((0.85, 0.1, 0.1), (0.1, 0.3, 0.85), (0.95, 0.8, 0.1), (0.9, 0.9, 0.9))
_SKIN = (0.8, 0.6, 0.48)


class _Scene:
    """The state of one scene while it is drawn: geometry, palette, texture fields and the canvas."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        # Sizes are designed at 256x512; everything scales with the image.
        self.unit = min(height / 256, width / 512)
        self.y, self.x = _grids(height, width)
        self.img = np.empty((height, width, 3), np.float32)
        self.mask = np.empty((height, width), np.uint8)

        self.horizon = height * rng.uniform(0.34, 0.48)
        self.vx = width * rng.uniform(0.35, 0.65)
        self.span = height - self.horizon
        # Ground lanes as lateral offsets at the bottom row, in image widths, left to right.
        centre, half = rng.uniform(-0.1, 0.1), rng.uniform(0.25, 0.42)
        self.road = (centre - half, centre + half)
        self.walk = (self.road[0] - rng.uniform(0.1, 0.3), self.road[1] + rng.uniform(0.1, 0.3))
        self.terrain = tuple(
            edge + sign * (rng.uniform(0.05, 0.4) if rng.random() < 0.5 else 0.0)
            for edge, sign in zip(self.walk, (-1, 1), strict=True)
        )

        self.ground_colour = _jitter(rng, (0.42, 0.42, 0.43), 0.1)
        self.green = _jitter(rng, (0.24, 0.4, 0.16), 0.08)
        overcast = rng.random()
        self.sky_colour = (1 - overcast) * np.array([0.45, 0.65, 0.95], np.float32) + overcast * np.array(
            [0.78, 0.8, 0.83], np.float32
        )

        unit = self.unit
        self.grain = rng.random((height, width), dtype=np.float32)
        self.leaf = _value_noise(rng, height, width, 2.5 * unit)
        self.bush = _value_noise(rng, height, width, 8 * unit)
        self.blotch = _value_noise(rng, height, width, 40 * unit)
        self.saturation = np.float32(rng.uniform(0.3, 1.1))
        self.gain = (rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, 3)).astype(np.float32)
        # White balance off by a random channel mix: hues shift per image, so absolute colour is unreliable.
        self.mix = (np.eye(3) + rng.uniform(-0.15, 0.15, (3, 3))).astype(np.float32)
        self.light = self._light()

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        self._background()
        for _, draw, args in self._objects():
            draw(*args)
        self._ego_hood()
        amplitude = np.float32(self.rng.uniform(0.03, 0.17) * 255)
        noise = amplitude * (self.rng.random((self.h, self.w), dtype=np.float32) - 0.5)
        self.img *= 255
        self.img += (noise + 0.5)[:, :, None]
        image = np.clip(self.img, 0, 255).astype(np.uint8)
        return image, self.mask

    def _tone(self, colour: np.ndarray) -> np.ndarray:
        """The image's channel mix, saturation and gain applied to colours ``[..., 3]``."""
        colour = np.asarray(colour, np.float32)
        m = self.mix
        colour = colour[..., 0:1] * m[0] + colour[..., 1:2] * m[1] + colour[..., 2:3] * m[2]
        lum = 0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]
        return (colour * self.saturation + ((1 - self.saturation) * lum)[..., None]) * self.gain

    def _light(self) -> np.ndarray:
        """Illumination ``[H, W]``: a ramp across the image and shadows cast over the street."""
        rng, f32 = self.rng, np.float32
        ramp = self.x / f32(self.w) if rng.random() < 0.5 else self.y / f32(self.h)
        light = 1 + (ramp - 0.5) * f32(rng.uniform(-0.6, 0.6))
        light = np.broadcast_to(light, (self.h, self.w)).copy()
        for _ in range(rng.integers(0, 3)):
            slope = rng.uniform(-2.5, 2.5)
            offset = self.w * rng.uniform(-0.2, 1.2)
            side = 1 if rng.random() < 0.5 else -1
            shadow = (side * (self.x - f32(offset) - f32(slope) * (self.y - f32(self.horizon))) > 0) & (
                self.y > self.horizon
            )
            light *= 1 - f32(rng.uniform(0.2, 0.5)) * shadow
        return light

    def _x_of(self, u: float, y_bottom: float) -> float:
        return self.vx + u * self.w * (y_bottom - self.horizon) / self.span

    def _background(self) -> None:
        """Label and paint the sky, the facades and the ground plane (everything but objects)."""
        palette: list[np.ndarray] = []
        region, lum = self._facades(palette)
        self._ground(palette, region, lum)
        lum *= self.light
        colours = self._tone(np.stack(palette).astype(np.float32))
        np.multiply(np.take(colours, region, axis=0), lum[:, :, None], out=self.img)

    def _facades(self, palette: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Sky, buildings and rows of trees over the whole frame (the ground covers the lower part later).

        Returns:
            ``(region, lum)``: an index into ``palette`` per pixel and a luminance (texture) per pixel.
        """
        rng, w, y, x, unit, f32, u8 = self.rng, self.w, self.y, self.x, self.unit, np.float32, np.uint8
        # Facade blocks along x, taller towards the image's sides.
        edges = [0.0]
        while edges[-1] < w:
            edges.append(edges[-1] + w * rng.uniform(0.05, 0.25))
        n = len(edges) - 1
        block = np.searchsorted(np.asarray(edges[1:]), x[0], side="right").clip(0, n - 1)
        centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
        side = np.minimum(np.abs(centres - self.vx) / (w / 2), 1.0)
        tops = self.horizon - self.horizon * rng.uniform(0.2, 1.1, n) * (0.35 + 0.65 * side)
        is_tree = rng.random(n) < 0.2
        # A quarter of the buildings wear the vegetation's colour: only the window grid tells them apart.
        painted_green = is_tree | (rng.random(n) < 0.25)
        building_colours = [_BUILDING_COLOURS[i] for i in rng.integers(len(_BUILDING_COLOURS), size=n)]
        palette.extend(_jitter(rng, self.green if painted_green[i] else building_colours[i], 0.06) for i in range(n))
        period_x = (rng.uniform(7, 18, n) * unit)[block].astype(f32)
        period_y = (rng.uniform(9, 20, n) * unit)[block].astype(f32)
        fill_x, fill_y = rng.uniform(0.35, 0.65, n)[block], rng.uniform(0.35, 0.6, n)[block]
        phase = (rng.uniform(0, 1, n)[block] * period_x).astype(f32)
        tree_col = is_tree[block]
        # Rows of trees have a ragged crown line.
        top = (tops[block] + tree_col * (self.bush[0] - 0.5) * 30 * unit).astype(f32)
        facade = y >= top
        tree = facade & tree_col
        building = facade & ~tree_col
        sky = ~facade
        column = (x[0] - phase) / period_x
        row = (y - top) / period_y
        windows = building & (column - np.floor(column) < fill_x) & (row - np.floor(row) < fill_y) & (row > 0.7)

        self.mask[:] = u8(SKY) * sky + u8(BUILDING) * building + u8(VEGETATION) * tree
        sky_i, window_i = len(palette), len(palette) + 1
        palette += [self.sky_colour, np.array([0.14, 0.17, 0.22], f32)]
        region = facade * block.astype(u8) + u8(sky_i) * sky
        region[windows] = window_i

        grain, leaf, bush, blotch = self.grain, self.leaf, self.bush, self.blotch
        t = np.clip(y / f32(max(self.horizon, 1.0)), 0, 1)
        lum = sky * ((0.82 + 0.25 * t) * (0.9 + 0.2 * blotch))
        lum += building * (0.9 + 0.1 * grain + 0.1 * blotch + windows * (0.7 * blotch - 0.2 - 0.1 * grain))
        lum += tree * (0.45 + 0.65 * leaf + 0.45 * bush)
        return region, lum

    def _ground(self, palette: list[np.ndarray], region: np.ndarray, lum: np.ndarray) -> None:
        """Road, sidewalks and terrain in perspective, written over the rows below the horizon."""
        rng, w, unit, f32, u8 = self.rng, self.w, self.unit, np.float32, np.uint8
        rows = slice(min(int(self.horizon) + 1, self.h), self.h)
        y, x = self.y[rows], self.x
        dy = y - f32(self.horizon)
        u = (x - f32(self.vx)) * f32(self.span / w) / dy
        z = f32(self.span) / dy
        ground = (u >= self.terrain[0]) & (u <= self.terrain[1])
        road = ground & (u >= self.road[0]) & (u <= self.road[1])
        walk = ground & ~road & (u >= self.walk[0]) & (u <= self.walk[1])
        terrain = ground & ~(road | walk)

        # Lane marks: a dashed centre line, and edge lines in some streets (both are road).
        centre = (self.road[0] + self.road[1]) / 2
        line = f32(2.5 * unit / w) * z
        dash = z / f32(rng.uniform(10, 25) * unit / self.span)
        marks = road & (np.abs(u - f32(centre)) < line) & (dash - 2 * np.floor(dash / 2) < 1)
        if rng.random() < 0.5:
            marks |= road & ((u - f32(self.road[0]) < line) | (f32(self.road[1]) - u < line))

        mask = self.mask[rows]
        mask[ground] = 0
        mask += u8(ROAD) * road + u8(SIDEWALK) * walk + u8(TERRAIN) * terrain
        paved_i, terrain_i, mark_i = range(len(palette), len(palette) + 3)
        palette += [self.ground_colour, _jitter(rng, self.green, 0.03), np.full(3, rng.uniform(0.75, 0.95), f32)]
        here = region[rows]
        here[ground] = 0
        here += u8(paved_i) * (road | walk) + u8(terrain_i) * terrain
        here[marks] = mark_i

        # Texture: road and sidewalk share a colour, vegetation and terrain another; texture tells them apart.
        grain, blotch = self.grain[rows], self.blotch[rows]
        fade = np.clip(dy / f32(self.span) * 3, 0, 1)
        tile_u = rng.uniform(12, 26) * unit / w
        tile_z = rng.uniform(0.35, 0.7) * tile_u * w / self.span
        fu, fz = u / f32(tile_u), z / f32(tile_z)
        iu, iz = np.floor(fu), np.floor(fz)
        lines = ((fu - iu) * f32(tile_u) < f32(1.6 * unit / w) * z) | (
            (fz - iz) * f32(tile_z) < f32(1.2 * unit / self.span) * z * z
        )
        shade = np.take(rng.uniform(-0.075, 0.075, 64).astype(f32), (iu * 7 + iz * 13).astype(np.int32) & 63)
        texture = lum[rows]
        texture[ground] = 0
        texture += road * (1 + fade * (0.3 * grain - 0.15) + 0.12 * blotch - 0.06)
        texture += walk * (1 + fade * (shade - 0.35 * lines + 0.06 * grain - 0.03))
        texture += terrain * (0.84 + 0.16 * grain + 0.2 * blotch)
        texture[marks] = (0.9 + 0.2 * grain)[marks]

    def _objects(self) -> list[tuple[float, Callable[..., None], tuple]]:
        """Objects to draw, as ``(bottom row, draw method, arguments)``; sorted by bottom row, far to near.

        Each object stands on the ground at lateral position ``u`` and distance ``s`` (0 at the horizon,
        1 at the bottom row), which also sets its size.
        """
        rng = self.rng
        objects: list[tuple[float, Callable[..., None], tuple]] = []

        def add(draw: Callable[..., None], s: float, u: float, *extra: object) -> None:
            bottom = self.horizon + s * self.span
            objects.append((bottom, draw, (bottom, self._x_of(u, bottom), s, *extra)))

        for _ in range(rng.integers(2, 9)):
            s = rng.uniform(0.08, 1.1)
            add(self._car, s, rng.uniform(self.road[0] + 0.06, self.road[1] - 0.06))
        for _ in range(rng.integers(4, 15)):
            s = rng.uniform(0.1, 1.0)
            if rng.random() < 0.1:
                lane = self.road
            elif rng.random() < 0.5:
                lane = (self.walk[0], self.road[0])
            else:
                lane = (self.road[1], self.walk[1])
            add(self._person, s, rng.uniform(*lane))
        for _ in range(rng.integers(3, 11)):
            s = rng.uniform(0.1, 1.0)
            left = rng.random() < 0.5
            edge, outwards = (self.road[0], -1) if left else (self.road[1], 1)
            # Near the kerb, where street lamps and signs stand.
            u = edge + outwards * rng.uniform(0.01, 0.3) * abs(self.walk[int(not left)] - edge)
            add(self._pole, s, u, not left)
        for _ in range(rng.integers(0, 5)):
            s = rng.uniform(0.15, 1.0)
            left = rng.random() < 0.5
            outer = self.terrain[0] if left else self.terrain[1]
            inner = self.walk[0] if left else self.walk[1]
            add(self._tree, s, rng.uniform(min(outer, inner), max(outer, inner)) if outer != inner else inner)
        for _ in range(rng.integers(0, 4)):
            s = rng.uniform(0.1, 1.0)
            add(self._clutter, s, rng.uniform(self.walk[0], self.walk[1]))
        return sorted(objects, key=lambda item: item[0])

    def _box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice] | None:
        r0, r1 = max(int(y0), 0), min(int(np.ceil(y1)), self.h)
        c0, c1 = max(int(x0), 0), min(int(np.ceil(x1)), self.w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _paint(self, box: tuple[slice, slice], where: np.ndarray, label: int, colour: np.ndarray) -> None:
        """Label ``where`` (a boolean mask over ``box``) and paint it ``colour`` (one colour, or one per pixel)."""
        self.mask[box][where] = label
        colour = self._tone(colour if colour.ndim == 1 else colour[where])
        self.img[box][where] = colour * self.light[box][where][:, None]

    def _car(self, yb: float, xc: float, s: float) -> None:
        rng = self.rng
        cw = s * self.w * rng.uniform(0.12, 0.18)
        ch = cw * rng.uniform(0.55, 0.75)
        top, left = yb - ch, xc - cw / 2
        box = self._box(top, yb, left, left + cw)
        if box is None:
            return
        a = (self.x[:, box[1]] - np.float32(left)) / np.float32(cw)
        b = (self.y[box[0]] - np.float32(top)) / np.float32(ch)
        ea, eb = (a - 0.5) / 0.5, (b - 0.64) / 0.26
        body = (ea * ea) ** 2 + (eb * eb) ** 2 <= 1
        half = 0.3 + 0.12 * (b - 0.04) / 0.4
        cabin = (b >= 0.04) & (b < 0.45) & (np.abs(a - 0.5) <= half)
        glass = cabin & (b > 0.1) & (np.abs(a - 0.5) <= half - 0.05)
        wheel_r = 0.11 * cw
        wy = (b - 0.88) * np.float32(ch)
        wheels = (((a - 0.2) * np.float32(cw)) ** 2 + wy**2 <= wheel_r**2) | (
            ((a - 0.8) * np.float32(cw)) ** 2 + wy**2 <= wheel_r**2
        )
        paint = _jitter(rng, _ANY_COLOURS[rng.integers(len(_ANY_COLOURS))], 0.08)
        shine = (1.15 - 0.4 * b)[:, :, None] * np.ones_like(a)[:, :, None]
        colour = paint * shine
        colour = np.where(glass[:, :, None], np.float32(0.12) + 0.15 * (1 - b)[:, :, None], colour)
        tyres = wheels & (~body | (b > 0.8))
        colour = np.where(tyres[:, :, None], np.float32(0.06), colour)
        lights = body & (b > 0.55) & (b < 0.66) & ((a < 0.14) | (a > 0.86))
        colour = np.where(lights[:, :, None], np.array([0.9, 0.2, 0.15], np.float32), colour)
        self._paint(box, body | cabin | wheels, CAR, colour.astype(np.float32))

    def _person(self, yb: float, xc: float, s: float) -> None:
        rng = self.rng
        ph = max(s * self.h * rng.uniform(0.24, 0.36), 6 * self.unit)
        top = yb - ph
        box = self._box(top, yb, xc - 0.3 * ph, xc + 0.3 * ph)
        if box is None:
            return
        dx = (self.x[:, box[1]] - np.float32(xc)) / np.float32(ph)
        dy = (self.y[box[0]] - np.float32(top)) / np.float32(ph)
        head = dx**2 + (dy - 0.08) ** 2 <= 0.075**2
        torso = (dx / 0.14) ** 2 + ((dy - 0.33) / 0.2) ** 2 <= 1
        stride = rng.uniform(0.0, 0.1)
        legs = (dy >= 0.48) & (
            (np.abs(dx + 0.05 + stride * (dy - 0.48)) < 0.045) | (np.abs(dx - 0.05 - stride * (dy - 0.48)) < 0.045)
        )
        arms = (dy >= 0.17) & (dy < 0.52) & (np.abs(np.abs(dx) - 0.15) < 0.035)
        shirt = _jitter(rng, _ANY_COLOURS[rng.integers(len(_ANY_COLOURS))], 0.1)
        trousers = _jitter(rng, (0.18, 0.18, 0.25), 0.08)
        colour = np.where((dy >= 0.48)[:, :, None], trousers, shirt) * np.ones_like(dx)[:, :, None]
        colour = np.where(head[:, :, None], _jitter(rng, _SKIN, 0.12), colour)
        self._paint(box, head | torso | legs | arms, PERSON, colour.astype(np.float32))

    def _pole(self, yb: float, xc: float, s: float, arm_left: bool) -> None:
        rng = self.rng
        width = int(np.clip(round(rng.uniform(0.6, 3.4) * max(s, 0.4) * self.unit), 1, 3))
        height = s * self.h * rng.uniform(0.8, 1.3)
        top = yb - height
        colour = _jitter(rng, (0.4, 0.4, 0.42), 0.12)
        # Whole columns, so that a pole is exactly ``width`` pixels wide.
        xc = float(np.floor(xc))
        box = self._box(top, yb, xc, xc + width)
        if box is not None:
            self._paint(box, np.ones((box[0].stop - box[0].start, box[1].stop - box[1].start), bool), POLE, colour)
        if rng.random() < 0.3:
            # A street lamp's arm: a thin horizontal part of the pole reaching over the road.
            length = height * rng.uniform(0.15, 0.3)
            x0, x1 = (xc - length, xc) if arm_left else (xc + width, xc + width + length)
            box = self._box(top, top + width, x0, x1)
            if box is not None:
                self._paint(box, np.ones((box[0].stop - box[0].start, box[1].stop - box[1].start), bool), POLE, colour)
        if rng.random() < 0.7:
            size = max(s * self.h * rng.uniform(0.06, 0.11), 4 * self.unit)
            cy = top + size * rng.uniform(0.6, 2.0)
            cx = xc + width / 2
            box = self._box(cy - size / 2, cy + size / 2, cx - size / 2, cx + size / 2)
            if box is None:
                return
            dx = (self.x[:, box[1]] - np.float32(cx)) / np.float32(size / 2)
            dy = (self.y[box[0]] - np.float32(cy)) / np.float32(size / 2)
            shape = rng.integers(3)
            if shape == 0:
                where = dx**2 + dy**2 <= 1
            elif shape == 1:
                where = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
            else:
                where = (dy <= 0.8) & (np.abs(dx) <= (dy + 1) / 1.8 * 1.0)
            face = _jitter(rng, _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))], 0.06)
            rim = dx**2 + dy**2 > 0.55 if shape == 0 else (np.abs(dx) > 0.75) | (np.abs(dy) > 0.75)
            colour = np.where(rim[:, :, None], np.float32(0.92), face) * np.ones_like(dx)[:, :, None]
            self._paint(box, where, SIGN, colour.astype(np.float32))

    def _tree(self, yb: float, xc: float, s: float) -> None:
        rng = self.rng
        trunk_w = max(s * 9 * self.unit * rng.uniform(0.8, 1.3), 3.0)
        trunk_h = s * self.h * rng.uniform(0.2, 0.4)
        radius = s * self.h * rng.uniform(0.12, 0.22)
        trunk_top = yb - trunk_h
        cy = trunk_top - radius * 0.6
        box = self._box(cy - radius * 1.3, yb, xc - radius * 1.3, xc + radius * 1.3)
        if box is None:
            return
        dx = (self.x[:, box[1]] - np.float32(xc)) / np.float32(radius)
        dy = (self.y[box[0]] - np.float32(cy)) / np.float32(radius)
        crown = dx**2 + dy**2 <= (0.75 + 0.5 * self.bush[box]) ** 2
        trunk = (np.abs(self.x[:, box[1]] - np.float32(xc)) <= trunk_w / 2) & (self.y[box[0]] >= cy)
        leaves = _jitter(rng, self.green, 0.05) * (0.45 + 0.65 * self.leaf[box] + 0.45 * self.bush[box])[:, :, None]
        bark = _jitter(rng, (0.32, 0.22, 0.14), 0.05) * (0.85 + 0.3 * self.grain[box])[:, :, None]
        colour = np.where(crown[:, :, None], leaves, bark)
        self._paint(box, crown | trunk, VEGETATION, colour.astype(np.float32))

    def _clutter(self, yb: float, xc: float, s: float) -> None:
        rng = self.rng
        bw = s * self.h * rng.uniform(0.04, 0.12)
        bh = bw * rng.uniform(0.6, 1.6)
        box = self._box(yb - bh, yb, xc - bw / 2, xc + bw / 2)
        if box is None:
            return
        paint = _jitter(rng, _ANY_COLOURS[rng.integers(len(_ANY_COLOURS))], 0.15)
        colour = paint * (0.8 + 0.4 * self.leaf[box])[:, :, None]
        self._paint(box, np.ones(colour.shape[:2], bool), IGNORE_INDEX, colour.astype(np.float32))

    def _ego_hood(self) -> None:
        rng = self.rng
        if rng.random() >= 0.5:
            return
        depth = self.h * rng.uniform(0.06, 0.14)
        xc = self.w * rng.uniform(0.4, 0.6)
        reach = self.w * rng.uniform(0.6, 0.9)
        rows = slice(max(int(self.h - depth), 0), self.h)
        curve = np.float32(self.h) - np.float32(depth) * np.maximum(1 - ((self.x - np.float32(xc)) / reach) ** 2, 0)
        where = (self.y[rows] >= curve) & (curve < self.h)
        paint = _jitter(rng, _ANY_COLOURS[rng.integers(len(_ANY_COLOURS))], 0.05) * 0.6
        glare = (0.7 + 0.6 * self.blotch[rows])[:, :, None]
        self._paint((rows, slice(0, self.w)), where, IGNORE_INDEX, (paint * glare).astype(np.float32))
