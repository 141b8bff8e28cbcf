"""The three stages a command runs: stage-1 training, stage 2 (logit adjustment or cRT), evaluation; each in the
frame of ``frame.py`` (accelerator, trackers, data, model check, Hub upload, end)."""
