"""config.json: the resolved config a run was started with, checked when it resumes.

`save_config` writes it beside the checkpoints when a run starts (so the
analysis rebuilds the same run from the workdir alone) and, when the workdir
already holds one, refuses a config that would train differently.
"""

import hashlib
import json
import os
from typing import Any

import jax
import ml_collections

from diffusion_bias import files

# Where the twins run, not what they learn.
LAYOUT = ("training.twin_devices", "training.num_devices")

# Fields added after runs were saved without them, with the value that trains as
# those runs did: a saved config lacking one resumes under that value.
ADDED = {
    "model.dtype": "float32",
    "snapshots.include_last": True,
    "splits.seeds_per_split": 1,
    "diffusion.min_train_step": 1,
}


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `config.json`, or checks that a resumed run has the same config.

    Fields under `analysis` are not compared: they do not change training; nor
    is the device layout (`LAYOUT`): a run may resume on other devices, to the
    same numbers up to float reassociation. In a multi-process run every
    process checks, and process 0 alone writes.

    Raises:
        ValueError: the workdir holds a run with a different config; the
            message names the fields that differ.
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        # The analysis section and the device layout do not change what is trained.
        diffs = sorted(
            d
            for d in _diff(saved, current)
            if not d.startswith("analysis")
            and d not in LAYOUT
            and not (d in ADDED and _absent(saved, d) and _get(current, d) == ADDED[d])
        )
        if diffs:
            raise ValueError(
                f"{workdir} holds a run with a different config; differing fields: "
                f"{', '.join(diffs)}. Use a new --workdir, or the same config to resume."
            )
        return
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() != 0:
        # One writer: the others would each replace the same file.
        return
    with files.atomic_write(path) as f:
        json.dump(current, f, indent=2, sort_keys=True)


def training_fingerprint(saved: dict[str, Any]) -> str:
    """A digest of what a config dict trains: every field but the analysis and the layout.

    Two runs with the same fingerprint train the same twins (up to float
    reassociation), so their snapshots may share cached statistics.
    """
    saved = json.loads(json.dumps(saved))
    saved.pop("analysis", None)
    for dotted in LAYOUT:
        *parents, last = dotted.split(".")
        node = _get(saved, ".".join(parents))
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:16]


def load_config(workdir: str) -> dict[str, Any]:
    """The config dict saved by `save_config`."""
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


def _get(tree, dotted):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _absent(tree, dotted):
    *parents, last = dotted.split(".")
    node = _get(tree, ".".join(parents)) if parents else tree
    return isinstance(node, dict) and last not in node


def _diff(a, b, prefix=""):
    """The dotted names of the fields where the nested dicts `a` and `b` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")
