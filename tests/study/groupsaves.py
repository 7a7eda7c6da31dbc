"""Helpers of the vectorized-group tests: a group's checkpoints as a store would keep them."""

import io

import torch

from optimlab.study.vectorized import train_group


def checkpoints_of(configs, data, **kwargs):
    """Train the group; return its results and every (checkpoint, results) it reported, each
    checkpoint saved and loaded back with ``weights_only`` (tensors and plain values only)."""
    saved = []

    def keep(ckpt, results):
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        saved.append((torch.load(io.BytesIO(buffer.getvalue()), weights_only=True), results))

    group = train_group(configs, data=data, on_checkpoint=keep, **kwargs)
    return group, saved


def no_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]
