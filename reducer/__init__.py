"""fedkube.reducer: the round loop of one job (the client of its combiners).

loop.py      Reducer: run, recover, suspend, retry, one attempt, commit
pool.py      CombinerPool: channels, template expansion, statuses, fan-out
plan.py      round_plan: the RoundPlan of every train/validate/init attempt
merge.py     merge_round: partials -> merge of the aggregator -> server optimizer
seed.py      SeedMaker: model 0 from seedUri or a client's init task
validate.py  Validator: client validation of committed models
events.py    EventLog: the reducer's events in the state store
failure.py   Cause, AttemptFailed: why an attempt failed, as a bounded class
telemetry.py ReducerTelemetry: the reducer's Prometheus metrics
health.py    HealthServer: /healthz, /status and /metrics
main.py      run_reducer: the `fedkube reducer` process (signals, health, linger)
"""

from fedkube.reducer.loop import Reducer, ReducerConfig
from fedkube.reducer.main import run_reducer
from fedkube.reducer.pool import expand_template

__all__ = ["Reducer", "ReducerConfig", "expand_template", "run_reducer"]
