"""The layer that serves many LoRA adapters at once: an ``nn.Linear`` holding every adapter's A/B matrices.

Every targeted ``nn.Linear`` of the base is wrapped once in a :class:`PooledLinear`, keyed by an internal *slot*
id per loaded adapter. What a forward pass applies is decided by one shared :class:`Router` holding the current
:class:`Route` (which slot each batch row uses): switching adapters is one attribute write. A mixed batch gathers
every row's A and B into (batch, in, r) and (batch, r, out) stacks, so a step is two ``torch.bmm`` calls whatever
the mix (punica's / S-LoRA's gathered LoRA, BGMV, in plain torch). ``serving.pool`` owns the routers and slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PooledLinear", "Route", "Router"]


@dataclass(frozen=True, eq=False)
class Route:
    """Which adapter slot each row of the next forward passes uses.

    ``slots`` are the distinct slots of the batch; ``rows`` gives, per batch row, the index of its slot in
    ``slots`` (-1: base model), or is None when every row uses ``slots[0]``.
    """

    slots: tuple[str, ...]
    rows: torch.Tensor | None = None


class Router:
    """The route every pooled layer reads; one per pool."""

    def __init__(self) -> None:
        self.route: Route | None = None


_Plan = tuple[Route, torch.Tensor, torch.Tensor, "torch.Tensor | float"]  # route, A, B, scaling


class PooledLinear(nn.Module):
    """An ``nn.Linear`` plus the LoRA matrices of every adapter that targets it, applied per the route."""

    def __init__(self, base: nn.Linear, router: Router) -> None:
        super().__init__()
        self.base = base
        self._router = router
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}  # slot -> (A, B, scaling)
        self._plan: _Plan | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        route = self._router.route
        if route is None:
            return result
        plan = self._plan if self._plan is not None and self._plan[0] is route else self._build(route)
        if plan is None:  # no adapter of this batch targets this layer
            return result
        _, a, b, scale = plan
        if isinstance(scale, float):  # one adapter for all rows: exactly peft's lora_B(lora_A(x)) * scaling
            return result + F.linear(F.linear(x, a), b) * scale
        rows = x if x.dim() == 3 else x.unsqueeze(1)  # (batch, seq, in) @ (batch, in, r) @ (batch, r, out)
        delta = torch.bmm(torch.bmm(rows, a), b) * scale
        return result + delta.view_as(result)

    def _build(self, route: Route) -> _Plan | None:
        """This layer's A/B for the route, cached until the route changes.

        One adapter for every row: its own matrices, no copy. Mixed rows: each row's A^T and B^T gathered into
        (batch, in, r) and (batch, r, out) stacks (ranks zero-padded; zeros for base rows and for adapters that
        do not target this layer), so a step is two batched matmuls whatever the mix.
        """
        present = {i: self.adapters[s] for i, s in enumerate(route.slots) if s in self.adapters}
        plan: _Plan | None
        if not present:
            plan = None
        elif route.rows is None:
            a, b, scaling = present[0]
            plan = (route, a, b, float(scaling))
        else:
            weight = self.base.weight
            rank = max(w[0].shape[0] for w in present.values())
            batch = route.rows.shape[0]
            a_rows = weight.new_zeros(batch, self.base.in_features, rank)
            b_rows = weight.new_zeros(batch, rank, self.base.out_features)
            scale = weight.new_zeros(batch, 1, 1)
            for i, (a, b, scaling) in present.items():
                mine = route.rows == i
                a_rows[mine, :, : a.shape[0]] = a.t()
                b_rows[mine, : b.shape[1], :] = b.t()
                scale[mine] = scaling
            plan = (route, a_rows, b_rows, scale)
        self._plan = plan
        return plan

    def drop_plan(self) -> None:
        self._plan = None
