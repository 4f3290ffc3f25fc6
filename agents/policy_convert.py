"""Convert an old pickled ``policy.zip`` into ``policy.safetensors`` + ``network`` — only on explicit opt-in.

    python -m agents.policy_convert policies/cpu --trust-pickle

Unpickling runs whatever code the file names, so this reads a ``policy.zip`` only when the user says they
trust the file (``--trust-pickle``), once; afterwards the folder loads as data (``agents.policy_store``) and
the zip can be deleted. Without the flag it exits 2 with the reason.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.policy_io import POLICY_TYPE, POLICY_VERSION, PolicyError, write_meta
from agents.policy_store import PICKLED, save_network
from autosurgeon.files.envelope import unwrap


def convert(folder: str | Path, *, trust_pickle: bool = False) -> Path:
    """Write ``policy.safetensors`` and the ``network`` entry of policy.json from ``folder/policy.zip``."""
    from sb3_contrib import MaskablePPO


    folder = Path(folder)
    if not trust_pickle:
        raise PolicyError(f"converting {str(folder / PICKLED)!r} unpickles it, which can run code; pass "
                          "--trust-pickle if you trust where the file came from, or retrain the policy.")
    if not (folder / PICKLED).is_file() or not (folder / "policy.json").is_file():
        raise PolicyError(f"`FOLDER` {str(folder)!r} holds no policy.zip + policy.json to convert; give a policy "
                          "folder written by an older `autosurgeon train`.")
    meta = unwrap((folder / "policy.json").read_text(), type_name=POLICY_TYPE, version=POLICY_VERSION,
                  what="policy", source=str(folder / "policy.json"), fix="retrain the policy", error=PolicyError)
    model = MaskablePPO.load(folder / PICKLED, device="cpu")  # the opted-in unpickle
    _, network = save_network(folder, model.policy)
    write_meta(folder, {**meta, "network": network})
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.policy_convert", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a policy folder holding policy.zip + policy.json")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="unpickle policy.zip (this runs code the file names: only for files you trust)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.folder, trust_pickle=args.trust_pickle)
    except PolicyError as exc:
        print(f"policy_convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {out}: policy.safetensors written; policy.zip is no longer read and may be deleted")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
