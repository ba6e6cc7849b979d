"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization"). Pure package."""

from fedkube.aggregate.optim.fedadagrad import FedAdagrad
from fedkube.aggregate.optim.fedadam import FedAdam
from fedkube.aggregate.optim.fedavg import FedAvg
from fedkube.aggregate.optim.fedavgm import FedAvgM
from fedkube.aggregate.optim.fedyogi import FedYogi

__all__ = ["FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedYogi"]
