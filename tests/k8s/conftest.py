"""Fixtures of the Kubernetes tests: the session's control plane (`k8s`), the
FederatedJob CRD on it (`crd`) and a fresh `namespace` per test
(tests/support/k8s.py)."""

from tests.support.k8s import crd, k8s, namespace

__all__ = ["crd", "k8s", "namespace"]
