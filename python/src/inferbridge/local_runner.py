"""The portable job service ``inferbridge-local`` runs: Beam's local job service (its
FnApiRunner), with what InferBridge changes in how that runner moves data between stages.

These replace attributes of Beam's runner modules in the process that runs the service (as
``job_service()`` is entered); a Beam upgrade must recheck them against the runner's code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from typing import Any, Iterator

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
# The most each of the job service's data plane queues holds (Beam's default: 100 MB).
_QUEUE_BYTES = 20 << 20


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
# A stream that, with what a flush leaves behind (under 10 MB), could pass protobuf's 2 GiB.
_LARGEST_STREAM = (2 << 30) - (64 << 20)


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
    input from a list, once, when the bundle starts) and for a stream too large for one message
    (Beam's error names it)."""
    streams = byte_streams.messages() if isinstance(byte_streams, _SpillingBuffer) else list(byte_streams or ())
    if isinstance(self._worker_handler.data_conn, data_plane.InMemoryDataChannel) or any(
        len(stream) > _LARGEST_STREAM for stream in streams
    ):
        _BEAMS_SEND_INPUT(self, process_bundle_id, read_transform_id, map(bytes, streams))
        return
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)

    def send() -> None:
        try:
            for stream in streams:
                data_out.write(bytes(stream))  # read back here if it was spilled
                data_out.maybe_flush()
            data_out.close()
        except Exception:  # noqa: BLE001 - a broken connection: the bundle fails on the worker's side
            _LOGGER.exception("sending the input of %s to %s failed", process_bundle_id, read_transform_id)

    threading.Thread(target=send, name=f"input-{process_bundle_id}", daemon=True).start()


@contextlib.contextmanager
def job_service(port: int = 0) -> Iterator[str]:
    """Runs Beam's local (portable, batch) job service in this process; yields its address."""
    # Beam's runner (FnApiRunner) sends a stage's input to a worker through a stream that a thread
    # flushes every DATA_BUFFER_TIME_LIMIT_MS (1000): the flush sends what it holds, then clears
    # the buffer without holding off the runner's writes, so what the runner wrote meanwhile is
    # lost unsent (data_plane.TimeBasedBufferingClosableOutputStream): a 1M-row Java pipeline lost
    # whole messages of its blocks, with no error. At 0 no thread flushes; a stage's input is
    # sent by _send_input_in_messages.
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    fn_runner.BundleManager._send_input_to_worker = _send_input_in_messages
    execution.ListBuffer = fn_runner.ListBuffer = _SpillingBuffer
    # The data plane's queues (to send to a worker, and per bundle, what a worker sent) hold up to
    # 20 MB each, not 100 MB: reading back a spilled input outruns any worker, so the queues to
    # send were always full (220 MB less at 10M rows, at the same speed).
    data_plane._DEFAULT_SEND_QUEUE_MAX_BYTES = _QUEUE_BYTES
    servicer = _LoopbackJobServicer()
    bound = servicer.start_grpc_server(port)
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        servicer.stop()
