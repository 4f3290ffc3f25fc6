"""The captured decode step: same tokens as Hugging Face eager, fallbacks that say why."""
from __future__ import annotations

import logging

import pytest
import torch

from autosurgeon.transforms.configs import FuseConfig
from autosurgeon.transforms.registry import TransformContext, transform
from runtime.decode_graph import GraphDecoder, _pad_after_eos, generate_reason
from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec
from tests.runtime._streaming_models import greedy, tiny_llama


def _spec(device: str, layers: int, streamed: tuple[int, ...] = (), fmt: str | None = None) -> SessionSpec:
    blocks = tuple(BlockSpec(device=device, home="cpu" if i in streamed else None, weight_format=fmt)
                   for i in range(layers))
    return SessionSpec(blocks=blocks, rest=BlockSpec(device=device))


def _prompt(n: int = 7, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 256, (batch, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("batch", [1, 2])
def test_step_run_eagerly_gives_hugging_face_tokens(batch: int) -> None:
    model = tiny_llama(layers=3)  # GQA: 4 heads over 2 KV heads
    ids = _prompt(batch=batch)
    ref = greedy(model, ids, 20)
    with Session(model, _spec("cpu", 3), graphs=False) as session:
        dec = GraphDecoder(session, capture=False, ops="torch", bucket=8)
        out = dec.generate(ids, max_new_tokens=20, eos_token_id=model.generation_config.eos_token_id)
        assert dec.key == (batch, 32)  # 7 + 20 rounded up to the bucket
        assert session.store.used("cpu") > 0
        dec.close()
    assert torch.equal(out, ref)


def test_step_refuses_to_run_past_its_static_cache() -> None:
    with Session(tiny_llama(layers=2), _spec("cpu", 2), graphs=False) as session:
        dec = GraphDecoder(session, capture=False, ops="torch", bucket=1)
        dec.start(_prompt(4), max_new_tokens=2)  # 6 positions; steps write positions 4 and 5
        dec.step()
        dec.step()
        with pytest.raises(Exception, match="static cache holds 6 positions"):
            dec.step()


def test_session_without_cuda_runs_eagerly_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_llama(layers=2)
    ids = _prompt()
    ref = greedy(model, ids, 6)
    with caplog.at_level(logging.WARNING, logger="autosurgeon"), Session(model, _spec("cpu", 2), graphs=True) as s:
        out = s.generate(ids, max_new_tokens=6)
        decode = s.stats().extra["decode"]
    assert torch.equal(out, ref)
    assert decode["path"] == "eager" and "CUDA device" in decode["reason"]
    assert "not through a captured decode step" in caplog.text


def test_generate_reasons_name_what_is_not_handled() -> None:
    with Session(tiny_llama(layers=2), _spec("cpu", 2), graphs=False) as session:
        ids = _prompt()
        assert "sampling" in generate_reason(session, ids, do_sample=True, kwargs={})
        assert "num_beams" in generate_reason(session, ids, do_sample=False, kwargs={"num_beams": 2})
        mask = torch.ones_like(ids)
        mask[0, 0] = 0
        assert "padded" in generate_reason(session, ids, do_sample=False, kwargs={"attention_mask": mask})
        assert "CUDA" in generate_reason(session, ids, do_sample=False, kwargs={})


def test_quiesce_gives_every_staging_slot_back() -> None:
    model = tiny_llama(layers=3)
    blocks = tuple(BlockSpec(device="cpu", home="disk" if i else None) for i in range(3))
    spec = SessionSpec(blocks=blocks, rest=BlockSpec(device="cpu"), lookahead=1)
    with Session(model, spec, graphs=False) as session:
        session.forward(input_ids=_prompt())  # leaves the next token's first units prefetched
        streamer = session.streamer
        assert any(u.pending is not None for u in streamer.units)
        streamer.quiesce()
        assert all(u.pending is None and u.slot is None for u in streamer.units)
        bufs, stream = streamer.staging(torch.device("cpu"))
        assert len(bufs) == 2 and stream is None
        session.forward(input_ids=_prompt())  # the eager path still finds its slots


def test_rows_after_eos_are_padded_and_the_call_ends_when_all_finished() -> None:
    new = torch.tensor([[5, 2, 7, 8, 9], [5, 6, 7, 2, 9]])
    assert _pad_after_eos(new, [2], 0).tolist() == [[5, 2, 0, 0], [5, 6, 7, 2]]
    assert _pad_after_eos(torch.tensor([[5, 2, 7], [5, 6, 7]]), [2], 0).tolist() == [[5, 2, 0], [5, 6, 7]]


# ------------------------------------------------------------------------------------------- GPU
def _cuda_model(dtype: torch.dtype = torch.bfloat16, layers: int = 4) -> torch.nn.Module:
    return tiny_llama(layers=layers, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("ops", ["torch", "triton"])
@pytest.mark.parametrize("streamed", [(), (1, 2)])
def test_captured_step_gives_eager_tokens_on_cuda(ops: str, streamed: tuple[int, ...]) -> None:
    pytest.importorskip("triton") if ops == "triton" else None
    model = _cuda_model()
    ids = _prompt(batch=2)
    ref = greedy(model.to("cuda"), ids.to("cuda"), 24).cpu()
    with Session(model, _spec("cuda:0", 4, streamed), graphs=False) as session:
        dec = GraphDecoder(session, ops=ops)
        eos = model.generation_config.eos_token_id
        out = dec.generate(ids, max_new_tokens=24, eos_token_id=eos).cpu()
        assert dec.graph is not None
        again = dec.generate(ids, max_new_tokens=24, eos_token_id=eos).cpu()  # replays the same graph
    assert torch.equal(out, ref) and torch.equal(again, out)


@pytest.mark.gpu
def test_session_picks_the_captured_step_on_cuda_and_int4_matches_int4_eager() -> None:
    model = _cuda_model()
    ids = _prompt()
    with Session(model, _spec("cuda:0", 4, (2,), fmt="int4"), graphs=False) as eager:
        ref = eager.generate(ids, max_new_tokens=16)
    model = _cuda_model()
    with Session(model, _spec("cuda:0", 4, (2,), fmt="int4")) as session:
        out = session.generate(ids, max_new_tokens=16)
        assert session.stats().extra["decode"]["path"] == "graph"
    assert torch.equal(out.cpu(), ref.cpu())


@pytest.mark.gpu
def test_verified_ops_equal_torch_ops_bit_for_bit_on_fresh_inputs() -> None:
    pytest.importorskip("triton")
    from runtime.decode_ops import TorchOps, VerifiedOps

    dev = torch.device("cuda:0")
    ops = VerifiedOps(dev, torch.bfloat16, hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64, eps=1e-5)
    assert set(ops.report) == {"add_rms_norm", "rope_cache", "silu_mul", "greedy_tail"}
    gen = torch.Generator(device=dev).manual_seed(7)
    res, delta = (torch.randn(1, 1, 256, generator=gen, device=dev).bfloat16() for _ in range(2))
    w = torch.rand(256, generator=gen, device=dev).bfloat16()
    for a, b in zip(ops.add_rms_norm(delta, res, w, 1e-5), TorchOps.add_rms_norm(delta, res, w, 1e-5)):
        assert torch.equal(a, b)
    g, u = (torch.randn(1, 1, 512, generator=gen, device=dev).bfloat16() * 3 for _ in range(2))
    assert torch.equal(ops.silu_mul(g, u), TorchOps.silu_mul(g, u))


def test_static_kv_nbytes_is_what_the_decoder_charges() -> None:
    from runtime.decode_graph import static_kv_nbytes

    model = tiny_llama(layers=3)
    ids = _prompt(batch=2)
    with Session(model, _spec("cpu", 3), graphs=False) as session:
        dec = GraphDecoder(session, capture=False, ops="torch", bucket=8)
        dec.start(ids, max_new_tokens=20)
        assert dec._charged == static_kv_nbytes(model, batch=2, tokens=7 + 20, bucket=8)
        dec.close()
    assert static_kv_nbytes(torch.nn.Linear(2, 2), batch=1, tokens=8) == 0  # nothing it could capture


def _fused(model: torch.nn.Module) -> torch.nn.Module:
    """q/k/v and gate/up fused by the plan's fusion transform (one product each, members as slices)."""
    ctx = TransformContext()
    for i, _ in enumerate(model.model.layers):
        transform(model, FuseConfig("qkv"), fqn=f"model.layers.{i}.self_attn", context=ctx)
        transform(model, FuseConfig("gate-up"), fqn=f"model.layers.{i}.mlp", context=ctx)
    return model


@pytest.mark.parametrize("batch", [1, 2])
def test_step_of_a_fused_model_runs_one_product_per_group_and_gives_its_tokens(batch: int) -> None:
    model = _fused(tiny_llama(layers=3))
    ids = _prompt(batch=batch)
    ref = greedy(model, ids, 20)  # the fused model's own forward
    with Session(model, _spec("cpu", 3), graphs=False) as session:
        dec = GraphDecoder(session, capture=False, ops="torch", bucket=8)
        products = dec._products(model.model.layers[0])
        assert products[0] is model.model.layers[0].self_attn.qkv_proj.linear and len(products) == 4
        out = dec.generate(ids, max_new_tokens=20, eos_token_id=model.generation_config.eos_token_id)
        dec.close()
    assert torch.equal(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("streamed", [(), (1, 2)])
def test_captured_step_of_a_fused_model_gives_its_eager_tokens_on_cuda(streamed: tuple[int, ...]) -> None:
    pytest.importorskip("triton")
    model = _fused(_cuda_model())
    ids = _prompt(batch=1)
    ref = greedy(model.to("cuda"), ids.to("cuda"), 24).cpu()
    with Session(model, _spec("cuda:0", 4, streamed), graphs=False) as session:
        dec = GraphDecoder(session, ops="triton")
        out = dec.generate(ids, max_new_tokens=24, eos_token_id=model.generation_config.eos_token_id).cpu()
        assert dec.graph is not None
        dec.close()
    assert torch.equal(out, ref)


# ------------------------------------------------------------------------------------------- mixture of experts
def _tiny_mixtral(layers: int = 2, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, num_local_experts=4,
                        num_experts_per_tok=2, tie_word_embeddings=False, sliding_window=None)
    return MixtralForCausalLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("batch", [1, 2])
def test_step_of_a_mixtral_runs_its_own_router_and_experts_and_gives_its_tokens(batch: int) -> None:
    model = _tiny_mixtral()
    ids = _prompt(batch=batch)
    ref = greedy(model, ids, 20)
    with Session(model, _spec("cpu", 2), graphs=False) as session:
        dec = GraphDecoder(session, capture=False, ops="torch", bucket=8)
        mlp = model.model.layers[0].mlp
        assert dec._products(model.model.layers[0])[-2:] == [mlp.gate, mlp.experts]
        out = dec.generate(ids, max_new_tokens=20, eos_token_id=model.generation_config.eos_token_id)
        dec.close()
    assert torch.equal(out, ref)


def test_experts_that_route_on_the_host_or_stream_as_units_are_named() -> None:
    from runtime.decode_graph import unsupported_reason

    model = _tiny_mixtral()
    with Session(model, _spec("cpu", 2), graphs=False) as session:
        model.config._experts_implementation = "eager"  # transformers' loop over nonzero(): a host sync
        assert "experts implementation 'eager' routes on the host" in unsupported_reason(session)
    model = _tiny_mixtral()
    spec = SessionSpec(blocks=(BlockSpec(device="cpu"), BlockSpec(device="cpu", home="cpu")),
                       rest=BlockSpec(device="cpu"), granularity="module")
    with Session(model, spec, graphs=False) as session:
        # the check reads only devices: label everything CUDA to get past the device check to the unit check
        saved = session.rest_device, session.block_specs, [u.device for u in session.streamer.units]
        session.rest_device = torch.device("cuda:0")
        session.block_specs = [BlockSpec(device="cuda:0")] * 2
        for unit in session.streamer.units:
            unit.device = torch.device("cuda:0")
        reason = unsupported_reason(session)
        session.rest_device, session.block_specs = saved[0], saved[1]
        for unit, device in zip(session.streamer.units, saved[2]):
            unit.device = device
    assert "streams part of a mixture of experts" in reason


@pytest.mark.gpu
def test_session_captures_a_resident_mixtral_with_hugging_face_tokens() -> None:
    model = _tiny_mixtral(layers=3, dtype=torch.bfloat16)
    ids = _prompt(batch=1)
    ref = greedy(model.to("cuda"), ids.to("cuda"), 24).cpu()
    with Session(model, _spec("cuda:0", 3)) as session:
        out = session.generate(ids, max_new_tokens=24).cpu()
        decode = session.stats().extra["decode"]
    assert decode["path"] == "graph" and decode["captured"], decode
    assert torch.equal(out, ref)


# ------------------------------------------------------------------------------------------- parallel branches
def test_branches_off_cuda_run_in_order() -> None:
    from runtime.graph_branches import Branches

    calls: list[int] = []
    b = Branches(torch.device("cpu"), 3)
    assert b.streams == []
    assert b.run([lambda i=i: calls.append(i) or torch.tensor(i) for i in range(3)]) == [0, 1, 2]
    assert calls == [0, 1, 2]


@pytest.mark.gpu
def test_parallel_branches_and_l2_prefetch_give_the_sequential_step_bit_for_bit() -> None:
    pytest.importorskip("triton")
    model = _cuda_model(layers=3)
    ids = _prompt(batch=1)
    logits = []
    with Session(model, _spec("cuda:0", 3), graphs=False) as session:
        for branches, prefetch in ((True, False), (False, False), (True, True)):
            dec = GraphDecoder(session, branches=branches, l2_prefetch=prefetch)
            assert (dec.branches is not None) == branches and (dec.prefetch is not None) == prefetch
            dec.generate(ids, max_new_tokens=12)
            assert dec.graph is not None
            logits.append(dec.logits.clone())
            dec.close()
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


# ------------------------------------------------------------------------------------------- attention
def test_flash_attention_off_cuda_falls_back_to_masked_sdpa_and_says_why() -> None:
    with Session(tiny_llama(layers=2), _spec("cpu", 2), graphs=False) as session:
        dec = GraphDecoder(session, capture=False, ops="torch", attention="flash")
        assert not dec.use_flash and "CUDA only" in dec.attention_report
        with pytest.raises(Exception, match="`attention` must be 'sdpa' or 'flash', got 'fast'"):
            GraphDecoder(session, attention="fast")


@pytest.mark.gpu
def test_flash_attention_where_taken_gives_the_sdpa_steps_tokens() -> None:
    model = _cuda_model(layers=3)
    ids = _prompt(batch=1)
    ref = greedy(model.to("cuda"), ids.to("cuda"), 24).cpu()
    with Session(model, _spec("cuda:0", 3), graphs=False) as session:
        dec = GraphDecoder(session, attention="flash")
        # Hugging Face's generate stops at the model's EOS: so does this one (without it, 24 tokens past it)
        out = dec.generate(ids, max_new_tokens=24, eos_token_id=model.generation_config.eos_token_id).cpu()
        assert (dec.flash is not None) == dec.use_flash, dec.attention_report
        dec.close()
    assert torch.equal(out, ref)
