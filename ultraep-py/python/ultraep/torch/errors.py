"""The errors of the torch layer: the package's own hierarchy under :class:`ultraep.Error`, and the
wrapper that turns a failed collective of ``torch.distributed`` into :class:`PeerLostError`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .._ultraep import Error, PeerLostError, RefusedError


class UnsupportedBlockError(Error):
    """The block is not one the layer can run exactly: its family, and what is unsupported, are
    named. Raised at construction, before any weight is sharded."""


@contextlib.contextmanager
def group_operation(rank: int, what: str) -> Iterator[None]:
    """Raises any failure of the communication inside as :class:`PeerLostError`, naming the rank
    and what it was doing. ``torch.distributed`` reports a lost peer or a timeout as a
    ``RuntimeError`` (or its subclass ``DistBackendError``) whose text depends on the backend;
    ultraep's own errors pass through unchanged."""
    try:
        yield
    except Error:
        raise
    except RuntimeError as error:
        if not _is_group_failure(error):
            raise
        raise PeerLostError(
            f"ultraep: rank {rank} of the expert-parallel group failed while {what}: {error}"
        ) from error


# What the backends' messages say when a peer is gone or a collective timed out (gloo: "Connection
# closed by peer", "Timed out waiting"; NCCL: "remote process exited", watchdog timeouts).
_FAILURE_WORDS = ("closed", "timed out", "timeout", "connection", "peer", "abort", "exited")


def _is_group_failure(error: RuntimeError) -> bool:
    """Whether ``error`` says the group failed, rather than that the call was wrong (a CPU tensor
    given to NCCL, say), which must keep its own message."""
    import torch.distributed as dist

    if isinstance(error, (dist.DistBackendError, dist.DistNetworkError, dist.DistStoreError)):
        return True
    message = str(error).lower()
    return any(word in message for word in _FAILURE_WORDS)


__all__ = ["Error", "PeerLostError", "RefusedError", "UnsupportedBlockError", "group_operation"]
