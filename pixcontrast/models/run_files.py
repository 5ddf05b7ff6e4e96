"""Which training run writes a checkpoint: the hint behind the error for a checkpoint that does not exist yet.

``pixcontrast fit`` writes ``<trainer.default_root_dir>/checkpoints/last.ckpt``; a config that starts from such a
file (e.g. ``weights_path: runs/synthetic_pretrain/checkpoints/last.ckpt``) needs that run first. The config
that writes it is found among the YAML files of ``configs`` under the working directory and the bundled configs.
"""

from __future__ import annotations

from pathlib import Path

from pixcontrast.bundled_configs import CONFIG_DIR

LOCAL_CONFIG_FOLDER = "configs"


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run folder of a Lightning checkpoint path ``<run>/checkpoints/<name>.ckpt``, else None."""
    path = Path(checkpoint)
    if path.suffix != ".ckpt" or path.parent.name != "checkpoints":
        return None
    return path.parent.parent


def find_writing_config(checkpoint: str | Path, cwd: str | Path | None = None) -> str | None:
    """The ``--config`` value of the config whose ``trainer.default_root_dir`` is the run folder of ``checkpoint``,
    else None: a config in :data:`LOCAL_CONFIG_FOLDER` under ``cwd`` (default: the working directory) by its path
    relative to ``cwd``, else a bundled config by its name. Reads only small YAML files."""
    import yaml

    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return None
    cwd = Path.cwd() if cwd is None else Path(cwd)
    target = (cwd / run_dir).resolve()
    local = sorted((cwd / LOCAL_CONFIG_FOLDER).glob("*.yaml"))
    for config in [*local, *sorted(CONFIG_DIR.glob("*.yaml"))]:
        try:
            content = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError):
            continue
        trainer = content.get("trainer") if isinstance(content, dict) else None
        root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
        if isinstance(root, str) and (cwd / root).resolve() == target:
            return config.relative_to(cwd).as_posix() if config in local else config.stem
    return None


def missing_checkpoint_hint(checkpoint: str | Path) -> str:
    """A sentence saying how to create ``checkpoint`` (empty when it is no run's checkpoint)."""
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return ""
    config = find_writing_config(checkpoint)
    if config is not None:
        return f"; it is written by `pixcontrast fit --config {config}`: run that first"
    return (
        f"; it is the checkpoint of a training run with trainer.default_root_dir={run_dir.as_posix()}: "
        "run `pixcontrast fit --config <that config>` first"
    )
