"""The instrument: what is measured at each snapshot, and what it says.

- `probe`: what the analysis and the monitor both measure at one snapshot;
- `measure`: the analysis's measurement of one snapshot (the probe and the rest);
- `analysis`: the walk over a run's snapshots, cached per snapshot;
- `summary`: per-snapshot arrays to curves and statistics.json;
- `verdict`: bias onset against test-loss minimum, and its wording;
- `monitor`, `stopping`: the bias monitor during training and its stopping rules;
- `report`: report.md over settings and seeds.
"""
