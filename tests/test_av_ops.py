"""Audio/video ops against the real ffmpeg: avinfo, vframe, avthumb, HLS, avconcat.

Clips are made once per module with lavfi (testsrc2 + sine, 320x240, 3 s)
and every output is checked by ffprobe (run here, independently of the code
under test) or Pillow: codecs, durations, sizes, bitrates, pixels.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from dora.b64 import urlsafe_b64encode as b64
from dora.builtin_ops.av import AV_SPECS, run_av
from dora.config import Limits
from dora.errors import BadRequest, DoraError, PayloadTooLarge
from dora.fop import parse_stage
from dora.ops import Output

LIMITS = Limits()
KEY = bytes(range(16))


def ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-v", "error", "-y", *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


def ffprobe(path: str | Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            *extra,
            "-show_format",
            "-show_streams",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def stream(info: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in info["streams"] if s["codec_type"] == kind)
    return found


def kinds(info: dict[str, Any]) -> list[str]:
    return [s["codec_type"] for s in info["streams"]]


def duration(info: dict[str, Any]) -> float:
    return float(info["format"]["duration"])


def make_clip(
    path: Path,
    *,
    size: str = "320x240",
    seconds: float = 3.0,
    audio: bool = True,
    video_args: tuple[str, ...] = (),
) -> Path:
    src = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}"]
    if audio:
        src += ["-f", "lavfi", "-i", f"sine=f=440:sample_rate=44100:d={seconds}"]
    codec = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *video_args]
    if audio:
        codec += ["-c:a", "aac", "-b:a", "64k"]
    ffmpeg(*src, *codec, str(path))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("av-media")
    clip = make_clip(base / "clip.mp4")
    small = make_clip(base / "small.mp4", size="160x120", seconds=2.0, audio=False)
    # A noisy picture at a low bitrate: re-encoding it unbounded would take ~2 Mbit/s.
    low = base / "low.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=3,noise=alls=30:allf=t",
        "-f",
        "lavfi",
        "-i",
        "sine=d=3",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-b:v",
        "150k",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        str(low),
    )
    rotated = base / "rotated.mp4"
    ffmpeg("-i", str(clip), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    tone = base / "tone.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=f=660:d=1", "-c:a", "libmp3lame", str(tone))
    mark = base / "mark.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(mark)
    return {
        "clip": clip,
        "small": small,
        "low": low,
        "rotated": rotated,
        "tone": tone,
        "mark": mark,
    }


def av(text: str, src: Path, out_dir: Path, **kwargs: Any) -> Output:
    return run_av(parse_stage(text, AV_SPECS), str(src), str(out_dir), LIMITS, **kwargs)


def written(out: Output) -> str:
    """The main file an op wrote."""
    assert out.path is not None and os.path.isfile(out.path)
    return out.path


def image_of(out: Output) -> Image.Image:
    assert out.body is not None
    return Image.open(io.BytesIO(out.body))


# --- avinfo -------------------------------------------------------------------


def test_avinfo_answers_ffprobe_shaped_json(media: dict[str, Path], tmp_path: Path) -> None:
    out = av("avinfo", media["clip"], tmp_path)
    assert out.mime == "application/json" and out.body is not None
    info = json.loads(out.body)
    video, audio = stream(info, "video"), stream(info, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert video["r_frame_rate"] == "25/1"
    assert (audio["codec_name"], audio["sample_rate"], audio["channels"]) == ("aac", "44100", 1)
    assert abs(duration(info) - 3.0) < 0.1
    assert info["format"]["format_name"].startswith("mov,mp4")
    assert int(info["format"]["size"]) == media["clip"].stat().st_size
    assert "filename" not in info["format"]  # the worker's path stays private


def test_avinfo_reports_rotation_as_qiniu_did(media: dict[str, Path], tmp_path: Path) -> None:
    # ffprobe gives the display matrix's counter-clockwise angle; the old
    # "rotate" tag (what Qiniu's answers carry) is the clockwise turn to apply.
    matrix = stream(ffprobe(media["rotated"]), "video")["side_data_list"][0]["rotation"]
    out = av("avinfo", media["rotated"], tmp_path)
    assert out.body is not None
    assert stream(json.loads(out.body), "video")["tags"]["rotate"] == str(-matrix % 360)
    assert -matrix % 360 in (90, 270)


# --- vframe -------------------------------------------------------------------


def reference_frame(src: Path, seconds: float, tmp_path: Path) -> Image.Image:
    path = tmp_path / f"ref-{seconds}.png"
    ffmpeg("-i", str(src), "-ss", str(seconds), "-frames:v", "1", str(path))
    return Image.open(path).convert("RGB")


def difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b.resize(a.size))).mean) / 3


def test_vframe_takes_the_frame_at_the_offset(media: dict[str, Path], tmp_path: Path) -> None:
    out = av("vframe/png/offset/1.2", media["clip"], tmp_path)
    assert out.mime == "image/png"
    frame = image_of(out).convert("RGB")
    assert frame.size == (320, 240)
    near = difference(frame, reference_frame(media["clip"], 1.2, tmp_path))
    far = difference(frame, reference_frame(media["clip"], 2.4, tmp_path))
    assert near < 2.0 < far
    assert not (tmp_path / "vframe.png").exists()  # the answer is the body, no file left


@pytest.mark.parametrize(
    ("fop", "fmt", "size"),
    [
        ("vframe/jpg/offset/1/w/160", "JPEG", (160, 120)),
        ("vframe/jpg/offset/1/h/60", "JPEG", (80, 60)),
        ("vframe/png/offset/0/w/100/h/50", "PNG", (100, 50)),
        ("vframe/png/offset/2/rotate/90", "PNG", (240, 320)),
        ("vframe/jpg/offset/2/rotate/180/w/64", "JPEG", (64, 48)),
    ],
)
def test_vframe_format_and_size(
    media: dict[str, Path], tmp_path: Path, fop: str, fmt: str, size: tuple[int, int]
) -> None:
    picture = image_of(av(fop, media["clip"], tmp_path))
    assert (picture.format, picture.size) == (fmt, size)


def test_vframe_applies_the_source_rotation(media: dict[str, Path], tmp_path: Path) -> None:
    assert image_of(av("vframe/jpg/offset/1", media["rotated"], tmp_path)).size == (240, 320)
    turned = av("vframe/jpg/offset/1/rotate/auto", media["rotated"], tmp_path)
    assert image_of(turned).size == (240, 320)


def test_vframe_near_the_end_answers_the_last_frame(media: dict[str, Path], tmp_path: Path) -> None:
    frame = image_of(av("vframe/png/offset/2.99", media["clip"], tmp_path)).convert("RGB")
    assert difference(frame, reference_frame(media["clip"], 2.96, tmp_path)) < 2.0


@pytest.mark.parametrize("offset", ["3", "3.5", "600"])
def test_vframe_past_the_end_is_a_400(media: dict[str, Path], tmp_path: Path, offset: str) -> None:
    with pytest.raises(BadRequest, match="offset") as caught:
        av(f"vframe/jpg/offset/{offset}", media["clip"], tmp_path)
    assert caught.value.status == 400


def test_vframe_of_audio_is_a_400(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="no video"):
        av("vframe/jpg/offset/0", media["tone"], tmp_path)


# --- avthumb --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "codecs"),
    [
        ("mp4", "video/mp4", {"video": "h264", "audio": "aac"}),
        ("webm", "video/webm", {"video": "vp9", "audio": "opus"}),
        ("flv", "video/x-flv", {"video": "h264", "audio": "aac"}),
        ("mp3", "audio/mpeg", {"audio": "mp3"}),
        ("m4a", "audio/mp4", {"audio": "aac"}),
        ("ogg", "audio/ogg", {"audio": "vorbis"}),
        ("gif", "image/gif", {"video": "gif"}),
    ],
)
def test_avthumb_formats(
    media: dict[str, Path], tmp_path: Path, fmt: str, mime: str, codecs: dict[str, str]
) -> None:
    out = av(f"avthumb/{fmt}", media["clip"], tmp_path)
    assert out.mime == mime and out.path == str(tmp_path / f"avthumb.{fmt}")
    assert out.meta["files"] == [f"avthumb.{fmt}"]
    info = ffprobe(written(out))
    assert {s["codec_type"]: s["codec_name"] for s in info["streams"]} == codecs
    assert abs(duration(info) - 3.0) < 0.25
    if "video" in codecs:
        video = stream(info, "video")
        assert (video["width"], video["height"]) == (320, 240)
    if fmt == "gif":
        assert Fraction(stream(info, "video")["avg_frame_rate"]) <= 15


def test_avthumb_webm_with_vorbis(media: dict[str, Path], tmp_path: Path) -> None:
    out = av("avthumb/webm/acodec/libvorbis/vcodec/libvpx", media["clip"], tmp_path)
    info = ffprobe(written(out))
    assert {s["codec_name"] for s in info["streams"]} == {"vp8", "vorbis"}


@pytest.mark.parametrize(
    ("fop", "size"),
    [
        ("avthumb/mp4/s/160x160", (160, 160)),
        ("avthumb/mp4/s/160x160/autoscale/1", (160, 120)),
        ("avthumb/mp4/s/400x100/autoscale/1", (132, 100)),
        ("avthumb/mp4/s/161x121", (160, 120)),  # 4:2:0 needs even sides
        ("avthumb/mp4/rotate/90", (240, 320)),
        ("avthumb/mp4/rotate/90/s/120x160", (120, 160)),
        ("avthumb/gif/s/161x121/r/5", (161, 121)),
    ],
)
def test_avthumb_geometry(
    media: dict[str, Path], tmp_path: Path, fop: str, size: tuple[int, int]
) -> None:
    video = stream(ffprobe(written(av(fop, media["clip"], tmp_path))), "video")
    assert (video["width"], video["height"]) == size


def test_avthumb_bakes_in_the_source_rotation(media: dict[str, Path], tmp_path: Path) -> None:
    info = ffprobe(written(av("avthumb/mp4", media["rotated"], tmp_path)))
    video = stream(info, "video")
    assert (video["width"], video["height"]) == (240, 320)
    assert not video.get("side_data_list")


def test_avthumb_trims_with_ss_and_t(media: dict[str, Path], tmp_path: Path) -> None:
    info = ffprobe(written(av("avthumb/mp4/ss/1/t/1.5", media["clip"], tmp_path)))
    assert abs(duration(info) - 1.5) < 0.15
    info = ffprobe(written(av("avthumb/mp3/ss/2.5", media["clip"], tmp_path)))
    assert abs(duration(info) - 0.5) < 0.15


def test_avthumb_ss_past_the_end_is_a_400(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="ss"):
        av("avthumb/mp4/ss/5", media["clip"], tmp_path)


def test_avthumb_drops_streams(media: dict[str, Path], tmp_path: Path) -> None:
    assert kinds(ffprobe(written(av("avthumb/mp4/an/1", media["clip"], tmp_path)))) == ["video"]
    assert kinds(ffprobe(written(av("avthumb/mp4/vn/1", media["clip"], tmp_path)))) == ["audio"]
    with pytest.raises(BadRequest, match="no audio"):
        av("avthumb/mp3", media["small"], tmp_path)


def test_avthumb_audio_shape(media: dict[str, Path], tmp_path: Path) -> None:
    out = av("avthumb/mp3/ar/22050/ac/2/ab/96k", media["clip"], tmp_path)
    audio = stream(ffprobe(written(out)), "audio")
    assert (audio["sample_rate"], audio["channels"]) == ("22050", 2)


def test_avthumb_bitrates_are_capped_at_the_source(media: dict[str, Path], tmp_path: Path) -> None:
    source = ffprobe(media["low"])
    source_vb = int(stream(source, "video")["bit_rate"])
    source_ab = int(stream(source, "audio")["bit_rate"])
    assert source_vb < 250_000
    out = av("avthumb/mp4/vb/3m/ab/320k", media["low"], tmp_path)
    assert (out.meta["vb"], out.meta["ab"]) == (source_vb, source_ab)
    encoded = int(stream(ffprobe(written(out)), "video")["bit_rate"])
    assert encoded < 2 * source_vb  # uncapped, this source re-encodes at ~2 Mbit/s
    lower = av("avthumb/mp4/vb/100k/ab/32k", media["low"], tmp_path)
    assert (lower.meta["vb"], lower.meta["ab"]) == (100_000, 32_000)


def test_avthumb_stripmeta(media: dict[str, Path], tmp_path: Path) -> None:
    tagged = tmp_path / "tagged.mp4"
    ffmpeg("-i", str(media["clip"]), "-c", "copy", "-metadata", "title=secret", str(tagged))
    kept = ffprobe(written(av("avthumb/mp4", tagged, tmp_path / "a")))
    assert kept["format"]["tags"].get("title") == "secret"
    stripped = ffprobe(written(av("avthumb/mp4/stripmeta/1", tagged, tmp_path / "b")))
    assert "title" not in stripped["format"].get("tags", {})


def red_share(path: str, seconds: float, box: tuple[int, int, int, int], tmp: Path) -> float:
    """How red the pixels inside ``box`` are, in the frame at ``seconds``."""
    png = tmp / "probe.png"
    ffmpeg("-ss", str(seconds), "-i", path, "-frames:v", "1", str(png))
    red, green, blue = ImageStat.Stat(Image.open(png).convert("RGB").crop(box)).mean
    return red - (green + blue) / 2


def test_avthumb_image_watermark(media: dict[str, Path], tmp_path: Path) -> None:
    asked: list[str] = []

    def resolve(url: str) -> str:
        asked.append(url)
        return str(media["mark"])

    url = "https://example.com/mark.png"
    out = av(
        f"avthumb/mp4/wmImage/{b64(url)}/wmGravity/NorthEast/wmOffsetX/-5/wmOffsetY/4",
        media["clip"],
        tmp_path,
        resolve_url=resolve,
    )
    assert asked == [url]
    # 40x30 red, 10+5 px from the right and 10+4 px from the top of 320x240 (a cyan bar).
    where = (267, 16, 303, 42)
    assert red_share(written(out), 1.0, where, tmp_path) > 200
    plain = av("avthumb/mp4", media["clip"], tmp_path / "plain")
    assert red_share(written(plain), 1.0, where, tmp_path) < 0


def test_avthumb_image_watermark_needs_a_resolver(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="wmImage"):
        av(f"avthumb/mp4/wmImage/{b64('https://example.com/m.png')}", media["clip"], tmp_path)


def test_avthumb_image_watermark_must_be_an_image(media: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a picture at all" * 10)
    with pytest.raises(BadRequest, match="wmImage"):
        av(
            f"avthumb/mp4/wmImage/{b64('https://x/j.png')}",
            media["clip"],
            tmp_path,
            resolve_url=lambda url: str(junk),
        )


def test_avthumb_text_watermark(media: dict[str, Path], tmp_path: Path) -> None:
    # Quotes, colons, brackets and %{...} must be drawn literally, not parsed.
    text = b64("Dora: [100%] 'x' %{pts}")
    fop = (
        f"avthumb/mp4/wmText/{text}/wmFontColor/{b64('#FF0000')}/wmFontSize/600/wmGravityText/North"
    )
    out = av(fop, media["clip"], tmp_path)
    # 30 px red text across the top centre (testsrc2 is white/yellow there).
    marked = red_share(written(out), 1.0, (60, 8, 260, 40), tmp_path)
    plain = red_share(
        written(av("avthumb/mp4", media["clip"], tmp_path / "p")), 1.0, (60, 8, 260, 40), tmp_path
    )
    assert marked > plain + 20


# --- HLS ----------------------------------------------------------------------------


def playlist_entries(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_hls_playlist_and_segments(media: dict[str, Path], tmp_path: Path) -> None:
    pattern = b64("part_$(count).ts")
    out = av(f"avthumb/m3u8/segtime/2/pattern/{pattern}/noDomain/1", media["clip"], tmp_path)
    assert out.mime == "application/x-mpegURL"
    assert out.path == str(tmp_path / "playlist.m3u8") and out.meta["playlist"] == "playlist.m3u8"
    assert out.meta["files"] == ["playlist.m3u8", "part_000000.ts", "part_000001.ts"]
    assert sorted(os.listdir(tmp_path)) == sorted(out.meta["files"])
    assert playlist_entries(tmp_path / "playlist.m3u8") == ["part_000000.ts", "part_000001.ts"]
    assert "#EXT-X-ENDLIST" in (tmp_path / "playlist.m3u8").read_text()
    info = ffprobe(written(out))
    assert {s["codec_name"] for s in info["streams"]} == {"h264", "aac"}
    assert abs(duration(info) - 3.0) < 0.2
    for name in out.meta["segments"]:
        assert (tmp_path / name).read_bytes()[0] == 0x47  # plain MPEG-TS


def test_hls_domain_prefixes_segments(media: dict[str, Path], tmp_path: Path) -> None:
    fop = f"avthumb/m3u8/segtime/10/domain/{b64('cdn.example.com/v')}"
    out = av(fop, media["clip"], tmp_path)
    assert playlist_entries(tmp_path / "playlist.m3u8") == [
        "http://cdn.example.com/v/segment-000000.ts"
    ]
    assert out.meta["segments"] == ["segment-000000.ts"]


def decrypt(segment: bytes, key: bytes, iv: bytes) -> bytes:
    done = subprocess.run(
        ["openssl", "aes-128-cbc", "-d", "-K", key.hex(), "-iv", iv.hex()],
        input=segment,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return done.stdout


def test_hls_aes128_segments_decrypt_with_the_key(media: dict[str, Path], tmp_path: Path) -> None:
    key_url = "https://keys.example.com/k?id=1"
    fop = f"avthumb/m3u8/segtime/2/hlsKey/{b64(KEY)}/hlsKeyUrl/{b64(key_url)}"
    out = av(fop, media["clip"], tmp_path)
    assert out.meta["encrypted"] is True and "key" not in out.meta
    assert sorted(os.listdir(tmp_path)) == sorted(out.meta["files"])  # no key file among them
    text = (tmp_path / "playlist.m3u8").read_text()
    found = re.search(r'#EXT-X-KEY:METHOD=AES-128,URI="([^"]+)"(?:,IV=0x([0-9a-fA-F]{32}))?', text)
    assert found is not None and found.group(1) == key_url
    segments = out.meta["segments"]
    assert len(segments) == 2
    for sequence, name in enumerate(segments):
        data = (tmp_path / name).read_bytes()
        assert data[0] != 0x47 or data[188] != 0x47  # not plain TS
        iv = bytes.fromhex(found.group(2)) if found.group(2) else sequence.to_bytes(16, "big")
        plain = decrypt(data, KEY, iv)
        assert all(plain[i] == 0x47 for i in range(0, len(plain), 188))
        clear = tmp_path / f"clear-{sequence}.ts"
        clear.write_bytes(plain)
        assert {s["codec_name"] for s in ffprobe(clear)["streams"]} == {"h264", "aac"}


def test_hls_key_without_url_is_written_beside(media: dict[str, Path], tmp_path: Path) -> None:
    out = av(f"avthumb/m3u8/hlsKey/{b64(KEY)}", media["clip"], tmp_path)
    assert out.meta["key"] == "playlist.key" and "playlist.key" in out.meta["files"]
    assert (tmp_path / "playlist.key").read_bytes() == KEY
    assert 'URI="playlist.key"' in (tmp_path / "playlist.m3u8").read_text()
    # A player (ffmpeg's HLS demuxer) fetches the key and decodes every segment.
    info = ffprobe(written(out), "-allowed_extensions", "ALL")
    assert abs(duration(info) - 3.0) < 0.2


def test_hls_in_a_directory_with_a_percent_sign(media: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "100%d"
    out = av("avthumb/m3u8/segtime/2", media["clip"], out_dir)
    assert sorted(os.listdir(out_dir)) == sorted(out.meta["files"])
    assert len(out.meta["segments"]) == 2


# --- avconcat ---------------------------------------------------------------------


def test_avconcat_joins_different_inputs(media: dict[str, Path], tmp_path: Path) -> None:
    others = {"https://x/small.mp4": media["small"], "https://x/tone.mp3": media["tone"]}
    fop = "avconcat/2/format/mp4/" + "/".join(b64(url) for url in others)
    out = av(fop, media["clip"], tmp_path, resolve_url=lambda url: str(others[url]))
    assert out.meta["files"] == ["avconcat.mp4"] and out.meta["inputs"] == 3
    info = ffprobe(written(out))
    assert abs(duration(info) - 6.0) < 0.3  # 3 + 2 + 1 s
    video = stream(info, "video")
    assert (video["width"], video["height"], video["codec_name"]) == (320, 240, "h264")
    assert stream(info, "audio")["codec_name"] == "aac"


def test_avconcat_to_audio(media: dict[str, Path], tmp_path: Path) -> None:
    fop = f"avconcat/2/format/mp3/{b64('https://x/tone.mp3')}"
    out = av(fop, media["clip"], tmp_path, resolve_url=lambda url: str(media["tone"]))
    info = ffprobe(written(out))
    assert kinds(info) == ["audio"] and abs(duration(info) - 4.0) < 0.2


def test_avconcat_bad_input_is_a_400(media: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4000))
    fop = f"avconcat/2/format/mp4/{b64('https://x/junk')}"
    with pytest.raises(BadRequest, match="invalid media in url 1"):
        av(fop, media["clip"], tmp_path, resolve_url=lambda url: str(junk))


def test_an_output_past_the_size_limit_is_a_413(media: dict[str, Path], tmp_path: Path) -> None:
    tiny = Limits(max_upload_bytes=20_000)
    stage = parse_stage("avthumb/mp4", AV_SPECS)
    with pytest.raises(PayloadTooLarge, match="larger than 20000 bytes") as caught:
        run_av(stage, str(media["clip"]), str(tmp_path), tiny)
    assert caught.value.status == 413
    # ffmpeg stopped near the limit rather than writing the whole result.
    whole = av("avthumb/mp4", media["clip"], tmp_path / "whole")
    assert (tmp_path / "avthumb.mp4").stat().st_size < os.path.getsize(written(whole)) / 2


# --- corrupt inputs -------------------------------------------------------------------


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[: len(data) // 2],  # the index (moov) is at the end
    "random": lambda data: os.urandom(len(data)),
    "empty": lambda data: b"",
    "header only": lambda data: data[:64],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("fop", ["avinfo", "vframe/jpg/offset/1", "avthumb/mp4", "avthumb/m3u8"])
def test_corrupt_input_is_a_clear_400(
    media: dict[str, Path], tmp_path: Path, corruption: str, fop: str
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(CORRUPTIONS[corruption](media["clip"].read_bytes()))
    with pytest.raises(BadRequest, match=r"^invalid media: ") as caught:
        av(fop, broken, tmp_path / "out")
    assert str(tmp_path) not in caught.value.message  # no worker paths in messages


def test_truncated_streamable_mp4_still_yields_what_it_has(
    media: dict[str, Path], tmp_path: Path
) -> None:
    streamable = tmp_path / "fast.mp4"
    ffmpeg("-i", str(media["clip"]), "-c", "copy", "-movflags", "+faststart", str(streamable))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(streamable.read_bytes()[: streamable.stat().st_size // 2])
    try:
        out = av("avthumb/mp4", cut, tmp_path / "out")
    except DoraError as exc:  # a clean refusal is acceptable too, a crash is not
        assert exc.status == 400
    else:
        assert 0 < duration(ffprobe(written(out))) <= 3.1


def test_a_playlist_source_is_refused(media: dict[str, Path], tmp_path: Path) -> None:
    # An HLS playlist as a source could make ffmpeg read other local files.
    secret = tmp_path / "secret.ts"
    ffmpeg("-i", str(media["clip"]), "-c", "copy", str(secret))
    playlist = tmp_path / "evil.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\n{secret}\n#EXT-X-ENDLIST\n")
    # Plain ffprobe does follow it (the danger is real)...
    assert abs(duration(ffprobe(playlist)) - 3.0) < 0.2
    # ...the ops do not.
    for fop in ("avinfo", "avthumb/mp4"):
        with pytest.raises(BadRequest, match=r"invalid media: .*whitelist"):
            av(fop, playlist, tmp_path / "out")
