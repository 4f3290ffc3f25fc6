"""The budget shield's incremental pricing gives the masks the from-scratch footprint gives."""
from __future__ import annotations

import numpy as np

from autosurgeon.cost.footprint import plan_memory
from envs.surgery import SurgeryEnv


class _ScratchShield(SurgeryEnv):
    """The shield as it was: every candidate repaired and priced from scratch."""

    def _shield(self, i: int, mask: np.ndarray) -> np.ndarray:
        space, ctx = self.ctx.space, self.ctx
        undecided = [j for u in ctx.units[self.t:] for j in u.variables if j != i]
        y = self.x.copy()
        y[undecided] = ctx.smallest[undecided]
        memory = {}
        for c in np.nonzero(mask)[0]:
            y[i] = int(c)
            tiers = plan_memory(space, space.repair(y))
            memory[int(c)] = tiers.get("gpu", 0) + tiers.get("cpu", 0)
        if not memory:
            return mask
        ok = np.zeros_like(mask)
        for c, mem in memory.items():
            ok[c] = mem <= self.budget
        if not ok.any():
            ok[min(memory, key=lambda c: (memory[c], c))] = True
        return ok


def test_shield_masks_equal_the_scratch_shield() -> None:
    kw = dict(models=["tiny-llama-test", "digits-cnn", "tiny-moe-test"], device="jetson-orin-nano-8gb",
              knobs=("precision", "placement", "group_size"), budget_range=(0.0, 0.6))
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
            _, r_fast, done, _, _ = fast.step(np.array(action))
            _, r_slow, _, _, _ = slow.step(np.array(action))
            bare.step(np.array(action))
            assert r_fast == r_slow
            steps += 1
    assert steps > 50 and narrowed > 5  # the shield did narrow masks on the way
