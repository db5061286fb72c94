"""Video filter graphs: rotation, scaling, frame rate, image and text watermarks.

A :class:`VideoChain` describes what happens to the picture, in a fixed order
a user can reason about: the source is first shown as a player would show it
(ffmpeg applies the stream's rotation), then turned by ``rotate``, scaled to
``s`` (exactly, or to fit with ``autoscale/1``), resampled in time to ``r``,
and only then marked, so that watermarks keep their size and place whatever
the geometry. :func:`video_graph` renders it as ``-filter_complex`` text.

Values from users never reach the graph unescaped: :func:`escape_value`
applies ffmpeg's two levels of quoting (option, then graph); text to draw is
read from a file with expansion off, so ``%{...}`` in it stays literal.
"""

from __future__ import annotations

import dataclasses

# Where a mark sits, Qiniu's names; the margin to the edges it touches is 10 px.
MARGIN = 10


@dataclasses.dataclass(frozen=True, slots=True)
class ImageMark:
    """An image laid over the video (an extra ffmpeg input)."""

    input_index: int
    gravity: str = "NorthEast"
    dx: int = 0  # added to x: positive moves right
    dy: int = 0  # added to y: positive moves down


@dataclasses.dataclass(frozen=True, slots=True)
class TextMark:
    """Text drawn on the video, read from ``text_file``."""

    text_file: str
    font: str = "Sans"
    color: str = "black"
    size: int = 24  # pixels
    gravity: str = "NorthEast"


@dataclasses.dataclass(frozen=True, slots=True)
class VideoChain:
    rotate: int = 0  # extra clockwise turn: 0, 90, 180, 270
    size: tuple[int, int] | None = None
    fit: bool = False  # autoscale: fit inside ``size``, keep the aspect ratio
    even: bool = False  # a 4:2:0 encoder needs even sides
    fps: float | None = None
    image: ImageMark | None = None
    text: TextMark | None = None
    pix_fmt: str | None = None


def escape_value(value: str) -> str:
    """``value`` quoted for a filter option inside a filter graph."""
    option = "".join("\\" + ch if ch in "\\':" else ch for ch in value)
    return "".join("\\" + ch if ch in "\\'[],;" else ch for ch in option)


def gravity_xy(gravity: str, dx: int, dy: int, *, outer: str, inner: str) -> tuple[str, str]:
    """x and y expressions placing an ``inner`` box (w, h names) in an ``outer`` one.

    ``outer`` and ``inner`` are pairs of ffmpeg variable names joined by a comma,
    such as ``"W,H"`` and ``"w,h"`` (overlay) or ``"w,h"`` and ``"tw,th"`` (drawtext).
    """
    big_w, big_h = outer.split(",")
    small_w, small_h = inner.split(",")
    name = gravity.lower()
    if name.endswith("west"):
        x = f"{MARGIN}"
    elif name.endswith("east"):
        x = f"{big_w}-{small_w}-{MARGIN}"
    else:
        x = f"({big_w}-{small_w})/2"
    if name.startswith("north"):
        y = f"{MARGIN}"
    elif name.startswith("south"):
        y = f"{big_h}-{small_h}-{MARGIN}"
    else:
        y = f"({big_h}-{small_h})/2"
    return f"{x}+({dx})", f"{y}+({dy})"


def _even(value: int) -> int:
    return max(2, value - value % 2)


def _scale(chain: VideoChain) -> str | None:
    if chain.size is None:
        # Odd sources still need even sides for 4:2:0.
        return "scale=trunc(iw/2)*2:trunc(ih/2)*2" if chain.even else None
    width, height = chain.size
    if chain.fit:
        rounding = ":force_divisible_by=2" if chain.even else ""
        return f"scale={width}:{height}:force_original_aspect_ratio=decrease{rounding}"
    if chain.even:
        width, height = _even(width), _even(height)
    return f"scale={width}:{height}"


def _turn(degrees: int) -> str | None:
    return {90: "transpose=clock", 180: "hflip,vflip", 270: "transpose=cclock"}.get(degrees)


def _drawtext(mark: TextMark) -> str:
    x, y = gravity_xy(mark.gravity, 0, 0, outer="w,h", inner="tw,th")
    options = [
        f"textfile={escape_value(mark.text_file)}",
        "expansion=none",
        f"font={escape_value(mark.font)}",
        f"fontcolor={escape_value(mark.color)}",
        f"fontsize={mark.size}",
        f"x={escape_value(x)}",
        f"y={escape_value(y)}",
    ]
    return "drawtext=" + ":".join(options)


def video_graph(chain: VideoChain, source: str, output: str = "vout") -> str:
    """The filter graph text taking ``[source]`` to ``[output]``."""
    steps = [
        step
        for step in (
            _turn(chain.rotate),
            _scale(chain),
            f"fps={chain.fps:g}" if chain.fps else None,
        )
        if step
    ]
    parts: list[str] = []
    label = source
    if chain.image is not None:
        mark = chain.image
        x, y = gravity_xy(mark.gravity, mark.dx, mark.dy, outer="W,H", inner="w,h")
        pre = ",".join(steps) if steps else "null"
        parts.append(f"[{label}]{pre}[base]")
        parts.append(
            f"[base][{mark.input_index}:v]overlay=x={escape_value(x)}:y={escape_value(y)}[marked]"
        )
        label, steps = "marked", []
    if chain.text is not None:
        steps.append(_drawtext(chain.text))
    if chain.pix_fmt:
        steps.append(f"format={chain.pix_fmt}")
    parts.append(f"[{label}]{','.join(steps) if steps else 'null'}[{output}]")
    return ";".join(parts)
