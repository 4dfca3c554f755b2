"""Training: Lightning modules, datasets, losses and schedules; model configs from ``config/models`` (Hydra)."""
