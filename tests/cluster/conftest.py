"""Fixtures of the real-cluster tests: the session's single-node cluster
(`cluster`), a fresh namespace on it (`cluster_namespace`; see
tests/support/cluster.py) and the fedkube Helm release installed on it
(`release`) and a shell for README commands (`shell`; see tests/support/release.py)."""

from tests.support.cluster import cluster, cluster_namespace
from tests.support.release import release, shell

__all__ = ["cluster", "cluster_namespace", "release", "shell"]
