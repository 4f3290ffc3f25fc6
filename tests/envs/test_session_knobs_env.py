"""SurgeryEnv with session knobs (opt-in): both env checkers pass, the default layout is exactly as before,
the session unit is the last step with the space's masks and reasons, and a policy trained with session knobs
applies to a plan carrying session decisions while one trained without them still applies."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agents.apply import apply_policy
from agents.policy_io import PolicyError, load_policy, read_meta
from agents.ppo import PPOSettings, train
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import SESSION_KNOBS, SESSION_UNIT
from autosurgeon.space.session import KV_BUDGET_CHOICES, KV_WINDOW_CHOICES, PREFETCH_DEPTH_CHOICES
from envs.observation import ACTION_KNOBS, MAX_CHOICES, SESSION_MAX_CHOICES, ObservationLayout, layout_for
from envs.surgery import SurgeryEnv

MODEL = "tiny-llama-test"
SESSION = ("precision", "placement", *SESSION_KNOBS)
SOME = ("precision", "placement", "kv_precision", "kv_budget", "prefetch_depth")
SMALL = PPOSettings(n_steps=64, batch_size=64, n_epochs=1)


@pytest.fixture(scope="module")
def env() -> SurgeryEnv:
    return SurgeryEnv(models=MODEL, device="local", evaluator="analytic", knobs=SESSION)


@pytest.fixture(scope="module")
def default_env() -> SurgeryEnv:
    return SurgeryEnv(models=MODEL, device="local", evaluator="analytic")


def test_env_checkers_with_session_knobs(env: SurgeryEnv) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    gym_check(env, skip_render_check=True)
    sb3_check(env, warn=True)


def test_default_layout_is_unchanged(env: SurgeryEnv, default_env: SurgeryEnv) -> None:
    # The layout policies were trained with: 18 unit + 4 hardware + 6 totals + 38 previous action + 3 preference.
    assert default_env.layout == ObservationLayout() == layout_for(("precision", "placement"))
    assert ObservationLayout().size == 69 and ObservationLayout().session_knobs == ()
    assert list(default_env.action_space.nvec) == [6, 7, 4, 16, 3, 2]
    assert default_env.observation_space.shape == (69,)
    assert layout_for(("precision", "placement", "kernel", "fusion", "layout", "group_size")) == ObservationLayout()
    # Default unit features: bit for bit what they were (SearchSpace.features() columns, then has_* flags).
    space, units = default_env.ctx.space, default_env.ctx.units
    feats, names = space.features()
    before = [[*(feats[u.variables[0], names.index(n)] for n in ObservationLayout().unit[:10]),
               *(float(k in u.knobs) for k in ACTION_KNOBS), 0.0, 0.0] for u in units]
    np.testing.assert_array_equal(default_env.ctx.unit_features, np.asarray(before, dtype=np.float32))
    # The session env: the same module units, in the same order, then one more.
    assert env.ctx.units[:-1] == default_env.ctx.units
    # Its module-unit features are the default ones, the session flags 0.
    cols = [env.layout.unit.index(n) for n in ObservationLayout().unit]
    np.testing.assert_array_equal(env.ctx.unit_features[:-1, cols], default_env.ctx.unit_features)
    extra = [j for j, n in enumerate(env.layout.unit) if n not in ObservationLayout().unit]
    assert [env.layout.unit[j] for j in extra] == ["kind_session", *[f"has_{k}" for k in SESSION_KNOBS]]
    assert not env.ctx.unit_features[:-1, extra].any()


def test_session_layout_sizes_follow_the_space(env: SurgeryEnv) -> None:
    assert SESSION_MAX_CHOICES == {"kv_precision": 3, "kv_budget": len(KV_BUDGET_CHOICES), "kv_tier": 2,
                                   "kv_window": len(KV_WINDOW_CHOICES), "prefetch": 5,
                                   "prefetch_depth": len(PREFETCH_DEPTH_CHOICES)}
    assert list(env.action_space.nvec) == [6, 7, 4, 16, 3, 2, 3, 4, 2, 5, 5, 5]
    assert env.layout.session_knobs == SESSION_KNOBS
    assert env.observation_space.shape == (ObservationLayout().size + 1 + 6 + 24,)
    space = env.ctx.space
    for v in space.variables:
        if v.name == SESSION_UNIT:
            assert v.n == SESSION_MAX_CHOICES[v.knob]
    # Only the session knobs named, in SESSION_KNOBS order, whatever order they were given in.
    some = layout_for(("prefetch_depth", "precision", "kv_budget", "placement", "kv_precision"))
    assert some.action_knobs == (*ACTION_KNOBS, "kv_precision", "kv_budget", "prefetch_depth")
    assert some.max_choices == (*[MAX_CHOICES[k] for k in ACTION_KNOBS], 3, 4, 5)


def test_session_unit_is_the_last_step_with_masks_and_reasons(env: SurgeryEnv) -> None:
    unit = env.ctx.units[-1]
    assert unit.name == SESSION_UNIT and unit.knobs == SESSION_KNOBS
    assert all(SESSION_UNIT != u.name for u in env.ctx.units[:-1])
    row = env.ctx.unit_features[-1]
    assert row[env.layout.unit.index("kind_session")] == 1.0 and row[env.layout.unit.index("position")] == 1.0
    env.reset(seed=1, options={"budget_fraction": 1.0})  # the unmodified model's memory: the shield drops nothing
    for _ in env.ctx.units[:-1]:
        env.step(np.zeros(len(env.layout.action_knobs), dtype=np.int64))
    mask = env.action_masks()
    offsets = dict(zip(env.layout.action_knobs, np.cumsum([0, *env.layout.max_choices[:-1]])))
    # Module knobs the session unit lacks: index 0 only.
    for knob in ACTION_KNOBS:
        o = offsets[knob]
        assert mask[o] and not mask[o + 1:o + MAX_CHOICES[knob]].any()
    space = env.ctx.space
    reasons = env.action_mask_reasons()
    assert set(reasons) == set(SESSION_KNOBS)
    for i in unit.variables:
        v = space.variables[i]
        static, why = space.allowed(i, env.x)
        np.testing.assert_array_equal(mask[offsets[v.knob]:offsets[v.knob] + v.n], static)
        assert set(reasons[v.knob]) == {str(c) for c, ok in zip(v.choices, static) if not ok}
    # tiny-llama-test is dense: only prefetch "none" (index 0), with the space's reason.
    assert list(mask[offsets["prefetch"]:offsets["prefetch"] + 4]) == [True, False, False, False]
    assert "mixture-of-experts" in reasons["prefetch"]["markov"]
    if not resolve_profile("local").gpus:  # KV pages on a GPU need one
        assert "no GPU unit" in reasons["kv_tier"]["gpu"]


def test_an_episode_decides_the_session(env: SurgeryEnv) -> None:
    env.reset(seed=3, options={"budget_fraction": 1.0})
    done = False
    while not done:
        mask = env.action_masks()
        offsets = np.cumsum([0, *env.layout.max_choices[:-1]])
        # The last valid choice of each knob: far from the unmodified one.
        action = [int(np.flatnonzero(mask[o:o + n])[-1]) for o, n in zip(offsets, env.layout.max_choices)]
        _, _, done, _, info = env.step(action)
    assert info["repaired"] == 0
    session = env.plan().session
    assert set(session) == set(SESSION_KNOBS)
    assert session["kv_window"] == KV_WINDOW_CHOICES[-1] and session["prefetch"] == "none"
    env.reset(seed=3)
    with pytest.raises(ValueError, match=r"`action` must have 12 entries \(placement, .*, prefetch_depth\)"):
        env.step(np.zeros(6, dtype=np.int64))  # a default-layout action


def test_an_image_model_keeps_kv_entries_at_index_0() -> None:
    env = SurgeryEnv(models="digits-cnn", device="local", knobs=SOME)
    assert env.ctx.units[-1].name == SESSION_UNIT and env.ctx.units[-1].knobs == ("prefetch_depth",)
    env.reset(seed=0, options={"budget_fraction": 1.0})
    for _ in env.ctx.units[:-1]:
        env.step(np.zeros(len(env.layout.action_knobs), dtype=np.int64))
    mask = env.action_masks()
    offsets = dict(zip(env.layout.action_knobs, np.cumsum([0, *env.layout.max_choices[:-1]])))
    for knob in ("kv_precision", "kv_budget"):
        o = offsets[knob]
        assert mask[o] and not mask[o + 1:o + SESSION_MAX_CHOICES[knob]].any()


# ---------------------------------------------------------------------------------------------- train / apply
@pytest.fixture(scope="module")
def session_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("session-policy")
    result = train(device="local", models=[MODEL], timesteps=64, out=out, n_envs=1, knobs=SOME, settings=SMALL,
                   hv_every=10_000, checkpoint_every=10_000)
    assert result.timesteps == 64
    return out


@pytest.fixture(scope="module")
def default_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default-policy")
    train(device="local", models=[MODEL], timesteps=64, out=out, n_envs=1, settings=SMALL, hv_every=10_000,
          checkpoint_every=64)
    return out


def test_session_policy_records_its_layout_and_applies(session_policy: Path) -> None:
    meta = read_meta(session_policy)
    assert meta["knobs"] == list(SOME)
    assert meta["layout"] == layout_for(SOME).to_dict() != ObservationLayout().to_dict()
    assert meta["layout"]["action_knobs"][-3:] == ["kv_precision", "kv_budget", "prefetch_depth"]
    model, _ = load_policy(session_policy)
    assert list(model.action_space.nvec) == list(layout_for(SOME).max_choices)
    result = apply_policy(session_policy, MODEL, device="local", evaluator="analytic")
    assert set(result.plan.session) == {"kv_precision", "kv_budget", "prefetch_depth"}
    x = result.space.encode(result.plan)  # every value is a choice of the space (encode raises otherwise)
    assert result.space.is_valid(x) and result.space.decode(x).session == result.plan.session
    assert result.metrics.evaluator == "analytic" and result.metrics.latency_s > 0


def test_default_policy_still_applies(default_policy: Path) -> None:
    meta = read_meta(default_policy)
    assert meta["layout"] == ObservationLayout().to_dict()
    result = apply_policy(default_policy, MODEL, device="local", evaluator="analytic")
    assert result.plan.session == {}


def test_a_mismatched_layout_is_refused(session_policy: Path, default_policy: Path, tmp_path: Path) -> None:
    # Knobs edited without the layout: the knobs give another layout than the one recorded.
    edited = tmp_path / "edited"
    shutil.copytree(session_policy, edited)
    doc = json.loads((edited / "policy.json").read_text())
    doc["_data"]["knobs"] = ["precision", "placement"]
    (edited / "policy.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match=r"another observation/action layout \(differs in .*action_knobs.*\) "
                                          r"\(saved actions .*kv_precision.*retrain"):
        apply_policy(edited, MODEL, device="local", evaluator="analytic")
    # Layout and knobs consistent, but the network is another one's: refused before any plan is made.
    swapped = tmp_path / "swapped"
    shutil.copytree(session_policy, swapped)
    shutil.copy(default_policy / "policy.safetensors", swapped / "policy.safetensors")
    with pytest.raises(PolicyError, match=r"policy.safetensors does not fit the architecture.*do not belong together"):
        load_policy(swapped)


def test_resume_with_other_knobs_is_refused(default_policy: Path) -> None:
    from autosurgeon.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"`--resume`: knobs \['precision', 'placement', 'kv_precision', .*"
                                                   r"differs from the checkpoint's \['precision', 'placement'\]"):
        train(device="local", models=[MODEL], timesteps=128, out=default_policy, resume=True, n_envs=1, knobs=SOME,
              settings=SMALL, hv_every=10_000)


def test_cli_train_and_apply_with_session_knobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autosurgeon.cli.apply import register as register_apply
    from autosurgeon.cli.train import register as register_train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register_train(sub)
    register_apply(sub)
    out = tmp_path / "policy"
    args = parser.parse_args(["train", "--device", "local", "--models", MODEL, "--timesteps", "64", "--out", str(out),
                              "--n-envs", "1", "--hv-every", "100000", "--knobs", "precision,placement,kv_precision"])
    assert args.func(args) == 0
    assert read_meta(out)["layout"] == layout_for(("precision", "placement", "kv_precision")).to_dict()
    plan = tmp_path / "plan.json"
    args = parser.parse_args(["apply", "--policy", str(out), "--model", MODEL, "--device", "local",
                              "--evaluator", "analytic", "--out", str(plan)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "session: kv_precision=" in printed
    assert "kv_precision" in json.loads(plan.read_text())["_data"]["session"]
