# CoreDNS for the test cluster: scripts/build_node.sh's static build with only
# the plugins its Corefile uses (kubernetes, cache, errors, health, ready, log,
# loadbalance, reload). Deployed by fedkube/devenv/cluster.py as non-root.
FROM scratch
COPY coredns /coredns
USER 65532:65532
ENTRYPOINT ["/coredns"]
