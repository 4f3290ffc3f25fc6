"""TensorBoard event files for a sweep: per-generation scalars, the front as HParams runs, image and projector.

Layout under a sweep's ``runs/NAME/tb/`` (``tensorboard --logdir runs`` shows every sweep side by side):

* ``tb/`` — :class:`TensorBoardRecorder`: ``front/hypervolume`` per evaluation (step = evaluations done,
  the baselines evaluated first included), ``front/best_<objective>`` and ``front/evaluations`` per
  generation (step = generation);
* ``tb/front/`` — written whole by :func:`write_front_events` (it removes and rewrites the folder, so a
  resumed sweep's last call is the one shown, never duplicates): the front figure as an image summary
  (``front/figure``), the objective vectors in the Projector (``projector_config.pbtxt`` with a
  ``tensor_path`` TSV and a metadata TSV, via ``SummaryWriter.add_embedding``: no checkpoint needed);
* ``tb/front/<plan id>/`` — one HParams session per front member and per baseline (the unmodified model
  included), named by the plan's id, with an ``Origin`` column, the knobs as the leading columns and the
  objectives in ms / MiB / mJ labelled ``[measured]``/``[estimated]`` (``experiments.reporting.hparams``);
  no experiment summary, so sweeps sharing a logdir keep their own columns.

``torch.utils.tensorboard`` is imported inside the functions: importing this module stays cheap.
"""
from __future__ import annotations

import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

FRONT_SUBDIR = "front"
FIGURE_TAG = "front/figure"
EMBEDDING_TAG = "front"


class TensorBoardRecorder:
    """Per-generation front scalars for one sweep, written with ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the events folder (a sweep uses ``runs/NAME/tb``).
        purge_step: on ``--resume``, the first generation that will be logged again: TensorBoard then
            drops the events at and after it that the interrupted run wrote (``SummaryWriter(purge_step=)``).
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def on_evaluation(self, n_evals: int, *, hypervolume: float) -> None:
        """Log ``front/hypervolume`` at step ``n_evals`` (evaluations done, seeds included): one point each."""
        if not isinstance(n_evals, (int, np.integer)) or n_evals < 1:
            raise InvalidArgumentError(f"`n_evals` must be an integer >= 1, got {n_evals!r}.")
        self._writer.add_scalar("front/hypervolume", float(hypervolume), int(n_evals))

    def on_generation(self, gen: int, *, best: Mapping[str, float], n_evals: int,
                      hypervolume: float | None = None) -> None:
        """Log ``front/best_<objective>`` (minimised values) and ``front/evaluations`` at step ``gen``;
        ``hypervolume`` (given) as ``front/hypervolume_by_generation`` (``front/hypervolume`` is per evaluation)."""
        if not isinstance(gen, (int, np.integer)) or gen < 0:
            raise InvalidArgumentError(f"`gen` must be an integer >= 0, got {gen!r}.")
        w = self._writer
        if hypervolume is not None:
            w.add_scalar("front/hypervolume_by_generation", float(hypervolume), int(gen))
        for name, value in best.items():
            w.add_scalar(f"front/best_{name}", float(value), int(gen))
        w.add_scalar("front/evaluations", float(n_evals), int(gen))
        w.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def png_summary(tag: str, png: bytes) -> Any:
    """An image ``Summary`` holding the PNG bytes as they are (no decode/re-encode)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise InvalidArgumentError(f"image for {tag!r} is not a PNG file.")
    width, height = struct.unpack(">II", png[16:24])  # IHDR: the first chunk, fixed offsets
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def write_front_events(tb_dir: Path, *, names: Sequence[str], records: Sequence[Mapping[str, Any]],
                       front_idx: Sequence[int], figure_png: Path | None = None, sweep: str = "",
                       power: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """(Re)write ``tb_dir/front``: image, projector and one HParams session per front member and baseline."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments.reporting.hparams import write_sessions
    from experiments.sweep.ids import origin, record_id

    front_dir = Path(tb_dir) / FRONT_SUBDIR
    if front_dir.exists():
        shutil.rmtree(front_dir)
    members = [records[i] for i in front_idx]
    out: dict[str, Path] = {"tb_front": front_dir}
    with SummaryWriter(log_dir=str(front_dir)) as writer:
        if figure_png is not None:
            writer.file_writer.add_summary(png_summary(FIGURE_TAG, Path(figure_png).read_bytes()), 0)
        if members:
            raw = np.array([[float(v) for v in r["objectives"]] for r in members], dtype=np.float64)
            # Min-max per objective: seconds and bytes differ by many decades; unscaled, the projector's PCA
            # would show the memory axis only. The raw values travel in the metadata.
            lo, hi = raw.min(axis=0), raw.max(axis=0)
            scaled = (raw - lo) / np.where(hi > lo, hi - lo, 1.0)
            header = ["id", "eval", "origin", *names]
            meta = [[record_id(r), r.get("eval", ""), origin(r), *[f"{v:.6g}" for v in row]]
                    for r, row in zip(members, raw)]
            writer.add_embedding(scaled.astype(np.float32), metadata=meta, metadata_header=header,
                                 tag=EMBEDDING_TAG, global_step=0)
            out["projector_config"] = front_dir / "projector_config.pbtxt"
    runs = write_sessions(front_dir, names=names, records=records, front_idx=front_idx,
                          sweep=sweep or Path(tb_dir).parent.name, power=power)
    logger.info("tensorboard: front of %d members, %d HParams sessions in %s", len(members), len(runs), front_dir)
    return out


__all__ = ["EMBEDDING_TAG", "FIGURE_TAG", "FRONT_SUBDIR", "TensorBoardRecorder", "png_summary",
           "write_front_events"]
