"""The portable job service ``inferbridge-local`` runs: Beam's local job service (its
FnApiRunner), with what InferBridge changes in how that runner moves data between stages.

These replace attributes of Beam's runner modules in the process that runs the service, while
``job_service()`` runs; a Beam upgrade must recheck them against the runner's code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from typing import Any, Iterator

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import execution, fn_runner, worker_handlers
from apache_beam.runners.worker import data_plane

_LOGGER = logging.getLogger(__name__)


class _LoopbackJobServicer(local_job_service.LocalJobServicer):
    """Beam's local job service on 127.0.0.1 only. On "localhost" with a free port, gRPC binds
    the port on one address family and only tries the same port on the other; when that one is
    taken there, clients that resolve localhost to it reach another socket and wait forever."""

    def get_service_address(self) -> str:
        return "127.0.0.1"


# What one stage output holds in the job service's memory; the rest goes to a spill file.
_IN_MEMORY_BYTES = 16 << 20


class _Spilled:
    """One message of a stage's output, kept in a spill file: where it is there."""

    __slots__ = ("file", "offset", "size")

    def __init__(self, file: Any, offset: int, size: int) -> None:
        self.file, self.offset, self.size = file, offset, size

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        data = os.pread(self.file.fileno(), self.size, self.offset)
        if len(data) != self.size:
            raise OSError(f"a spill file of the job service gave {len(data)} of {self.size} bytes")
        return data


class _SpillingBuffer(execution.ListBuffer):
    """Beam's ``ListBuffer`` (what the runner holds of a PCollection between the stage that
    writes it and the stages that read it) keeping up to ``_IN_MEMORY_BYTES`` in memory and the
    rest in a temporary file, read back one message at a time as the input is sent.

    Beam's runner runs each stage to its end, so it held every PCollection that crosses stages
    whole (all of a Java pipeline's rows before Python saw one: 5.8 GB at 10M digits rows). The
    file is unlinked as it is made: it is gone with the buffer, or with the process however it
    ends."""

    def __init__(self, coder_impl: Any) -> None:
        super().__init__(coder_impl)
        self._held = 0
        self._file: Any = None
        self._end = 0

    def append(self, element: bytes) -> None:
        if self._held + len(element) <= _IN_MEMORY_BYTES:
            self._held += len(element)
            super().append(element)
        else:
            super().append(self._spill(element))

    def _spill(self, element: bytes) -> _Spilled:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="inferbridge-stage-", buffering=0)
        spilled = _Spilled(self._file, self._end, len(element))
        view = memoryview(element)
        while view:
            written = os.pwrite(self._file.fileno(), view, self._end)
            view, self._end = view[written:], self._end + written
        return spilled

    def copy(self) -> "_SpillingBuffer":
        new = _SpillingBuffer(self._coder_impl)
        new._inputs, new._held = list(self._inputs), self._held
        return new

    def extend(self, extra: Any) -> None:
        super().extend(extra)
        self._held += extra._held

    def partition(self, n: int) -> list[list[Any]]:
        if 0 < len(self._inputs) < n:  # Beam re-encodes these element by element
            self._inputs = list(self)
        return super().partition(n)

    def messages(self) -> list[Any]:
        """The messages as held: bytes, or ``_Spilled`` to read back one at a time."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[bytes]:
        return map(bytes, super().__iter__())

    def clear(self) -> None:
        super().clear()
        self._held, self._file, self._end = 0, None, 0


_BEAMS_SEND_INPUT = fn_runner.BundleManager._send_input_to_worker
# A stream that could pass protobuf's 2 GiB in one message.
_LARGEST_STREAM = (2 << 30) - (64 << 20)
# Messages of the size Beam's data plane flushes at (10 MB).
_MESSAGE_BYTES = data_plane._DEFAULT_SIZE_FLUSH_THRESHOLD
# How far the sender runs ahead of the worker: what it has queued on the data channel that gRPC
# has not taken yet (Beam's channel queues take up to 2 x 100 MB, which reading back a spilled
# input always filled).
_SEND_AHEAD_BYTES = 20 << 20


def _send_input_in_messages(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """``BundleManager._send_input_to_worker``, sending a stage's input to a worker over gRPC in
    messages of about 10 MB, from a thread of its own, while the bundle runs.

    Beam's writes the whole input, then sends it as one message, before it asks the worker to
    run the bundle: the job service and the worker each held a stage's whole input at once (and
    protobuf bounds a message at 2 GiB). In smaller messages the input could not be sent ahead:
    the worker takes a few messages of a bundle it does not run yet, then holds off the sender.

    Each byte stream ends where an element does (a message some worker sent, or what the runner
    encoded element by element: a grouped input is one stream, and so still one message), as an
    SDK harness reading each message on its own expects. The streams are made here, in the
    runner's thread, so that what fails in making them (a grouped input's triggers) fails the
    job as before. Beam's way is kept for a worker embedded in the runner's process (it reads its
    input from a list, once, when the bundle starts), for a stream too large for one message
    (Beam's error names it), and for a data channel without the queues this paces itself by."""
    streams = byte_streams.messages() if isinstance(byte_streams, _SpillingBuffer) else list(byte_streams or ())
    channel = self._worker_handler.data_conn
    if (
        isinstance(channel, data_plane.InMemoryDataChannel)
        or not all(hasattr(channel, a) for a in ("_pending_send", "_to_send", "_closed"))
        or any(len(stream) > _LARGEST_STREAM for stream in streams)
    ):
        _BEAMS_SEND_INPUT(self, process_bundle_id, read_transform_id, map(bytes, streams))
        return
    threading.Thread(
        target=_send, args=(channel, process_bundle_id, read_transform_id, streams),
        name=f"input-{process_bundle_id}", daemon=True,
    ).start()


def _send(channel: Any, instruction_id: str, transform_id: str, streams: list[Any]) -> None:
    """Queues ``streams`` on ``channel``'s send queue, in messages of about 10 MB, then the end
    of the input, never more than ``_SEND_AHEAD_BYTES`` ahead of gRPC and never blocking on the
    channel's queues: a worker that ends mid-input (its job failed, or its process died) leaves
    them undrained, and a sender blocked there would hold the runner's closing of the channel,
    and so the job, forever. It stops when the channel closes. If reading back the input fails,
    it closes the channel, which fails the bundle and the job ("Channel closed prematurely";
    the cause is logged here) instead of leaving the worker waiting for the rest."""
    def put(element: Any) -> bool:
        size = len(element.data)
        while not channel._closed:
            queued = channel._pending_send.byte_size() + channel._to_send.byte_size()
            if not queued or queued + size <= _SEND_AHEAD_BYTES:
                channel._pending_send.put((element, size), size)
                return True
            time.sleep(0.002)
        return False

    try:
        for data in _messages(streams):
            if not put(beam_fn_api_pb2.Elements.Data(instruction_id=instruction_id, transform_id=transform_id, data=data)):
                return
        put(beam_fn_api_pb2.Elements.Data(instruction_id=instruction_id, transform_id=transform_id, is_last=True))
    except Exception:  # noqa: BLE001 - logged, and the job fails
        _LOGGER.exception("sending the input of %s to %s failed; closing its data channel", instruction_id, transform_id)
        channel.close()


def _messages(streams: list[Any]) -> Iterator[bytes]:
    """The streams (bytes, or spilled messages read back one at a time) joined into messages of
    about ``_MESSAGE_BYTES``; each ends where a stream does."""
    batch: list[bytes] = []
    size = 0
    for stream in streams:
        piece = bytes(stream)
        if batch and size + len(piece) > _MESSAGE_BYTES:
            yield b"".join(batch)
            batch, size = [], 0
        if piece:
            batch.append(piece)
            size += len(piece)
    if batch:
        yield b"".join(batch)


@contextlib.contextmanager
def job_service(port: int = 0) -> Iterator[str]:
    """Runs Beam's local (portable, batch) job service in this process; yields its address."""
    # Beam's runner (FnApiRunner) sends a stage's input to a worker through a stream that a thread
    # flushes every DATA_BUFFER_TIME_LIMIT_MS (1000): the flush sends what it holds, then clears
    # the buffer without holding off the runner's writes, so what the runner wrote meanwhile is
    # lost unsent (data_plane.TimeBasedBufferingClosableOutputStream): a 1M-row Java pipeline lost
    # whole messages of its blocks, with no error. At 0 no thread flushes; a stage's input is
    # sent by _send_input_in_messages.
    # The changes hold while the service runs (other runners in this process, e.g. a test's
    # DirectRunner, get Beam's own afterwards).
    changes = [
        (worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 0),
        (fn_runner.BundleManager, "_send_input_to_worker", _send_input_in_messages),
        (execution, "ListBuffer", _SpillingBuffer),
        (fn_runner, "ListBuffer", _SpillingBuffer),
    ]
    beams = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
    for owner, name, value in changes:
        setattr(owner, name, value)
    try:
        servicer = _LoopbackJobServicer()
        bound = servicer.start_grpc_server(port)
        try:
            yield f"127.0.0.1:{bound}"
        finally:
            servicer.stop()
    finally:
        for owner, name, value in beams:
            setattr(owner, name, value)
