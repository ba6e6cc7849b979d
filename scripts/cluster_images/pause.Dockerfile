# The pod sandbox image of the test cluster (containerd's pinned sandbox image):
# scripts/build_node.sh's static `pause` (waits for signals, reaps children).
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
