"""Flower's side of bench/round_overhead.py: a ServerApp running FedAvg and a
ClientApp that sleeps instead of training (see server_app and client_app)."""
