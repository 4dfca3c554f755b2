"""Model configurations: Hydra config files in ``config/models/<name>.yaml``, composed with overrides.

Each trainable network has one YAML file holding its defaults (with the paper
each number comes from). Rules and users change values with Hydra override
strings (``train.max_steps=200``, ``+extra.key=1``) or with an override file
(a YAML mapping of dotted keys to values, as written by a sweep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

#: ``config/models`` of the checkout this package was imported from.
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "models"


def overrides_from_file(path: str | Path) -> list[str]:
    """Hydra override strings from a YAML mapping ``{dotted.key: value}``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: an override file must be a mapping of dotted keys to values")
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in data.items()]


def load_model_config(name: str, overrides: Iterable[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``<config_dir>/<name>.yaml`` with Hydra ``overrides``.

    Raises:
        FileNotFoundError: no such config file.
        ValueError: an override names a key the config does not have (a typo), or is malformed.
    """
    config_dir = Path(config_dir or DEFAULT_CONFIG_DIR).resolve()
    if not (config_dir / f"{name}.yaml").is_file():
        raise FileNotFoundError(f"{config_dir / (name + '.yaml')}: no model config named {name!r}")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = compose(config_name=name, overrides=list(overrides))
    except Exception as exc:  # hydra raises several exception types for bad overrides
        raise ValueError(f"{config_dir / (name + '.yaml')}: {exc}") from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain (JSON-serialisable) dict of a config, for checkpoints and provenance."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (temp file in the same folder, then rename)."""
    import os
    import tempfile

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(dict(payload), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
