"""Stage-1 training building blocks: the accelerator, losses, optimiser and schedule, the epoch loop, checkpoints
and preemption."""
