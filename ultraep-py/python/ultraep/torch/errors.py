"""The one error the torch layer adds: the expert-parallel group failed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class PeerLostError(RuntimeError):
    """An operation of the expert-parallel group failed: a peer process died or left, or a
    collective ran past the group's timeout. The layer's state is not usable afterwards; the
    group has to be rebuilt, as after any failed collective of ``torch.distributed``."""


@contextlib.contextmanager
def group_operation(rank: int, what: str) -> Iterator[None]:
    """Raises any failure of the communication inside as :class:`PeerLostError`, naming the rank
    and what it was doing. ``torch.distributed`` reports a lost peer as a ``RuntimeError`` (or its
    subclass ``DistBackendError``) whose text depends on the backend."""
    try:
        yield
    except PeerLostError:
        raise
    except RuntimeError as error:
        raise PeerLostError(
            f"ultraep: rank {rank} of the expert-parallel group failed while {what}: {error}"
        ) from error
