"""The modelled order of torch's CUDA ``mean`` (runtime/reduce_order.py) and the fused RMSNorm's exactness check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.reduce_order import MeanOrder, mean_in_order, mean_order


def _scalar_mean(sq: np.ndarray, order: MeanOrder) -> np.float32:
    """One row summed thread by thread with float32 scalars, written from the launch description and not from
    the tensor code under test: per-thread accumulators and their left-to-right combine, then block_x_reduce
    (lane i takes lane i + offset, offsets halving) in each warp row, then block_y_reduce over the warp rows."""
    threads, width = order.threads, sq.shape[0]
    zero = np.float32(0.0)
    values = []
    for t in range(threads):
        acc = [zero] * 4
        if order.vec == 4:
            for v in range(t, width // 4, threads):
                for p in range(4):
                    acc[p] = np.float32(acc[p] + sq[4 * v + p])
        else:
            for m, i in enumerate(range(t, width, threads)):
                acc[m % 4] = np.float32(acc[m % 4] + sq[i])
        values.append(np.float32(np.float32(np.float32(acc[0] + acc[1]) + acc[2]) + acc[3]))

    def halving(vals: list) -> np.float32:
        offset = len(vals) // 2
        while offset >= 1:
            vals = [np.float32(vals[i] + vals[i + offset]) for i in range(offset)]
            offset //= 2
        return vals[0]

    rows_of_warps = [halving(values[y * order.lanes:(y + 1) * order.lanes]) for y in range(order.split)]
    return np.float32(halving(rows_of_warps) * np.float32(order.factor))


@pytest.mark.parametrize(("rows", "width"), [(1, 64), (2, 64), (1, 128), (1, 256), (2, 256), (3, 1024), (1, 100),
                                           (2, 8192)])
def test_tensor_order_equals_a_thread_by_thread_scalar_sum(rows: int, width: int) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + width)
    sq = (torch.randn(rows, width, generator=gen) * 10 ** (torch.rand(rows, width, generator=gen) * 6 - 3)) ** 2
    order = mean_order(rows, width)
    assert isinstance(order, MeanOrder)
    got = mean_in_order(sq, order)
    want = np.array([_scalar_mean(sq[r].numpy(), order) for r in range(rows)], dtype=np.float32)
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))


def test_the_order_matters_and_depends_on_the_row_count() -> None:
    gen = torch.Generator().manual_seed(3)
    sq = (torch.randn(64, 4096, generator=gen) * 10 ** (torch.rand(64, 4096, generator=gen) * 6 - 3)) ** 2
    one = torch.stack([mean_in_order(row[None])[0] for row in sq])  # each row summed as a batch of one
    two = torch.cat([mean_in_order(sq[i:i + 2]) for i in range(0, 64, 2)])  # summed in pairs: other lanes
    plain = sq.double().mean(-1).float()
    assert not torch.equal(one, two) and not torch.equal(one, plain)
    assert torch.allclose(one, plain, rtol=1e-5) and torch.allclose(two, plain, rtol=1e-5)


def test_launch_parameters_follow_torchs_heuristics() -> None:
    assert mean_order(1, 4096) == MeanOrder(lanes=512, vec=4, width=4096, factor=1 / 4096)
    assert mean_order(2, 4096) == MeanOrder(lanes=256, vec=4, width=4096, factor=1 / 4096)  # a warp row per row
    two = mean_order(2, 8192)  # each row also split across the block's two warp rows
    assert (two.lanes, two.split, two.threads) == (256, 2, 512)
    assert mean_order(1, 64) == MeanOrder(lanes=64, vec=1, width=64, factor=1 / 64)
    assert mean_order(1, 128) == MeanOrder(lanes=32, vec=4, width=128, factor=1 / 128)  # vectorised from 128
    assert mean_order(1, 16).lanes == 16
    assert mean_order(1, 4096).rounds == 2 and mean_order(2, 4096).rounds == 4 and mean_order(1, 64).rounds == 1
    assert "vector tail" in mean_order(1, 4098)
    assert "global reduce" in mean_order(1, 1 << 17)
    with pytest.raises(ValueError, match="rows"):
        mean_order(0, 64)


# ----------------------------------------------------------------------------- VerifiedOps' check (CPU)
def _emulated_one_kernel(order_of: str):
    """A stand-in for the one-kernel RMSNorm in plain torch, writing its variance like the kernel does:
    ``torch`` (the reference's variance), ``wrong`` (a sequential sum: another order)."""
    from runtime.decode_ops import TorchOps

    def f(delta, res, weight, eps, *, var):
        new_res, out = TorchOps.add_rms_norm(delta, res, weight, eps)
        sq = new_res.to(torch.float32).pow(2).reshape(var.numel(), -1)
        if order_of == "torch":
            var.copy_(sq.mean(-1))
        else:
            acc = torch.zeros(var.numel())
            for i in range(sq.shape[1]):
                acc = acc + sq[:, i]
            var.copy_(acc * (1 / sq.shape[1]))
        return new_res, out  # the outputs are torch's either way: only the variance can tell

    return f


def _ops(variants):
    from runtime.decode_ops import VerifiedOps

    return VerifiedOps(torch.device("cpu"), torch.bfloat16, hidden=256, intermediate=64, heads=2, kv_heads=1,
                       head_dim=16, eps=1e-5, vocab=64, draws=4, norm_variants=variants)


def test_verified_ops_reject_a_norm_whose_variance_has_another_order_even_with_equal_outputs() -> None:
    ops = _ops([("wrong tree", _emulated_one_kernel("wrong"), True),
                ("right tree", _emulated_one_kernel("torch"), True)])
    assert ops.report["add_rms_norm"] == "rows 1: triton, right tree; rows 2: triton, right tree"
    assert any(k.startswith("add_rms_norm rows=1") for k in ops.mismatch)


def test_verified_ops_fall_back_to_torch_and_check_a_new_row_count_on_first_use() -> None:
    from runtime.decode_ops import TorchOps

    ops = _ops([("wrong tree", _emulated_one_kernel("wrong"), True)])
    assert ops.report["add_rms_norm"].startswith("rows 1: torch (no fused variant was bit-exact")
    res, delta = torch.randn(3, 1, 256).bfloat16(), torch.randn(3, 1, 256).bfloat16()
    w = torch.ones(256).bfloat16()
    for a, b in zip(ops.add_rms_norm(delta, res, w, 1e-5), TorchOps.add_rms_norm(delta, res, w, 1e-5)):
        assert torch.equal(a, b)
    assert "rows 3: torch" in ops.report["add_rms_norm"]
    # off CUDA the fused kernels cannot run: every op is torch's, the step's tail included
    assert ops.report["greedy_tail"].startswith("torch") and ops.name.startswith("triton (0 of 4")


# ----------------------------------------------------------------------------- on the GPU
@pytest.mark.gpu
@pytest.mark.parametrize("width", [64, 256, 4096])
@pytest.mark.parametrize("rows", [1, 2, 3])
def test_modelled_order_is_torchs_cuda_mean_bit_for_bit(rows: int, width: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(rows + width)
    for _ in range(16):
        x = torch.randn(rows, 1, width, generator=gen, device="cuda")
        x = (x * 10 ** (torch.rand(rows, 1, width, generator=gen, device="cuda") * 5 - 3)).bfloat16().float()
        sq = x.pow(2)
        assert torch.equal(mean_in_order(sq.reshape(rows, width)), sq.mean(-1, keepdim=True).reshape(rows))


@pytest.mark.gpu
@pytest.mark.parametrize("width", [64, 256, 4096])
def test_one_kernel_rms_norm_is_chosen_and_equals_torch_at_batches_one_to_three(width: int) -> None:
    pytest.importorskip("triton")
    from runtime.decode_ops import TorchOps, VerifiedOps

    dev = torch.device("cuda:0")
    ops = VerifiedOps(dev, torch.bfloat16, hidden=width, intermediate=128, heads=4, kv_heads=2, head_dim=16,
                      eps=1e-5, vocab=1000)
    assert ops.report["add_rms_norm"].count("one kernel in torch's mean order") == 2, ops.report
    assert ops.report["greedy_tail"] == "triton, one kernel", ops.report
    gen = torch.Generator(device=dev).manual_seed(11)
    for rows in (1, 2, 3):
        for _ in range(8):
            res, delta = (torch.randn(rows, 1, width, generator=gen, device=dev).bfloat16() for _ in range(2))
            w = torch.rand(width, generator=gen, device=dev).bfloat16()
            for a, b in zip(ops.add_rms_norm(delta, res, w, 1e-5), TorchOps.add_rms_norm(delta, res, w, 1e-5)):
                assert torch.equal(a, b)
    assert "rows 3: triton, one kernel" in ops.report["add_rms_norm"]
