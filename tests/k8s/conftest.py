"""Fixtures of the Kubernetes tests: the session's control plane (`k8s`), the
FederatedJob CRD on it (`crd`), a fresh `namespace` per test and a `pod_runner`
for it (tests/support/k8s.py)."""

from tests.support.k8s import crd, k8s, namespace, pod_runner

__all__ = ["crd", "k8s", "namespace", "pod_runner"]
