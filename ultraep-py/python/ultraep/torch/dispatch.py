"""Where every token goes under a plan, derived on the host from the plan alone (small tables that
every rank already holds), and applied on the device with torch ops (tensors that grow with the
tokens never leave it).

The reroute gives every token-expert pair the instance the engine's ``reroute`` gives it, bit for
bit: within an expert, pairs in token order take the instances of the rank's split row in order,
each as many as its share. On the device that is a stable sort of the pairs by expert, a
``searchsorted`` of each pair's position in the cumulative shares, and a scatter back. The pairs
then leave in the order of their destination (rank, then instance there), so every receiver
knows from the plan how many rows each source sends each of its instances, and in what order:
the split sizes of the all-to-all are derived, never exchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

SOURCE, EXPERT, INSTANCE, TOKENS = range(4)


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """One rank's routing under one plan: host tables and their device copies."""

    sends: list[int]
    """Rows this rank sends to each rank."""
    receives: list[int]
    """Rows this rank receives from each rank."""
    segments: list[int]
    """Rows each local instance computes (masters by local index, then slots), after grouping."""
    bounds: torch.Tensor
    """Device: the cumulative shares of this rank's split row."""
    entry_instance: torch.Tensor
    """Device: the instance of each entry of the split row."""
    instance_key: torch.Tensor
    """Device: every instance's place in the send order (its rank, then its index there)."""
    gather: torch.Tensor
    """Device: for every received row in grouped order (by local instance, then source), its
    place in the received order."""
    local_index: torch.Tensor
    """Device: the local instance of every row in grouped order."""

    @property
    def tokens(self) -> int:
        """Token-expert pairs this rank computes."""
        return sum(self.receives)


def counts_by_source(
    columns: np.ndarray, local_of: np.ndarray, ranks: int, width: int
) -> np.ndarray:
    """``[ranks, width]``: rows each source sends each local instance, from the rank's split
    columns (what its instances receive, every rank's plan alike)."""
    counts = np.zeros((ranks, width), dtype=np.int64)
    np.add.at(counts, (columns[:, SOURCE], local_of[columns[:, INSTANCE]]), columns[:, TOKENS])
    return counts


def build(
    instances: np.ndarray,
    row: np.ndarray,
    by_source: np.ndarray,
    master_row: np.ndarray,
    masters: int,
    ranks: int,
    device: torch.device,
) -> Dispatch:
    """The dispatch of one rank: ``instances`` rows ``[expert, rank, slot, quota]``, its split
    ``row`` (``[source, expert, instance, tokens]``, by expert then instance), ``by_source``
    (:func:`counts_by_source`), ``master_row[expert]`` (each expert's index on its home rank)."""
    width = by_source.shape[1]
    instance_rank = instances[:, 1]
    local_of = local_indices(instances, master_row, masters)
    sends = np.bincount(
        instance_rank[row[:, INSTANCE]], weights=row[:, TOKENS], minlength=ranks
    ).astype(np.int64)
    receives = by_source.sum(axis=1)
    segments = by_source.sum(axis=0)
    # Received rows come source after source, each source's by local instance; grouped, they go
    # by local instance, then source.
    received_start = np.concatenate(([0], np.cumsum(by_source.reshape(-1))[:-1])).reshape(
        ranks, width
    )
    order = by_source.T.reshape(-1)
    starts = received_start.T.reshape(-1)
    grouped_start = np.concatenate(([0], np.cumsum(order)[:-1]))
    total = int(order.sum())

    tables = upload(
        [
            order,
            starts,
            grouped_start,
            np.repeat(np.arange(width), ranks),
            np.cumsum(row[:, TOKENS]),
            row[:, INSTANCE],
            instance_rank * width + local_of,
        ],
        device,
    )
    count_tensor = tables[0]
    gather = torch.repeat_interleave(tables[1], count_tensor, output_size=total) + (
        torch.arange(total, device=device)
        - torch.repeat_interleave(tables[2], count_tensor, output_size=total)
    )
    local_index = torch.repeat_interleave(tables[3], count_tensor, output_size=total)
    return Dispatch(
        sends=sends.tolist(),
        receives=receives.tolist(),
        segments=segments.tolist(),
        bounds=tables[4],
        entry_instance=tables[5],
        instance_key=tables[6],
        gather=gather,
        local_index=local_index,
    )


def upload(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The arrays as int64 tensors on ``device``, in one copy: from pinned host memory without
    waiting on a GPU (PyTorch's caching host allocator keeps a pinned block until its copy is
    done), so that no upload synchronises the host with the device."""
    sizes = [len(array) for array in arrays]
    host = torch.from_numpy(
        np.concatenate([np.asarray(array, dtype=np.int64).ravel() for array in arrays])
        if arrays
        else np.zeros(0, dtype=np.int64)
    )
    if device.type == "cuda":
        host = host.pin_memory()
    on_device = host.to(device, non_blocking=True) if device.type != "cpu" else host
    return list(torch.split(on_device, sizes))


def local_indices(instances: np.ndarray, master_row: np.ndarray, masters: int) -> np.ndarray:
    """Every instance's index on its rank: a master's row among the rank's masters, a replica's
    ``masters + slot``."""
    slot = instances[:, 2]
    return np.where(slot >= 0, masters + slot, master_row[instances[:, 0]]).astype(np.int64)


def reroute(ids: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
    """The instance of every pair of ``ids`` (the router's ids, token-major, flattened), on the
    device: the engine's ``reroute``, bit for bit."""
    _, by_expert = torch.sort(ids, stable=True)
    position = torch.arange(len(ids), device=ids.device)
    entry = torch.searchsorted(dispatch.bounds, position, right=True)
    return torch.empty_like(ids).scatter_(0, by_expert, dispatch.entry_instance[entry])


def send_order(instance: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
    """The pairs in the order they leave: by destination rank, then instance there, then pair."""
    _, order = torch.sort(dispatch.instance_key[instance], stable=True)
    return order
