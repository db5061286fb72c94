"""End to end through ``dora serve``: the official qiniu SDK submits a pfop,
the dispatcher transcodes through real workers and ffmpeg, the notify
receiver on 127.0.0.1 gets the status JSON, and the SDK's status query sees
the job done. Also: the full image catalogue through processing URLs."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import qiniu
from images import make_photo_jpeg
from PIL import Image
from serving import Served, dora_serve

from dora.b64 import encode_entry, urlsafe_b64encode
from dora.scheduler.jobtesting import NotifyReceiver, ffprobe, make_clip

ENV = {"DORA_SSRF_ALLOW": "127.0.0.1/32", "DORA_JOB_LEASE_SECONDS": "4"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with dora_serve(tmp_path_factory.mktemp("e2e-jobs") / "data", workers=2, env=ENV) as srv:
        before = qiniu.config.get_default("default_api_host")
        qiniu.config.set_default(default_api_host=srv.url)
        try:
            yield srv
        finally:
            qiniu.config.set_default(default_api_host=before)


def _upload(srv: Served, bucket: str, key: str, data: bytes) -> None:
    auth = qiniu.Auth(srv.access_key, srv.secret_key)
    region = qiniu.Region(up_host=srv.url)
    _, info = qiniu.put_data(auth.upload_token(bucket, key), key, data, regions=[region])
    assert info.status_code == 200, info


def test_sdk_pfop_transcodes_notifies_and_reports_done(served: Served, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=10.0)
    _upload(served, "media", "clip.mp4", clip.read_bytes())
    auth = qiniu.Auth(served.access_key, served.secret_key)

    async def run() -> tuple[str, dict[str, object]]:
        async with NotifyReceiver() as receiver:
            pfop = qiniu.PersistentFop(auth, "media", notify_url=receiver.url)
            fops = [
                f"avthumb/mp4/s/160x120|saveas/{encode_entry('out', 'small.mp4')}",
                f"avthumb/m3u8/segtime/4|saveas/{encode_entry('out', 'hls/index.m3u8')}",
            ]
            ret, info = await asyncio.to_thread(pfop.execute, "clip.mp4", fops, 1)
            assert info.status_code == 200, info
            persistent_id = ret["persistentId"]
            [notice] = await receiver.wait_for(1, within=120)
            return persistent_id, notice.body

    persistent_id, body = asyncio.run(run())
    assert body["id"] == persistent_id and body["code"] == 0
    items = body["items"]
    assert isinstance(items, list) and [i["code"] for i in items] == [0, 0]
    assert [i["key"] for i in items] == ["small.mp4", "hls/index.m3u8"]
    ret, info = qiniu.PersistentFop(auth, "media").get_status(persistent_id)
    assert info.status_code == 200 and ret["code"] == 0 and ret["inputKey"] == "clip.mp4"
    buckets = served.data_dir / "buckets"
    small = ffprobe(buckets / "out" / "small.mp4")
    video = next(s for s in small["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 160, 120)
    assert abs(float(small["format"]["duration"]) - 10.0) < 0.3
    hls = ffprobe(buckets / "out" / "hls" / "index.m3u8")
    assert abs(float(hls["format"]["duration"]) - 10.0) < 0.5


def _get(srv: Served, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(srv.url + path, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers["Content-Type"]


def test_the_image_catalogue_through_processing_urls(served: Served) -> None:
    photo = Image.open(io.BytesIO(make_photo_jpeg(800, 600, seed=11)))
    exif = Image.Exif()
    exif[0x010F] = "DoraCam"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90, exif=exif)
    _upload(served, "pics", "cam.jpg", buf.getvalue())

    status, body, ctype = _get(served, "/pics/cam.jpg?imageMogr2/auto-orient/thumbnail/!50p")
    assert status == 200 and ctype == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (300, 400)  # oriented, then halved

    text = urlsafe_b64encode("水印 Dora")
    status, body, _ = _get(
        served, f"/pics/cam.jpg?imageView2/2/w/400|watermark/2/text/{text}/fontsize/600"
    )
    assert status == 200 and Image.open(io.BytesIO(body)).size == (400, 533)  # 600x800 shown

    status, body, ctype = _get(served, "/pics/cam.jpg?roundPic/radius/40")
    assert status == 200 and ctype == "image/png"
    corner = Image.open(io.BytesIO(body)).convert("RGBA").getpixel((0, 0))
    assert isinstance(corner, tuple) and corner[3] == 0

    status, body, _ = _get(served, "/pics/cam.jpg?exif")
    assert status == 200 and json.loads(body)["Make"]["val"] == "DoraCam"
    status, body, _ = _get(served, "/pics/cam.jpg?imageAve")
    assert status == 200 and json.loads(body)["RGB"].startswith("0x")

    frames = [Image.new("RGB", (60, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    _upload(served, "pics", "anim.gif", gif.getvalue())
    status, body, ctype = _get(served, "/pics/anim.gif?imageView2/2/w/30/format/webp")
    assert status == 200 and ctype == "image/webp"
    out = Image.open(io.BytesIO(body))
    assert out.size == (30, 20) and getattr(out, "n_frames", 1) == 3

    status, body, _ = _get(served, "/pics/cam.jpg?imageMogr2/crop/12xyz")
    assert status == 400 and b"imageMogr2" in body
