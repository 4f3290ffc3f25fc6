"""Streaming: greedy tokens equal the unmodified model's, resident or streamed; hooks detach cleanly."""
from __future__ import annotations

import pytest
import torch
from _streaming_models import greedy, state, tiny_llama
from torch import nn

from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec
from runtime.streaming import StreamUnit, Streamer
from runtime.tensors import TensorStore


@pytest.fixture(scope="module")
def model_and_ref() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    return model, ids, greedy(model, ids, 12)


@pytest.mark.parametrize("granularity", ["module", "block"])
@pytest.mark.parametrize("homes", [(None, None, None), ("disk", "disk", "disk"), (None, "disk", None)])
@pytest.mark.parametrize(("lookahead", "disk_io"), [(0, "mmap"), (2, "mmap"), (2, "read"), (1, "mmap-sync"),
                                                    (1, "mmap-willneed"), (1, "remap"), (1, "mmap-auto"),
                                                    (1, "mmap-populate")])
def test_greedy_tokens_identical(model_and_ref, homes, granularity, lookahead, disk_io) -> None:
    model, ids, ref = model_and_ref
    before = state(model)
    spec = SessionSpec(blocks=tuple(BlockSpec(device="cpu", home=h) for h in homes), granularity=granularity,
                       lookahead=lookahead, disk_io=disk_io)
    with Session(model, spec) as session:
        out = session.generate(ids, max_new_tokens=12)
        stats = session.stats()
    assert torch.equal(out, ref)
    streamed = sum(h is not None for h in homes)
    if streamed:
        assert stats.fetches > 0 and stats.bytes_fetched > 0
        if lookahead:
            assert stats.misses <= 2  # the first unit, plus at most one while the order is learned
    after = state(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("keep_bound", [True, False])
def test_detach_restores_model_and_removes_hooks(model_and_ref, keep_bound) -> None:
    model, ids, ref = model_and_ref
    params = {n: id(p) for n, p in model.named_parameters()}
    spec = SessionSpec(default=BlockSpec(device="cpu", home="disk"), keep_bound=keep_bound)
    q = model.model.layers[0].self_attn.q_proj
    q_before = q.weight.detach().clone()
    session = Session(model, spec)
    if keep_bound:  # bound to its view of the mapped file between uses (pages dropped), not a placeholder
        unit = next(u for u in session.streamer.units if u.module is q)
        assert unit.fixed and q.weight.data_ptr() == unit.mviews[0].data_ptr()
        assert torch.equal(q.weight, q_before)
    else:
        assert q.weight.device.type == "meta"  # not resident between uses
    assert q._forward_pre_hooks and q._forward_hooks
    session.close()
    assert not q._forward_pre_hooks and not q._forward_hooks
    assert {n: id(p) for n, p in model.named_parameters()} == params  # same Parameter objects
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(greedy(model, ids, 12), ref)
    with pytest.raises(Exception, match="closed"):
        session.forward(input_ids=ids)


def test_forward_logits_match(model_and_ref) -> None:
    model, ids, _ = model_and_ref
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    with Session(model, SessionSpec(default=BlockSpec(device="cpu", home="disk"), lookahead=1)) as s:
        out = s.forward(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_streamer_on_plain_modules_prefetches_ahead() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(*[nn.Linear(16, 16) for _ in range(5)])
    x = torch.randn(2, 16)
    ref = seq(x)
    store = TensorStore()
    units = [StreamUnit(str(i), m, torch.device("cpu"), "disk") for i, m in enumerate(seq)]
    streamer = Streamer(store, units, lookahead=2).attach()
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(seq(x), ref, rtol=0, atol=0)
    assert streamer.stats.misses == 1 and streamer.stats.fetches == 15 + 2  # + the wrap-around prefetches
    streamer.detach()
    store.close()
    torch.testing.assert_close(seq(x), ref, rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_streaming_matches_resident() -> None:
    model = tiny_llama(layers=4)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(2))
    model.to("cuda")
    ref = greedy(model, ids.cuda(), 16).cpu()
    model.to("cpu")
    homes = ("cpu", None, "cpu", "disk")
    spec = SessionSpec(blocks=tuple(BlockSpec(device="cuda:0", home=h) for h in homes),
                       rest=BlockSpec(device="cuda:0"), lookahead=1,
                       modules={"model.embed_tokens": BlockSpec(device="cpu")})
    with Session(model, spec, time_transfers=True) as session:
        out = session.generate(ids, max_new_tokens=16).cpu()
        stats = session.stats()
        assert model.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    assert torch.equal(out, ref)
    assert stats.fetches > 0 and stats.extra["transfer_seconds"] > 0
    assert stats.peak_bytes["gpu"] <= stats.cuda_max_allocated
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.gpu
def test_cuda_store_budget_holds_while_streaming() -> None:
    model = tiny_llama(layers=4)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    spec = SessionSpec(blocks=(BlockSpec(device="cuda:0"),) + (BlockSpec(device="cuda:0", home="cpu"),) * 3,
                       rest=BlockSpec(device="cuda:0"), budgets={"gpu": "400KiB"}, lookahead=1)
    torch.cuda.reset_peak_memory_stats()
    with Session(model, spec) as session:
        session.generate(ids, max_new_tokens=4)
        assert session.stats().peak_bytes["gpu"] <= 400 * 1024


@pytest.mark.parametrize("disk_io", ["mmap", "mmap-sync", "mmap-auto", "mmap-populate"])
def test_int8_blocks_on_disk_match_int8_in_ram(model_and_ref, disk_io) -> None:
    import copy

    model, ids, _ = model_and_ref
    outs = []
    for home in (None, "disk"):
        spec = SessionSpec(blocks=tuple(BlockSpec(device="cpu", home=home, weight_format="int8") for _ in range(3)),
                           rest=BlockSpec(device="cpu"), lookahead=1, disk_io=disk_io)
        with Session(copy.deepcopy(model), spec) as session:
            outs.append(session.generate(ids, max_new_tokens=8))
            st = session.stats()
    assert torch.equal(outs[0], outs[1])
    # int8 codes + float32 scales travel: about a quarter of the float32 weights of the linears
    linears = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    assert st.extra["streamed_bytes_per_pass"] < 0.3 * 4 * linears


def test_streamed_quantized_units_keep_meta_placeholders_between_uses(model_and_ref) -> None:
    """keep_bound binds mapped float units once, but a QuantizedLinear stays meta between uses: kernel selection
    (choose_kernels, autosurgeon's autotune) tells streamed layers by their meta weights."""
    import copy

    model, ids, _ = model_and_ref
    spec = SessionSpec(blocks=tuple(BlockSpec(device="cpu", home="disk", weight_format="int8") for _ in range(3)),
                       rest=BlockSpec(device="cpu"), lookahead=1)
    m = copy.deepcopy(model)
    with Session(m, spec) as session:
        session.generate(ids, max_new_tokens=2)
        q = m.model.layers[0].self_attn.q_proj
        assert q.qweight.device.type == "meta"
        assert not any(u.fixed for u in session.streamer.units if u.streamed)
