"""Training checkpoints: one world-size- and backend-free format, atomic commits, background saves.

Modules: ``directory`` (step dirs, ``latest``, meta.json: the one owner of the layout), ``pieces`` (where a
rank's share of each logical tensor lives), ``elastic`` (the format's writer and reader), ``store``
(save / resume, async), ``queue`` (the SwAV queue as world-size-free state), ``rng``.
"""

from bigseer.checkpoint.directory import FORMATS, LATEST, find_latest, read_meta, step_dirname
from bigseer.checkpoint.pieces import Piece
from bigseer.checkpoint.store import CheckpointWriter, load_checkpoint, read_trainer_state, save_checkpoint

__all__ = ["FORMATS", "LATEST", "CheckpointWriter", "Piece", "find_latest", "load_checkpoint", "read_meta",
           "read_trainer_state", "save_checkpoint", "step_dirname"]
