"""The subprocess form of the linear task (the train entrypoint contract).

    python entrypoint.py train IN_MODEL OUT_MODEL     # writes OUT_MODEL and OUT_MODEL.json
    python entrypoint.py validate IN_MODEL OUT_JSON
    python entrypoint.py init OUT_MODEL

The task (round, client, config) comes from the FEDKUBE_* environment.
"""

from linear_fl.task import init, train, validate

from fedkube.client.entrypoint import run

if __name__ == "__main__":
    run(train=train, validate=validate, init=init)
