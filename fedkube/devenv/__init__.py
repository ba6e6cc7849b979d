"""Real servers on loopback: for the test suite, and for trying fedkube by hand
against real S3, MongoDB and Kubernetes. I/O side.

- ``fedkube.devenv.s3``: SeaweedFS with S3 authentication on (``start_s3``,
  ``S3Server``, ``s3_from_env``);
- ``fedkube.devenv.mongo``: FerretDB, the MongoDB wire protocol over SQLite
  (``start_mongo``, ``MongoServer``, ``mongo_from_env``);
- ``fedkube.devenv.k8s``: a Kubernetes control plane, etcd +
  kube-apiserver + kube-controller-manager (``start``, ``K8sEnv``,
  ``stop_dir``);
- ``fedkube.devenv.prometheus``: a Prometheus server (Debian's package, or
  ``$PROMETHEUS_BIN``) scraping a local run's metrics targets;
- ``fedkube.devenv.base``: what the S3 and MongoDB servers share (a
  temporary data directory, start on free ports, stop and clean up).

The processes are fedkube.process.ChildProcess objects. The test fixtures
(tests/support/fixtures.py, tests/support/k8s.py) and the commands
``python scripts/services.py up`` and ``python scripts/k8s_env.py up`` use this
package. It ships with fedkube, but no role (reducer, combiner, client,
operator) imports it, and it imports none of them. Importing it is cheap: the
minio and pymongo clients are imported only by the methods that need them.
"""
