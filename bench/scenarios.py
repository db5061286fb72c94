"""The operations compared, as each server spells them, and the targets.

One :class:`Scenario` is one transformation of one kind of source photo:
Dora's ``imageView2`` fop and the thumbor URL that does the same thing
(fit-inside is ``fit-in/WxH``; cover-and-crop is plain ``WxH``, thumbor's
default smart-less centre crop; WebP output is ``filters:format(webp)``).
Both servers read the same files: Dora from its bucket (uploaded through its
API), thumbor from the directory its file loader points at.
"""

from __future__ import annotations

from dataclasses import dataclass

BUCKET = "bench"
SOURCES = {"1920x1080": (1920, 1080), "4000x3000": (4000, 3000)}
BOX = (300, 200)

# issue 5's acceptance: Dora / thumbor requests per second, and efficiency
RATIO_TARGETS = {("cover", "1920x1080"): 3.0, ("fit", "1920x1080"): 1.3,
                 ("cover", "4000x3000"): 4.0, ("fit", "4000x3000"): 1.3}  # fmt: skip
EFFICIENCY_TARGET = 0.80
EFFICIENCY_SOURCES = ("1920x1080",)


def source_name(source: str, index: int) -> str:
    """The file / object key of the ``index``-th distinct photo of a size."""
    return f"p{source}-{index}.jpg"


def tiny_name(index: int) -> str:
    """The file / object key of the ``index``-th distinct 16×16 PNG (the no-op's input)."""
    return f"tiny-16x16-{index}.png"


@dataclass(frozen=True)
class Scenario:
    """One transformation compared between Dora and thumbor."""

    kind: str  # "cover" or "fit"
    source: str  # a key of SOURCES
    fmt: str  # "jpg" or "webp"

    @property
    def name(self) -> str:
        return f"{self.kind}-{BOX[0]}x{BOX[1]}-{self.fmt} {self.source}"

    @property
    def label(self) -> str:
        """Short text for plots and tables."""
        kind = "cover+crop" if self.kind == "cover" else "fit-inside"
        return f"{kind} {self.fmt} {self.source}"

    @property
    def dora_fop(self) -> str:
        mode = 1 if self.kind == "cover" else 2
        fop = f"imageView2/{mode}/w/{BOX[0]}/h/{BOX[1]}"
        return fop + "/format/webp" if self.fmt == "webp" else fop

    @property
    def thumbor_op(self) -> str:
        size = f"{BOX[0]}x{BOX[1]}"
        op = size if self.kind == "cover" else f"fit-in/{size}"
        return op + "/filters:format(webp)" if self.fmt == "webp" else op

    @property
    def ratio_target(self) -> float | None:
        return RATIO_TARGETS.get((self.kind, self.source))

    @property
    def efficiency_target(self) -> float | None:
        return EFFICIENCY_TARGET if self.source in EFFICIENCY_SOURCES else None

    def dora_paths(self, objects: int) -> list[str]:
        return [f"/{BUCKET}/{source_name(self.source, i)}?{self.dora_fop}" for i in range(objects)]

    def thumbor_paths(self, objects: int) -> list[str]:
        return [f"/unsafe/{self.thumbor_op}/{source_name(self.source, i)}" for i in range(objects)]


PEER_SCENARIOS = [
    Scenario(kind, source, fmt)
    for source in SOURCES
    for fmt in ("jpg", "webp")
    for kind in ("cover", "fit")
]

# The near-no-op: gateway + RPC + worker round trip on a 16x16 PNG. Dora has
# no true no-op op yet, so imageInfo (open the header, answer JSON) stands in;
# thumbor's nearest is its /meta endpoint (loads the image, answers JSON).
# Distinct objects, so that identical in-flight requests are never coalesced.
NOOP_DORA_OP = "imageInfo"
NOOP_THUMBOR_OP = "meta"


def noop_dora_paths(objects: int) -> list[str]:
    return [f"/{BUCKET}/{tiny_name(i)}?{NOOP_DORA_OP}" for i in range(objects)]


def noop_thumbor_paths(objects: int) -> list[str]:
    return [f"/unsafe/{NOOP_THUMBOR_OP}/{tiny_name(i)}" for i in range(objects)]


# Cache hits: one URL, again and again, with Dora's result cache on.
CACHE_HIT_SCENARIO = Scenario("cover", "1920x1080", "jpg")


def mixed_paths(objects: int) -> list[str]:
    """Dora paths for the memory run: every peer scenario and the no-op, interleaved."""
    columns = [s.dora_paths(objects) for s in PEER_SCENARIOS]
    noops = noop_dora_paths(objects)
    mixed: list[str] = []
    for index in range(objects):
        mixed.extend(column[index] for column in columns)
        mixed.append(noops[index])
    return mixed
