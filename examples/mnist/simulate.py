"""Tune the example without fedkube servers: `python simulate.py [--rounds N] [--set k=v]`.

A plain FedAvg loop over mnist_fl.task (see mnist_fl/simulate.py).
"""

from mnist_fl.simulate import main

if __name__ == "__main__":
    raise SystemExit(main())
