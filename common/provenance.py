"""What made a stage's outputs: a record beside them, so a rerun never reuses stale files.

Each stage's ``record.json`` (path from :meth:`Layout.record`) holds its *inputs*: the settings its
outputs depend on (declared in common/stages.py), a digest of each upstream stage's outputs (the
upstream record's inputs for a per-image stage, the handed-on network file for a training), and a
digest of the data (the data set's settings and every file's bytes). Before a
stage runs, :func:`begin` compares them with the stored record:

- equal: the stage runs as usual and skips what it already computed (seconds when nothing changed);
  a setting renamed since the record was written (config.RENAMED) is the same setting;
- different, per-image stage: its outputs are stale, so its folder is emptied and the stage redone;
- different, training: retraining would discard a trained network, so the run stops with a message
  naming what changed, unless ``runtime.overwrite`` (retrain) is set.

:func:`finish` marks the record complete; a downstream stage may only start from complete records.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

from common import files
from common.layout import Layout
from common.stages import BY_NAME, Stage
from config import ADDED, RENAMED


class StaleOutputs(RuntimeError):
    """A trained network was made from other inputs than the configuration now gives."""


class MissingInput(FileNotFoundError):
    """A stage's input is not there (or not finished): an earlier stage must run first."""


_digest_cache: dict[tuple, str] = {}


def _sha1(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    """sha1 of a file's bytes, cached by (path, size, mtime) within the process."""
    stat = path.stat()
    key = ("file", str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        sha = hashlib.sha1()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _digest_cache[key] = sha.hexdigest()
    return _digest_cache[key]


def _data_files(root: Path):
    """(relative path, stat) of every file under ``root``, sorted, hidden files aside: lock files
    and temporaries change without the data changing."""
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                yield str(path.relative_to(root)), path.stat()
            except OSError:
                continue


def tree_digest(root: Path, cache_file: Path | None = None) -> str:
    """Digest of every file's relative path and bytes under ``root``.

    Bytes, not modification times: a data set copied or provisioned again, file for file the same,
    keeps its digest, so the networks trained on it stay valid. Each file's sha1 is remembered in
    ``cache_file`` under its size and modification time, so only new or touched files are read
    again; an unchanged data set costs one stat per file."""
    root = Path(root)
    key = str(root.resolve())
    cache: dict = {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
    known = cache.get(key, {}) if isinstance(cache.get(key), dict) else {}
    seen: dict = {}
    entries = []
    for relative, stat in _data_files(root):
        remembered = known.get(relative)
        if isinstance(remembered, list) and remembered[:2] == [stat.st_size, stat.st_mtime_ns]:
            sha = remembered[2]
        else:
            sha = file_digest(root / relative)
        seen[relative] = [stat.st_size, stat.st_mtime_ns, sha]
        entries.append((relative, sha))
    if cache_file is not None and seen != known:
        cache[key] = seen
        files.write_text(Path(cache_file), json.dumps(cache, sort_keys=True))
    return _sha1(entries)  # relative paths: a moved or renamed project keeps its records


def _stat_tree_digest(root: Path) -> str:
    """The data digest records held before 2026-11-26 (paths, sizes and modification times); a
    record holding it still counts as made from this data while those are unchanged."""
    return _sha1([(relative, stat.st_size, stat.st_mtime_ns) for relative, stat in _data_files(Path(root))])


def _setting(cfg, key: str):
    """The value of ``section``, ``section.key`` or ``section.group.key``: a setting, or a section
    or group of them."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _flatten(key: str, value) -> dict:
    """{dotted key: value} of every setting under ``key``; one entry when ``value`` is a setting."""
    if not dataclasses.is_dataclass(value):
        return {key: value}
    flat: dict = {}
    for item in dataclasses.fields(value):
        flat.update(_flatten(f"{key}.{item.name}", getattr(value, item.name)))
    return flat


def settings_of(cfg, stage: Stage) -> dict:
    """The settings a stage's outputs depend on, flattened to ``section.key`` (and
    ``section.group.key``) entries."""
    flat: dict = {}
    for key in stage.depends_on:
        flat.update(_flatten(key, _setting(cfg, key)))
    for ignored in stage.ignores:
        for key in [key for key in flat if key == ignored or key.startswith(ignored + ".")]:
            del flat[key]
    # a path setting names a file: what matters is the file
    for key in (
        "saliency.checkpoint",
        "saliency.weights_path",
        "classifier.weights_path",
        "deeplab.weights_path",
        "deeplab.segmentation_weights_path",
        "deeplab.init_checkpoint",
    ):
        if flat.get(key):
            flat[key] = {"path": flat[key], "sha1": file_digest(cfg.path(flat[key]))}
    return flat


def data_digest(cfg, which: str | None, by_times: bool = False) -> str | None:
    """Digest of the data a stage reads (``which``: its Stage.data) and the settings that choose
    it; ``by_times``: the form older records hold (:func:`_stat_tree_digest`)."""
    if which is None:
        return None

    def tree(root: str) -> str:
        path = cfg.path(root)
        return _stat_tree_digest(path) if by_times else tree_digest(path, Layout(cfg).data_digests())

    if which == "saliency_data":
        roots = [cfg.saliency.train_root, cfg.saliency.val_root]
        if not any(roots):  # the synthetic saliency set, fixed by the generator's settings
            return _sha1(["synthetic", cfg.synthetic.__dict__])
        return _sha1([tree(r) if r else None for r in roots])
    parts = [cfg.dataset.__dict__, cfg.class_names, tree(cfg.dataset.root)]
    if cfg.dataset.train_list:
        parts.append(file_digest(cfg.path(cfg.dataset.train_list)))
    if cfg.dataset.kind == "synthetic":
        parts.append(cfg.synthetic.__dict__)
    return _sha1(parts)


def read_record(cfg, stage: Stage) -> dict | None:
    path = Layout(cfg).record(stage)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"inputs": None, "complete": False}  # unreadable: treated as made by something else


def output_digest(cfg, name: str) -> str:
    """What downstream stages depend on from stage ``name``: its handed-on network (trainings; or
    the configured ready network) or its record's inputs (per-image stages)."""
    stage = BY_NAME[name]
    layout = Layout(cfg)
    if stage.trains:
        network = layout.handed_on(stage, cfg)
        if network is None:
            raise MissingInput(
                f"{stage.name} has not trained a network yet "
                f"({layout.outputs(stage)} holds no best.pt or last.pt): run {stage.name} first"
            )
        return file_digest(network)
    record = read_record(cfg, stage)
    if record is None or not record.get("complete"):
        state = "did not finish" if record else "has not run"
        raise MissingInput(
            f"{stage.name} {state} ({layout.record(stage)}): run it first (python main.py --stages {stage.name})"
        )
    return _sha1(record["inputs"])


def inputs_of(cfg, stage: Stage) -> dict:
    """What a stage's outputs depend on, as JSON gives it back (tuples as lists, paths as text), so
    a stored record and a fresh one compare equal exactly when nothing changed."""
    inputs = {
        "settings": settings_of(cfg, stage),
        "upstream": {name: output_digest(cfg, name) for name in stage.upstream(cfg)},
        "data": data_digest(cfg, stage.data),
    }
    return json.loads(json.dumps(inputs, default=str))


def check_inputs(cfg, stages: list[str]) -> None:
    """Preflight: every upstream output a selected stage reads, and no selected stage makes, is
    there, finished, and made from what this configuration gives that stage; raises
    :class:`MissingInput` naming the stage to run (again) first."""
    selected = set(stages)
    checked: set[str] = set()
    for name in stages:
        for upstream in BY_NAME[name].upstream(cfg):
            if upstream in selected or upstream in checked:
                continue
            checked.add(upstream)
            try:
                output_digest(cfg, upstream)
                record = read_record(cfg, BY_NAME[upstream])
                if record is not None:  # a network placed by hand has none: taken as it is
                    if not record.get("complete"):
                        raise MissingInput(
                            f"{upstream} did not finish ({Layout(cfg).record(BY_NAME[upstream])}): "
                            f"run it again (python main.py --stages {upstream})"
                        )
                    # outputs made outside the stage (record_made_elsewhere) are taken as they are
                    made_here = isinstance(record.get("inputs"), dict) and "settings" in record["inputs"]
                    changed = []
                    if made_here:
                        current = inputs_of(cfg, BY_NAME[upstream])
                        changed = _changes(_as_current(cfg, BY_NAME[upstream], record["inputs"], current), current)
                    if changed:
                        raise MissingInput(
                            f"{upstream}'s outputs were made from other inputs than this "
                            f"configuration gives it (changed: {', '.join(changed)}): run it "
                            f"again (python main.py --stages {upstream},{name})"
                        )
            except MissingInput as err:
                raise MissingInput(f"{name} reads the outputs of {upstream}, but {err}") from None


def _as_current(cfg, stage: Stage, inputs, current: dict):
    """A record's inputs as this version of the code writes them, so that a difference of form
    alone changes nothing: settings renamed since the record was written (config.RENAMED) under
    their new names, settings added since then (config.ADDED) at the value that does what the code
    did before, and a data digest of the older form (sizes and times) that still matches the
    data as the current one. ``current``: :func:`inputs_of` the stage now."""
    if not isinstance(inputs, dict) or not isinstance(inputs.get("settings"), dict):
        return inputs
    settings = {RENAMED.get(key, key): value for key, value in inputs["settings"].items()}
    for key, before in ADDED.items():
        if key not in settings and key in current["settings"]:
            settings[key] = before
    inputs = {**inputs, "settings": settings}
    # the older form is worked out (a walk over the data) only for a digest that differs
    if inputs.get("data") not in (None, current["data"]) and inputs["data"] == data_digest(
        cfg, stage.data, by_times=True
    ):
        inputs["data"] = current["data"]
    return inputs


def _changes(old: dict | None, new: dict) -> list[str]:
    if not old:
        return ["(no readable record)"]
    changed = [
        key
        for key in sorted(set(old.get("settings", {})) | set(new["settings"]))
        if old.get("settings", {}).get(key) != new["settings"].get(key)
    ]
    changed += [
        f"outputs of {name}"
        for name in sorted(set(old.get("upstream", {})) | set(new["upstream"]))
        if old.get("upstream", {}).get(name) != new["upstream"].get(name)
    ]
    if old.get("data") != new["data"]:
        changed.append("the data set's files or settings")
    return changed


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _empty(folder: Path) -> None:
    if folder.is_symlink():
        raise StaleOutputs(
            f"{folder} is a link to outputs made elsewhere and its inputs changed; "
            "remove the link or point the stage at its own folder"
        )
    if folder.is_dir():
        shutil.rmtree(folder)


def begin(cfg, name: str) -> dict:
    """Compare a stage's inputs with its record before it runs (module docstring); returns
    ``{"redone": [what changed] or []}``. Call on one process only (rank 0)."""
    stage = BY_NAME[name]
    if not stage.active(cfg):
        return {"redone": []}
    layout = Layout(cfg)
    inputs = inputs_of(cfg, stage)
    record = read_record(cfg, stage)
    changed: list[str] = []
    if stage.trains and cfg.runtime.overwrite:
        # training starts from scratch: the old network must not be handed on meanwhile
        for which in ("best", "last"):
            layout.checkpoint(stage.checkpoint_folder, which).unlink(missing_ok=True)
    stored = _as_current(cfg, stage, record.get("inputs"), inputs) if record is not None else None
    if record is not None and stored == inputs:
        # the record stays as written, old names and digests and all: the stages after this one hold
        # its digest
        inputs = record["inputs"]
    elif record is not None:
        changed = _changes(stored, inputs)
        if stage.trains:
            if not cfg.runtime.overwrite and layout.trained_network(stage.checkpoint_folder) is not None:
                raise StaleOutputs(
                    f"{layout.outputs(stage)} was trained from other inputs than this configuration gives "
                    f"(changed: {', '.join(changed)}); retrain it from scratch (the network there is "
                    f"replaced) with: --stages {name},... --set runtime.overwrite=true (runtime.overwrite "
                    f"recomputes every selected stage), or keep both with runtime.experiment=NAME"
                )
        else:
            print(
                f"{name}: its inputs changed since {layout.outputs(stage)} was made ({', '.join(changed)}): redoing it",
                flush=True,
            )
            _empty(layout.outputs(stage))
            _empty(layout.run_dir(name))
    files.write_text(
        layout.record(stage),
        json.dumps({"stage": name, "inputs": inputs, "complete": False, "started": _now()}, indent=2, default=str),
    )
    return {"redone": changed}


def finish(cfg, name: str) -> None:
    """Mark the stage's outputs complete (downstream stages may now read them)."""
    stage = BY_NAME[name]
    if not stage.active(cfg):
        return
    path = Layout(cfg).record(stage)
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(complete=True, finished=_now())
    files.write_text(path, json.dumps(record, indent=2, default=str))


def record_made_elsewhere(cfg, name: str, inputs: dict, complete: bool = True) -> None:
    """The record of outputs made outside the stage (labels written by hand or by a self-training
    round): ``inputs`` says what they were made from, so stages reading them notice a change."""
    files.write_text(
        Layout(cfg).record(BY_NAME[name]),
        json.dumps({"stage": name, "inputs": inputs, "complete": complete, "finished": _now()}, indent=2, default=str),
    )
