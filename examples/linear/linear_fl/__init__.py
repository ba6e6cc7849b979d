"""Linear-regression federated-learning example for fedkube: numpy only, no data files.

- `linear_fl.task`: `init`, `train`, `validate` (the fedkube in-process contract),
  each client's data generated from its shard index, so a run is reproducible.
"""
