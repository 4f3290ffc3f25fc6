"""MultiSession: a model across logical devices, each with its own store, budget and Streamer; tokens equal."""
from __future__ import annotations

import pytest
import torch
from _streaming_models import greedy, state, tiny_llama

from runtime.device_store import DeviceStore, Ledger
from runtime.errors import BudgetExceededError, JalapenoError
from runtime.multi_device import DeviceBlock, MultiSession, MultiSpec
from runtime.session import module_bytes

IDS = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5))


def two_cpu_devices(homes=(None, "disk", None, "disk"), **options) -> MultiSpec:
    devices = ("a", "a", "b", "b")
    return MultiSpec(devices={"a": "cpu", "b": "cpu"}, blocks=tuple(DeviceBlock(d, h) for d, h in zip(devices, homes)),
                     lookahead=1, **options)


def test_two_logical_host_devices_give_the_one_device_tokens_and_keep_their_own_accounts() -> None:
    model = tiny_llama(layers=4)
    before = state(model)
    ref = greedy(model, IDS, 12)
    block = module_bytes(model.model.layers[0])
    spec = two_cpu_devices(budgets={"a": "3MiB", "b": 2 * block + 64 * 1024})
    with MultiSession(model, spec) as session:
        assert set(session.streamers) == {"a", "b"} and session.streamers["a"] is not session.streamers["b"]
        assert session.stores["a"] is not session.stores["b"]
        out = session.generate(IDS, max_new_tokens=12)
        stats = session.stats()
        up = model.model.layers[3].mlp.up_proj  # streamed from disk: bound to its mapped view (pages dropped)
        unit = next(u for u in session.streamers["b"].units if u.module is up)
        assert unit.home == "disk" and unit.fixed and up.weight.data_ptr() == unit.mviews[0].data_ptr()
    assert torch.equal(out, ref)
    a, b = stats["devices"]["a"], stats["devices"]["b"]
    assert a["blocks"] == [0, 1] and b["blocks"] == [2, 3]
    assert a["streamed_blocks"] == [1] and b["streamed_blocks"] == [3]
    assert a["fetches"] > 0 and b["fetches"] > 0 and a["bytes_fetched"] > 0 and b["bytes_fetched"] > 0
    assert b["peak_bytes"] <= b["budget"] and a["peak_bytes"] <= a["budget"]
    assert a["peak_bytes"] > b["peak_bytes"]  # "a" also holds the embedding and the head
    assert stats["shared_peak_bytes"]["disk"] > 0 and stats["tokens"] == 12
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # close() gave the model back as it was


def test_a_device_budget_refusal_names_the_device_and_a_shared_one_names_the_tier() -> None:
    model = tiny_llama(layers=4)
    ref = greedy(model, IDS, 4)
    with pytest.raises(BudgetExceededError, match=r"device 'b': tier 'cpu' budget 1\.00 KiB"):
        MultiSession(model, two_cpu_devices(budgets={"b": "1KiB"}))
    with pytest.raises(BudgetExceededError, match=r"shared tier 'disk' budget 1\.00 KiB .* for device 'a'"):
        MultiSession(model, two_cpu_devices(shared_budgets={"disk": "1KiB"}))
    assert torch.equal(greedy(model, IDS, 4), ref)  # a refused session leaves the model runnable


def test_ledger_undoes_the_device_charge_when_the_shared_tier_refuses() -> None:
    ledger = Ledger({"cpu": 1000})
    a = DeviceStore("a", budget=None, exec_tier="gpu", ledger=ledger, pin_memory=False)
    b = DeviceStore("b", budget=None, exec_tier="gpu", ledger=ledger, pin_memory=False)
    a.charge("cpu", 600, label="x")
    with pytest.raises(BudgetExceededError, match=r"shared tier 'cpu'.*device 'a' holds the most"):
        b.charge("cpu", 600, label="y")
    assert b.used("cpu") == 0 and ledger.used("cpu") == 600
    a.uncharge("cpu", 600, label="x")
    b.charge("cpu", 600, label="y")
    assert ledger.peak("cpu") == 600 and ledger.used("cpu") == 600


def test_spec_checks_name_the_argument_and_split_fills_each_device_in_turn() -> None:
    with pytest.raises(JalapenoError, match=r"`blocks\[1\].device` 'c' is not one of `devices` \['a', 'b'\]"):
        MultiSpec(devices={"a": "cpu", "b": "cpu"}, blocks=(DeviceBlock("a"), DeviceBlock("c")))
    with pytest.raises(JalapenoError, match="`shared_budgets` tier 'gpu' is not shared"):
        MultiSpec(devices={"a": "cpu"}, blocks=(), shared_budgets={"gpu": 1})
    with pytest.raises(JalapenoError, match=r"`devices\['a'\]` must be 'cpu' or 'cuda\[:N\]'"):
        MultiSpec(devices={"a": "tpu"}, blocks=())
    spec = MultiSpec.split(n_blocks=10, block_bytes=100, rest_bytes=150, devices={"g0": "cuda:0", "g1": "cuda:1"},
                           budgets={"g0": 600, "g1": 650}, stream_unit_bytes=30, lookahead=2)
    assert [b.device for b in spec.blocks] == ["g0"] * 5 + ["g1"] * 5
    # g0: 600 - 150 (rest) = 450 -> 4 blocks would leave 50 B, not room for 3 slots of 30 -> 3 resident, 2 streamed;
    # g1: 650 holds its 5 blocks.
    assert [b.home for b in spec.blocks] == [None] * 3 + ["cpu"] * 2 + [None] * 5 and spec.lookahead == 2
    spread = MultiSpec.split(n_blocks=10, block_bytes=100, rest_bytes=150, devices={"g0": "cuda:0", "g1": "cuda:1"},
                             budgets={"g0": 600, "g1": 450}, stream_unit_bytes=30, lookahead=2, layout="interleaved")
    assert [b.device for b in spread.blocks] == ["g0", "g1"] * 5
    # g0 keeps 3 of its 5 blocks (as above), g1 (450 B) 3 as well, spread among the streamed ones.
    assert [b.home for b in spread.blocks[0::2]] == [None, "cpu", None, "cpu", None]
    assert [b.home for b in spread.blocks[1::2]] == [None, "cpu", None, "cpu", None]
    with pytest.raises(JalapenoError, match="`layout` must be 'contiguous' or 'interleaved', got 'zigzag'"):
        MultiSpec.split(n_blocks=2, block_bytes=1, rest_bytes=0, devices={"a": "cpu"}, budgets={}, layout="zigzag")
    model = tiny_llama(layers=4)
    with pytest.raises(JalapenoError, match="spec lists 2 blocks but 'model.layers' has 4"):
        MultiSession(model, MultiSpec(devices={"a": "cpu"}, blocks=(DeviceBlock("a"),) * 2))


@pytest.mark.gpu
def test_two_logical_devices_on_one_gpu_stream_on_their_own_copy_streams() -> None:
    model = tiny_llama(layers=4)
    model.to("cuda")
    ref = greedy(model, IDS.cuda(), 12).cpu()
    model.to("cpu")
    spec = MultiSpec(devices={"gpu:0": "cuda:0", "gpu:1": "cuda:0"},
                     blocks=tuple(DeviceBlock(d, h) for d, h in
                                  zip(("gpu:0", "gpu:0", "gpu:1", "gpu:1"), (None, "cpu", "cpu", "cpu"))),
                     budgets={"gpu:0": "4MiB", "gpu:1": "1MiB"}, lookahead=1)
    with MultiSession(model, spec, time_transfers=True) as session:
        streams = [s._copy_streams[torch.device("cuda:0")] for s in session.streamers.values()]
        assert len(streams) == 2 and streams[0] != streams[1]
        out = session.generate(IDS, max_new_tokens=12).cpu()
        links = session.link_stats()
        stats = session.stats()
    assert torch.equal(out, ref)
    assert set(links) == {"gpu:0", "gpu:1"} and all(v["bytes"] > 0 and v["seconds"] > 0 for v in links.values())
    assert all(d["peak_bytes"] <= d["budget"] for d in stats["devices"].values())
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_move_activations_at_block_boundaries_and_give_the_one_gpu_tokens() -> None:
    model = tiny_llama(layers=4)
    model.to("cuda:0")
    ref = greedy(model, IDS.cuda(), 12).cpu()
    model.to("cpu")
    spec = MultiSpec(devices={"gpu:0": "cuda:0", "gpu:1": "cuda:1"},
                     blocks=tuple(DeviceBlock(d, h) for d, h in
                                  zip(("gpu:0", "gpu:0", "gpu:1", "gpu:1"), (None, "cpu", None, "cpu"))),
                     lookahead=1)
    with MultiSession(model, spec) as session:
        assert model.model.layers[2].mlp.up_proj.weight.device == torch.device("cuda:1")
        out = session.generate(IDS, max_new_tokens=12).cpu()
    assert torch.equal(out, ref)
