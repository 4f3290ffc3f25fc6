"""The budget shield's and the observation's incremental pricing give the masks and observations of the
from-scratch versions (``experiments.benchmarks.env_speed.ScratchShieldEnv``)."""
from __future__ import annotations

import numpy as np

from envs.surgery import SurgeryEnv
from experiments.benchmarks.env_speed import ScratchShieldEnv as _ScratchShield


def test_shield_masks_equal_the_scratch_shield() -> None:
    kw = {"models": ["tiny-llama-test", "digits-cnn", "tiny-moe-test"], "device": "jetson-orin-nano-8gb",
          "knobs": ("precision", "placement", "group_size"), "budget_range": (0.0, 0.6)}
    fast, slow, bare = SurgeryEnv(**kw), _ScratchShield(**kw), SurgeryEnv(**kw, budget_shield=False)
    rng = np.random.default_rng(0)
    steps = narrowed = 0
    for episode in range(9):
        for env in (fast, slow, bare):
            env.reset(seed=episode)
        done = False
        while not done:
            m_fast, m_slow = fast.action_masks(), slow.action_masks()
            np.testing.assert_array_equal(m_fast, m_slow)
            narrowed += int(not np.array_equal(m_fast, bare.action_masks()))
            action, off = [], 0
            for n in fast.layout.max_choices:
                action.append(int(rng.choice(np.nonzero(m_fast[off:off + n])[0])))
                off += n
            o_fast, r_fast, done, _, _ = fast.step(np.array(action))
            o_slow, r_slow, _, _, _ = slow.step(np.array(action))
            np.testing.assert_array_equal(o_fast, o_slow)
            bare.step(np.array(action))
            assert r_fast == r_slow
            steps += 1
    assert steps > 50 and narrowed > 5  # the shield did narrow masks on the way
