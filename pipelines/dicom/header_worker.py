"""Header reading in worker processes: ``HeaderWorker`` runs ``headers.read_header`` in a fresh interpreter,
with outcomes carried as JSON both ways (never pickle)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

from pipelines.dicom.geometry import FrameGeometry
from pipelines.dicom.headers import InstanceHeader, Outcome, Skipped, read_header
from pipelines.dicom.limits import DEFAULT_LIMITS, Limits
from pipelines.dicom.reasons import Rejected


def encode_outcome(outcome: Outcome) -> dict:
    """An outcome as JSON-ready data (the worker protocol carries JSON, never pickle); ``asdict`` without its
    deep copy (which took a fifth of a worker's time)."""
    data = {"type": type(outcome).__name__, **vars(outcome)}
    if isinstance(outcome, InstanceHeader):
        data["frames"] = [vars(frame) for frame in outcome.frames]
        data["geometry_error"] = vars(outcome.geometry_error) if outcome.geometry_error is not None else None
    return data


def decode_outcome(data: dict) -> Outcome:
    """The inverse of ``encode_outcome``: rebuild the dataclasses, lists back to tuples."""
    kind = data.pop("type")
    if kind == "Rejected":
        return Rejected(**data)
    if kind == "Skipped":
        return Skipped(**data)
    if kind != "InstanceHeader":
        raise ValueError(f"unknown outcome type {kind!r} from a header worker")
    frames = tuple(FrameGeometry(position=tuple(f["position"]), orientation=tuple(f["orientation"]),
                                 pixel_spacing=tuple(f["pixel_spacing"]), shape=tuple(f["shape"]),
                                 frame_of_reference=f["frame_of_reference"]) for f in data.pop("frames"))
    error = data.pop("geometry_error")
    spacing = data.pop("pixel_spacing")
    image_type = tuple(data.pop("image_type"))
    return InstanceHeader(**data, frames=frames, geometry_error=Rejected(**error) if error else None,
                          pixel_spacing=tuple(spacing) if spacing is not None else None, image_type=image_type)


class HeaderWorker:
    """A worker interpreter that runs ``read_header`` for this process, one list of paths at a time.

    It imports only the header modules: nothing is forked from the caller (which may hold torch threads), and unlike
    multiprocessing's spawn and forkserver workers (Python 3.11) it does not re-import the caller's ``__main__``,
    which in the ``medvit`` CLI means torch: seconds per worker. Paths go in and outcomes come back as one
    line of JSON each way over its stdin and stdout (nothing is unpickled).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        boot = (f"import json, sys; sys.path[:] = json.loads(sys.stdin.readline()); "
                f"from {__name__} import _serve; _serve()")
        command = [sys.executable, "-I", "-c", boot]  # isolated: no module in the working folder shadows json
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._send(list(sys.path))
        self._send(vars(limits))

    def _send(self, data: list | dict) -> None:
        self._process.stdin.write(json.dumps(data) + "\n")
        self._process.stdin.flush()

    def read(self, paths: list[str]) -> list[Outcome]:
        """``read_header`` of each path, in the worker; OSError, EOFError or ValueError when it has died."""
        self._send(paths)
        line = self._process.stdout.readline()
        if not line:
            raise EOFError("header worker ended")
        return [decode_outcome(item) for item in json.loads(line)]

    def close(self) -> None:
        """End the worker by closing its pipes; kill it when it does not end in time."""
        for stream in (self._process.stdin, self._process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _serve() -> None:
    """Worker loop: a JSON list of paths per line in, a JSON list of outcomes per line out, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it stops the workers
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the result stream
    limits = Limits(**json.loads(sys.stdin.readline()))  # JSON is ASCII: any path travels \u-escaped
    for line in sys.stdin:
        outcomes = [encode_outcome(read_header(path, limits)) for path in json.loads(line)]
        results.write(json.dumps(outcomes) + "\n")
        results.flush()
