"""Training: the K twins trained together, snapshotted, resumable.

- `twin_steps`: the pure compiled pieces (optimizer, loss, the K-twin step, mesh);
- `train`: the resumable run (resume, loop, snapshots, logs);
- `preemption`: SIGTERM or Ctrl-C caught, the step reached saved;
- `monitor_run`: the bias monitor as the training loop's hook;
- `refine`: the training replayed around the extrema, denser snapshots.
"""
