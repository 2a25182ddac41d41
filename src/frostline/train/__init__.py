"""Fine-tuning in phases: `Phase`, the `FineTune` runner, its callbacks, checkpoints,
resume, distribution and ready-made schedules."""
