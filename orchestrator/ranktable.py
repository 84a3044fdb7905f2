"""Pure rank-table logic: which ranks each node holds (HCCL v1.0 tables build on this).

MindSpore numbers ranks in the dictionary order of the rank table's `server_id`
(192.168.0.10 sorts before 192.168.0.2), devices ascending within a server.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.inventory import Inventory, Node


@dataclass(frozen=True)
class NodeRanks:
    """A node's contiguous block of global ranks: [rank_start, rank_end)."""

    node: Node
    rank_start: int
    rank_end: int  # exclusive

    @property
    def ranks(self) -> range:
        return range(self.rank_start, self.rank_end)


def node_rank_ranges(inv: Inventory) -> tuple[NodeRanks, ...]:
    """Every node's rank range, in rank order. The one function `plan`, `ranktable` and `up` use."""
    out = []
    start = 0
    for node in inv.in_rank_order():
        out.append(NodeRanks(node=node, rank_start=start, rank_end=start + node.device_count))
        start += node.device_count
    return tuple(out)
