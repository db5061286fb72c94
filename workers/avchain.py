"""Audio/video calls on a worker: AV stages on files, mixed with image stages.

A call whose stages include an audio/video op (``avinfo``, ``vframe``,
``avthumb``, ``avconcat``) runs here instead of the fused image chain. Its
stages are cut into segments: every AV stage alone, adjacent image stages
together; the output of one segment is the input of the next:

- an AV stage reads a file: the call's ``src.path`` (confined to the data
  directory) or the previous output's path; bytes (a source sent inline, an
  image stage's output) are written to a file in the call's work directory
  first;
- image stages read bytes: the previous output's body, or its file read in
  (bounded by ``Limits.max_source_bytes``).

So ``vframe/jpg/offset/1|imageView2/2/w/100`` captures a frame with ffmpeg
and thumbnails it with Pillow, in one call.

Each call writes under its own work directory, ``<work root>/<name>``
(``<data dir>/tmp/work`` on a worker of ``dora serve``). An answer with a
``path`` leaves that directory for the caller, who stores the files and then
removes it (:func:`work_dir_of` tells which directory that is); a call that
fails or answers bytes removes it itself.

AV stages share the call's deadline and its cancel event (set when the
client cancels or goes away: ffmpeg is killed within a fraction of a
second); their progress is reported as one 0-100 scale over the AV stages.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dora.builtin_ops.av import AV_SPECS, run_av
from dora.builtin_ops.av.context import scaled
from dora.config import Limits
from dora.errors import BadRequest, Forbidden, NotFound, ProcessingFailed
from dora.fop import Stage
from dora.ops import Output
from dora.rpc import Source

ImageChain = Callable[[Sequence[Sequence[str]], bytes, Limits], Output]
ProgressSink = Callable[[float], None]


def is_av_call(stages: Sequence[Sequence[str]]) -> bool:
    """Whether a call's wire stages include an audio/video op."""
    return any(stage and stage[0] in AV_SPECS for stage in stages)


def work_dir_of(path: str | Path, work_root: Path) -> Path | None:
    """The call work directory under ``work_root`` holding ``path``, if any."""
    try:
        relative = Path(path).resolve().relative_to(work_root.resolve())
    except ValueError:
        return None
    return work_root.resolve() / relative.parts[0] if relative.parts else None


@dataclasses.dataclass(frozen=True, slots=True)
class AvCall:
    """What one AV call runs under."""

    work_dir: Path
    limits: Limits
    deadline: float  # unix time
    cancel: threading.Event
    progress: ProgressSink | None = None
    source_root: Path | None = None  # path sources must lie inside


def segments(wire: Sequence[Sequence[str]]) -> list[tuple[bool, list[list[str]]]]:
    """``(is_av, stages)`` runs: each AV stage alone, adjacent other stages together."""
    out: list[tuple[bool, list[list[str]]]] = []
    for op, argtext in wire:
        if op in AV_SPECS:
            out.append((True, [[op, argtext]]))
        elif out and not out[-1][0]:
            out[-1][1].append([op, argtext])
        else:
            out.append((False, [[op, argtext]]))
    return out


def confined_path(path: str, root: Path | None) -> str:
    """``path`` resolved, once it is a file inside ``root``."""
    resolved = Path(path).resolve()
    if root is not None and not resolved.is_relative_to(root.resolve()):
        raise Forbidden(f"source path {path!r} is outside the worker's data directory")
    if not resolved.exists():
        raise NotFound(f"source path {path!r} does not exist")
    if not resolved.is_file():
        raise BadRequest(f"source path {path!r} is not a file")
    return str(resolved)


def read_output_file(path: str, max_bytes: int) -> bytes:
    """An AV output file read for the image stages after it, bounded."""
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadRequest(
            f"the audio/video output is larger than {max_bytes} bytes: "
            "too large for the image ops after it"
        )
    return data


def run_av_call(
    wire: Sequence[Sequence[str]], src: Source, call: AvCall, image: ImageChain
) -> Output:
    """Run a call with AV stages (in a worker thread); see the module doc.

    The work directory is removed unless the answer is a file inside it.
    """
    keep = False
    try:
        output = _run(wire, src, call, image)
        keep = output.path is not None
        return output
    finally:
        if not keep:
            shutil.rmtree(call.work_dir, ignore_errors=True)


def _run(wire: Sequence[Sequence[str]], src: Source, call: AvCall, image: ImageChain) -> Output:
    parts = segments(wire)
    av_total = sum(1 for is_av, _ in parts if is_av)
    current: bytes | str
    if "path" in src:
        current = confined_path(src["path"], call.source_root)
    elif "bytes" in src:
        current = src["bytes"]
    else:
        raise BadRequest("url sources are not supported by builtin workers")
    call.work_dir.mkdir(parents=True, exist_ok=True)
    output: Output | None = None
    av_done = 0
    for index, (is_av, stages) in enumerate(parts):
        if call.cancel.is_set():
            raise ProcessingFailed("cancelled")
        if is_av:
            op, argtext = stages[0]
            path = current if isinstance(current, str) else _spill(current, call, index)
            remaining = call.deadline - time.time()
            if remaining <= 0:
                raise ProcessingFailed("deadline exceeded")
            text = f"{op}/{argtext}" if argtext else op
            output = run_av(
                Stage(op, {}, (), text),  # run_av re-validates the text
                path,
                str(call.work_dir / f"stage-{index}"),
                call.limits,
                progress=scaled(
                    call.progress, 100.0 * av_done / av_total, 100.0 * (av_done + 1) / av_total
                ),
                cancel=call.cancel,
                timeout=remaining,
            )
            av_done += 1
        else:
            data = (
                current
                if isinstance(current, bytes)
                else read_output_file(current, call.limits.max_source_bytes)
            )
            output = image(stages, data, call.limits)
        current = output.body if output.body is not None else str(output.path)
    assert output is not None  # an AV call has at least its AV stage
    return output


def _spill(data: bytes, call: AvCall, index: int) -> str:
    """Bytes an AV stage reads, written to a file of the call's work directory."""
    path = call.work_dir / f"input-{index}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return str(path)
