"""The nine gravities of Qiniu's (ImageMagick's) placement grammar, in one place."""

GRAVITIES: tuple[str, ...] = (
    "NorthWest",
    "North",
    "NorthEast",
    "West",
    "Center",
    "East",
    "SouthWest",
    "South",
    "SouthEast",
)
