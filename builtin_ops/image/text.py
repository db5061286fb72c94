"""Text marks: font names to installed fonts, twips to pixels, text to an RGBA mark.

Qiniu's font names are those of Windows ("宋体", "黑体", "微软雅黑", "Arial");
here they become fontconfig patterns, and ``fc-match`` picks the installed
font. The pattern carries the text's characters (``charset``), which
fontconfig weighs above the family, so text the named font cannot show
(Chinese in "Arial", say) is drawn in a font that can, never as boxes. The
project installs WenQuanYi Zen Hei (``fonts-wqy-zenhei``, a Hei face like
Qiniu's default 黑体) for CJK. Matches are cached per (name, characters).

Sizes are in twips, 1/20 of a point, at Qiniu's reference 72 dpi: 20 twips
are one pixel, the default 240 twips 12 px. The text is one line (control
characters become spaces), at most ``MAX_MARK_TEXT_CHARS`` characters and
``MAX_FONT_TWIPS`` large (the spec enforces both); the mark is measured
before it is drawn, so nothing larger than the base image is ever rendered.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import subprocess
import threading
import unicodedata

from PIL import Image, ImageColor, ImageDraw, ImageFont

from dora.errors import BadRequest

DEFAULT_FONT = "黑体"
DEFAULT_TWIPS = 240
DEFAULT_FILL = "#000000"
TWIPS_PER_PIXEL = 20  # 1 pt = 20 twips = 1 px at 72 dpi
FC_MATCH_TIMEOUT = 5.0
MAX_CHARSET = 64  # distinct characters passed to fontconfig
_FONT_CACHE_SIZE = 16  # loaded fonts kept per thread

_CJK_SANS = "sans-serif:lang=zh-cn"
_CJK_SERIF = "serif:lang=zh-cn"
# Windows' Chinese font names have no namesake on a Linux server.
_ALIASES = {
    "黑体": _CJK_SANS,
    "simhei": _CJK_SANS,
    "微软雅黑": _CJK_SANS,
    "microsoft yahei": _CJK_SANS,
    "雅黑": _CJK_SANS,
    "幼圆": _CJK_SANS,
    "宋体": _CJK_SERIF,
    "新宋体": _CJK_SERIF,
    "simsun": _CJK_SERIF,
    "nsimsun": _CJK_SERIF,
    "楷体": _CJK_SERIF,
    "kaiti": _CJK_SERIF,
    "仿宋": _CJK_SERIF,
    "fangsong": _CJK_SERIF,
}


@dataclasses.dataclass(frozen=True, slots=True)
class FontFile:
    """A face in an installed font file (``index`` within a collection)."""

    path: str
    index: int


def twips_to_pixels(twips: int) -> int:
    """The pixel size of a font of ``twips`` (at 72 dpi), at least 1."""
    return max(1, round(twips / TWIPS_PER_PIXEL))


def parse_colour(text: str) -> tuple[int, int, int, int]:
    """``#RGB``, ``#RRGGBB``, ``#RRGGBBAA`` or a CSS colour name, as RGBA."""
    try:
        colour = ImageColor.getrgb(text)
    except ValueError as exc:
        raise BadRequest(f"watermark: unknown colour {text[:32]!r}") from exc
    return (*colour[:3], colour[3] if len(colour) == 4 else 255)


def clean_text(text: str) -> str:
    """One line: control characters (newlines, tabs) become spaces."""
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)


def _family(name: str) -> str:
    """The family part of a fontconfig pattern: aliases, else the name stripped
    of everything fontconfig's pattern syntax gives a meaning to."""
    alias = _ALIASES.get(name.strip().lower())
    if alias is not None:
        return alias
    family = "".join(ch for ch in name if ch.isalnum() or ch in " _.'&").strip()
    return family or _CJK_SANS


def font_pattern(name: str | None, text: str) -> str:
    """The fontconfig pattern for drawing ``text`` in the font Qiniu calls ``name``."""
    chars = sorted({ord(ch) for ch in text if not ch.isspace()})[:MAX_CHARSET]
    pattern = _family(name or DEFAULT_FONT)
    if chars:
        pattern += ":charset=" + " ".join(f"{code:x}" for code in chars)
    return pattern


@functools.lru_cache(maxsize=256)
def _fc_match(pattern: str) -> FontFile | None:
    try:
        done = subprocess.run(
            ["fc-match", "--format=%{file}\n%{index}\n", pattern],
            capture_output=True,
            text=True,
            timeout=FC_MATCH_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None  # no fontconfig here: Pillow's built-in face below
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2 or not lines[0]:
        return None
    try:
        return FontFile(lines[0], int(lines[1] or 0))
    except ValueError:
        return None


def find_font(name: str | None, text: str) -> FontFile | None:
    """The installed font to draw ``text`` with, or None when fontconfig is missing."""
    return _fc_match(font_pattern(name, text))


_loaded = threading.local()  # FreeType faces are not shared between threads


def load_font(name: str | None, text: str, pixels: int) -> ImageFont.FreeTypeFont:
    """A loaded face for ``text`` at ``pixels``, cached per thread."""
    found = find_font(name, text)
    key = (found, pixels)
    cache: dict[tuple[FontFile | None, int], ImageFont.FreeTypeFont]
    cache = getattr(_loaded, "fonts", None) or {}
    _loaded.fonts = cache
    font = cache.get(key)
    if font is None:
        if len(cache) >= _FONT_CACHE_SIZE:
            cache.clear()
        if found is None:
            font = ImageFont.load_default(pixels)
        else:
            try:
                font = ImageFont.truetype(found.path, pixels, index=found.index)
            except OSError as exc:
                raise BadRequest(f"watermark: cannot load font {found.path}: {exc}") from exc
        assert isinstance(font, ImageFont.FreeTypeFont)
        cache[key] = font
    return font


def measure(text: str, font: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """The size of the mark :func:`render` draws: the advance and the line's height."""
    _, _, right, bottom = font.getbbox(text)
    ascent, descent = font.getmetrics()
    width = max(1, math.ceil(right), math.ceil(font.getlength(text)))
    height = max(1, math.ceil(bottom), ascent + descent)
    return width, height


def render(text: str, font: ImageFont.FreeTypeFont, fill: tuple[int, int, int, int]) -> Image.Image:
    """The text as an RGBA image of :func:`measure`'s size, antialiased, in ``fill``."""
    size = measure(text, font)
    coverage = Image.new("L", size, 0)
    ImageDraw.Draw(coverage).text((0, 0), text, font=font, fill=255)
    red, green, blue, alpha = fill
    if alpha != 255:
        coverage = coverage.point([value * alpha // 255 for value in range(256)])
    mark = Image.new("RGBA", size, (red, green, blue, 0))
    mark.putalpha(coverage)
    return mark
