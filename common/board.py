"""Tensorboard writers, one folder per stage, each starting with the resolved config."""

from __future__ import annotations

import json
import math

from torch.utils.tensorboard import SummaryWriter

from common import files
from common.layout import Layout


def open_writer(cfg, stage: str, fresh: bool = False) -> SummaryWriter:
    """A SummaryWriter in runs/<stage>/ that has the resolved config as text and in config.json.

    ``fresh``: a training that starts again from step 0 (nothing to resume, or runtime.overwrite).
    The events of the earlier training are removed first: they describe a network that no longer
    exists, and tensorboard (and the benchmark's curves) would draw the two as one run."""
    run_dir = Layout(cfg).run_dir(stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for old_events in run_dir.glob("events.out.tfevents.*"):
            old_events.unlink()
    text = cfg.to_json()
    files.write_text(run_dir / "config.json", text)
    writer = SummaryWriter(log_dir=str(run_dir))
    writer.add_text("config", "```\n" + text + "\n```", 0)
    return writer


def json_safe(value):
    """``value`` with every NaN or infinite float (a class without pixels, say) as None, which JSON
    can hold; dicts and lists are converted throughout."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(cfg, stage: str, name: str, payload: dict) -> None:
    """A JSON report next to the stage's tensorboard events (runs/<stage>/<name>.json); NaN and
    infinite values are written as null (json.dumps would write NaN, which is not JSON)."""
    files.write_text(Layout(cfg).run_dir(stage) / f"{name}.json", json.dumps(json_safe(payload), indent=2))


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def _flat_settings(prefix: str, values: dict) -> dict:
    """{"section.key": value} of a section, a group of settings in it as "section.group.key"."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_settings(f"{prefix}.{key}", value))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def write_hparams(cfg, stage: str, summary: dict) -> None:
    """The configuration and the stage's final numbers as tensorboard hparams, in runs/<stage>/ itself
    (so each experiment and stage is one run that the HParams tab can compare)."""
    from torch.utils.tensorboard.summary import hparams

    flat = {
        key: _hparam_value(value)
        for section, values in cfg.to_dict().items()
        if isinstance(values, dict)
        for key, value in _flat_settings(section, values).items()
    }
    flat["class_names"] = ",".join(cfg.class_names)
    metrics = {
        f"final/{key}": float(value)
        for key, value in summary.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }
    run_dir = Layout(cfg).run_dir(stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(run_dir))
    for summary_proto in hparams(flat, metrics):
        writer.file_writer.add_summary(summary_proto)
    for key, value in metrics.items():
        writer.add_scalar(key, value, 0)
    writer.close()
