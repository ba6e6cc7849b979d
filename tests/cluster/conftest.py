"""Fixtures of the real-cluster tests: the session's single-node cluster
(`cluster`) and a fresh namespace on it (`cluster_namespace`); see
tests/support/cluster.py."""

from tests.support.cluster import cluster, cluster_namespace

__all__ = ["cluster", "cluster_namespace"]
