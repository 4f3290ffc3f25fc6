"""Issue 16 on a CUDA GPU: is the one-kernel RMSNorm bit for bit Hugging Face's, and what do it and the fused
step tail save?

1. ``runtime.reduce_order.mean_in_order`` (the modelled order of torch's CUDA ``mean``, in plain torch ops)
   against ``sq.mean(-1, keepdim=True)`` itself, over many random rows of very different magnitudes, for several
   widths and row counts; beside it two other candidate orders (shuffles pairing adjacent lanes, as an older
   ``Reduce.cuh`` reads, and a division by the width instead of the product) to say which part matters.
2. The one-kernel RMSNorm (``runtime.decode_ops._add_rms_norm1``): its variance against torch's, and its two
   outputs against ``TorchOps.add_rms_norm``, on the same kind of inputs.
3. The fused tail (``_greedy_tail``: logits kept, argmax, ids, position, mask) against torch's five ops, with ties,
   ``-inf`` rows and NaNs.
4. Device time per call inside a CUDA graph (``--calls`` calls captured, replayed): RMSNorm as three kernels,
   one kernel in torch's order, one kernel in its own order (``TritonFastOps``), at batch 1 and hidden 4096;
   the tail as torch's five ops against the one kernel at vocab 32000.

Run: ``python -m experiments.benchmarks.streaming_gpu_rmsnorm --json r.json`` (seconds).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from runtime.decode_ops import TorchOps, TritonFastOps, _add_rms_norm1, _add_rms_norm3, _greedy_tail
from runtime.reduce_order import MeanOrder, fold_lanes, lane_sums, mean_in_order, mean_order


def _adjacent_shuffles(sq: torch.Tensor, order: MeanOrder) -> torch.Tensor:
    """Session 9's first reading (an older Reduce.cuh): shuffles by 1, 2, 4, ... (adjacent pairs first) and the
    warp rows folded before the lanes, as one flat halving."""
    lane = lane_sums(sq, order)
    while lane.shape[1] > 32:
        half = lane.shape[1] // 2
        lane = lane[:, :half] + lane[:, half:]
    while lane.shape[1] > 1:
        lane = lane[:, 0::2] + lane[:, 1::2]
    return lane[:, 0] * torch.tensor(order.factor, dtype=torch.float32, device=sq.device)


def _divided(sq: torch.Tensor, order: MeanOrder) -> torch.Tensor:
    return fold_lanes(lane_sums(sq, order), order) / order.width


def _rows(gen: torch.Generator, rows: int, width: int, draw: int) -> torch.Tensor:
    shape = (rows, 1, width)
    x = torch.randn(shape, generator=gen, device="cuda")
    if draw % 2:
        x = x * 10 ** (torch.rand(shape, generator=gen, device="cuda") * 5 - 3)
    return x.bfloat16()


def check_orders(widths: Sequence[int], row_counts: Sequence[int], draws: int) -> list[dict[str, Any]]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for width in widths:
        for rows in row_counts:
            order = mean_order(rows, width)
            rec: dict[str, Any] = {"rows": rows, "width": width}
            if isinstance(order, str):
                rec["not_modelled"] = order
                out.append(rec)
                continue
            rec.update(lanes=order.lanes, split=order.split, vec=order.vec, draws=draws, model_equal=0,
                       adjacent_shuffles_equal=0, divided_equal=0, kernel_var_equal=0, kernel_outputs_equal=0,
                       kernel_error=None)
            w = (torch.randn(width, generator=gen, device="cuda") * 0.1 + 1).bfloat16()
            var = torch.empty(rows, dtype=torch.float32, device="cuda")
            for draw in range(draws):
                res, delta = _rows(gen, rows, width, draw), _rows(gen, rows, width, draw + 1)
                ref_res, ref_out = TorchOps.add_rms_norm(delta, res, w, 1e-5)
                sq = ref_res.float().pow(2)
                want = sq.mean(-1, keepdim=True).reshape(rows)
                flat = sq.reshape(rows, width)
                rec["model_equal"] += torch.equal(mean_in_order(flat, order), want)
                rec["adjacent_shuffles_equal"] += torch.equal(_adjacent_shuffles(flat, order), want)
                rec["divided_equal"] += torch.equal(_divided(flat, order), want)
                try:
                    new_res, got = _add_rms_norm1(delta, res, w, 1e-5, var=var)
                except Exception as exc:  # noqa: BLE001 - recorded, the other checks go on
                    rec["kernel_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                rec["kernel_var_equal"] += torch.equal(var, want)
                rec["kernel_outputs_equal"] += torch.equal(new_res, ref_res) and torch.equal(got, ref_out)
            print(rec, flush=True)
            out.append(rec)
    return out


def check_tail(vocab: int, trials: int) -> dict[str, Any]:
    gen = torch.Generator(device="cuda").manual_seed(1)
    dt, length = torch.bfloat16, 96
    res = {"trials": trials, "equal": 0, "nan_trials": 0, "nan_equal": 0}
    for trial in range(trials):
        logits = torch.randn(2, vocab, generator=gen, device="cuda").to(dt)
        if trial % 3 == 1:
            top = logits.max(-1).values
            for j in (7, vocab // 2, vocab - 1):
                logits[0, j] = top[0]
            logits[1, : vocab // 3] = float("-inf")
        nan = trial % 3 == 2
        if nan:
            logits[1, vocab // 5] = float("nan")
            logits[1, vocab // 4] = float("nan")
        bufs = [[torch.zeros(2, vocab, dtype=dt, device="cuda"), torch.zeros(2, 1, dtype=torch.long, device="cuda"),
                 torch.zeros(2, 1, dtype=torch.long, device="cuda"),
                 torch.full((1,), trial % length, dtype=torch.long, device="cuda"),
                 torch.arange(length, device="cuda").view(1, 1, 1, length),
                 torch.zeros(1, 1, 1, length, dtype=dt, device="cuda"), torch.zeros((), dtype=dt, device="cuda"),
                 torch.full((), float("-inf"), dtype=dt, device="cuda")] for _ in range(2)]
        _greedy_tail(logits, *bufs[0])
        TorchOps.greedy_tail(logits, *bufs[1])
        same = all(torch.equal(a, b) for a, b in zip(bufs[0][1:], bufs[1][1:])) and torch.equal(
            bufs[0][0].view(torch.int16), bufs[1][0].view(torch.int16))  # NaN-safe: the bits
        if nan:
            res["nan_trials"] += 1
            res["nan_equal"] += same
        else:
            res["equal"] += same
    return res


def graph_us(fn: Callable[[], Any], calls: int, replays: int = 50) -> float:
    """Device microseconds per call of ``fn``: ``calls`` calls captured in one graph, replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    for _ in range(5):
        g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / replays / calls


def timings(calls: int) -> dict[str, float]:
    gen = torch.Generator(device="cuda").manual_seed(2)
    res, delta = (torch.randn(1, 1, 4096, generator=gen, device="cuda").bfloat16() for _ in range(2))
    w = torch.rand(4096, generator=gen, device="cuda").bfloat16()
    out = {"rmsnorm three kernels (session 8)": graph_us(lambda: _add_rms_norm3(delta, res, w, 1e-5), calls),
           "rmsnorm one kernel, torch's order": graph_us(lambda: _add_rms_norm1(delta, res, w, 1e-5), calls),
           "rmsnorm one kernel, own order (not exact)": graph_us(
               lambda: TritonFastOps.add_rms_norm(delta, res, w, 1e-5), calls),
           "rmsnorm torch ops (Hugging Face's)": graph_us(lambda: TorchOps.add_rms_norm(delta, res, w, 1e-5), calls)}
    vocab, length = 32000, 128
    logits = torch.randn(1, vocab, generator=gen, device="cuda").bfloat16()
    bufs = [torch.zeros(1, vocab, dtype=torch.bfloat16, device="cuda"), torch.zeros(1, 1, dtype=torch.long,
            device="cuda"), torch.zeros(1, 1, dtype=torch.long, device="cuda"),
            torch.zeros(1, dtype=torch.long, device="cuda"), torch.arange(length, device="cuda").view(1, 1, 1, length),
            torch.zeros(1, 1, 1, length, dtype=torch.bfloat16, device="cuda"),
            torch.zeros((), dtype=torch.bfloat16, device="cuda"),
            torch.full((), float("-inf"), dtype=torch.bfloat16, device="cuda")]
    out["tail: torch's five ops"] = graph_us(lambda: TorchOps.greedy_tail(logits, *bufs), calls)
    out["tail: one kernel"] = graph_us(lambda: _greedy_tail(logits, *bufs), calls)
    for k, v in out.items():
        print(f"{k}: {v:.2f} us/call", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,128,256,1024,2048,4096,5120,8192,11008")
    parser.add_argument("--rows", default="1,2,3,4,8")
    parser.add_argument("--draws", type=int, default=24)
    parser.add_argument("--calls", type=int, default=33, help="calls per captured graph (33 norms in a step)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (none is visible)")
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "orders": check_orders([int(w) for w in args.widths.split(",")], [int(r) for r in args.rows.split(",")],
                                  args.draws),
           "tail": check_tail(32000, 24)}
    print("tail", res["tail"], flush=True)
    res["timings_us"] = timings(args.calls)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    bad = [o for o in res["orders"] if "draws" in o and o["model_equal"] != o["draws"]]
    print(f"orders not matching torch: {len(bad)} of {sum('draws' in o for o in res['orders'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
