"""Reused host buffers and side copy streams: the CUDA host staging of ``Segmenter``.

Tiles go up and finished rows come down through page-locked host memory on their own
streams, so copies overlap the network and the host never waits for the GPU between batches.
Off CUDA the same bookkeeping runs with ordinary memory and plain copies.
"""

from __future__ import annotations

import math
import threading


class _HostBuffer:
    """Flat host memory (page-locked on CUDA) and the event of the last copy that used it."""

    def __init__(self, data) -> None:
        self.data = data
        self.event = None

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def view(self, shape, dtype):
        """The first bytes of the buffer as a tensor of ``shape`` and ``dtype``."""
        import torch

        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        return self.data[:n].view(dtype).view(shape)

    def sync(self) -> None:
        """Wait for the last copy into or out of this buffer."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None


class HostStaging:
    """Reused host buffers (page-locked on CUDA) and side streams for the copies through them.

    Upload: the upload stream copies a filled host buffer to a new device tensor and records
    an event; the compute stream waits for that event (not the host), and the buffer is written
    again only after it (``_HostBuffer.sync``). Download: the download stream waits for the
    compute stream, copies a device tensor into a host buffer and records an event; the host
    reads the buffer once that event has passed. Two copy streams, so an upload never queues
    behind a download that waits for the network. Device tensors that cross streams are
    registered with ``record_stream``, so the caching allocator never hands their memory out
    while the other stream still uses it.

    Off CUDA the same bookkeeping runs with ordinary memory and plain copies (the tests check
    the logic on a CPU that way).
    """

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.up = torch.cuda.Stream(self.device) if self.cuda else None
        self.down = torch.cuda.Stream(self.device) if self.cuda else None
        self._free: list[_HostBuffer] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> _HostBuffer:
        """A host buffer of at least ``nbytes``: a free one if any is big enough, else new."""
        import torch

        with self._lock:
            fits = [b for b in self._free if b.nbytes >= nbytes]
            if fits:
                buf = min(fits, key=lambda b: b.nbytes)
                self._free.remove(buf)
                return buf
        return _HostBuffer(torch.empty(int(nbytes), dtype=torch.uint8, pin_memory=self.cuda))

    def give(self, buf: _HostBuffer) -> None:
        """Return a buffer for reuse (after its last copy has finished); keeps the 8 largest."""
        buf.sync()
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: b.nbytes, reverse=True)
            del self._free[8:]

    def upload(self, buf: _HostBuffer, host):
        """Queue the copy of ``host`` (a view of ``buf``) to the device; the returned tensor
        may be used on the current (compute) stream at once."""
        import torch

        if not self.cuda:
            return host.clone()
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.up):
            dev = torch.empty(host.shape, dtype=host.dtype, device=self.device)
            dev.copy_(host, non_blocking=True)
        buf.event = torch.cuda.Event()
        buf.event.record(self.up)
        compute.wait_event(buf.event)
        dev.record_stream(compute)
        return dev

    def download(self, buf: _HostBuffer, tensor):
        """Queue the copy of a device tensor (computed on the current stream) into ``buf``;
        returns the host view, valid once ``ready(buf)`` (``buf.sync()`` waits for it)."""
        import torch

        host = buf.view(tuple(tensor.shape), tensor.dtype)
        if not self.cuda:
            host.copy_(tensor)
            return host
        self.down.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.down):
            host.copy_(tensor, non_blocking=True)
        buf.event = torch.cuda.Event()
        buf.event.record(self.down)
        tensor.record_stream(self.down)
        return host

    def mark(self):
        """An event at the current end of the compute stream (None off CUDA)."""
        import torch

        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def ready(self, buf: _HostBuffer) -> bool:
        """True when the last copy through ``buf`` has finished (never waits)."""
        return buf.event is None or buf.event.query()
