"""Network calls whose every row comes out the same whatever else is in the batch.

A live server advances hundreds of streams together, one batched call per model
piece, while a single stream, an export or a pull computes its rows alone; yet two
clients at different frame rates sharing a seed must get the same bits where their
times coincide. On a CPU a row's result can depend on its batch: a matrix product
takes another kernel for a lone row than for a block of rows, and an elementwise op
takes a scalar path for the tail of a tensor that is not a whole number of vector
registers (SiLU's tail differs from its vector body in the last bit).

So every batch is padded, by repeating its first row, to a whole number of
``ROW_BLOCK`` rows. Then every row goes through the same kernels on the same
code path, which the tests check on the machine they run on. 16 rows of float64
fill whole AVX2 and AVX-512 vectors. Threads would split work at sizes that depend
on the batch, so exact agreement needs torch on one thread (the server's default);
on CUDA the kernels are chosen per shape and agreement is to rounding only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ROW_BLOCK", "block_count", "pad_index", "pad_rows", "run_rows"]

ROW_BLOCK = 16  # rows of every batched call are a multiple of this


def block_count(n: int) -> int:
    """``n`` rounded up to a whole number of blocks (at least one block)."""
    return max(ROW_BLOCK, n + (-n) % ROW_BLOCK)


def pad_rows(x: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """(n, ...) -> (count, ...) by repeating row 0; ``count`` defaults to
    :func:`block_count` of n. A new contiguous tensor, differentiable."""
    n = x.shape[0]
    count = block_count(n) if count is None else count
    if count == n:
        return x.contiguous()
    return torch.cat([x, x[:1].expand(count - n, *x.shape[1:])])


def pad_index(index: torch.Tensor) -> torch.Tensor:
    """Row indices (n,) long padded like :func:`pad_rows` (n >= 1)."""
    return pad_rows(index)


def run_rows(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``fn`` over the rows of ``x`` (..., K) -> (..., N), computed as one padded
    batch (see the module's note)."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])  # (n, K)
    n = flat.shape[0]
    if n == 0:
        return fn(flat).reshape(*lead, -1)
    out = fn(pad_rows(flat))[:n]  # (n, N)
    return out.reshape(*lead, out.shape[-1])
