# The dev MongoDB of the test cluster: FerretDB v1 (scripts/build_ferretdb.sh), a local
# build standing in for the upstream image the chart defaults to
# (ghcr.io/ferretdb/ferretdb). Like that image, its entrypoint is the ferretdb binary
# and it is configured by environment only (the chart sets FERRETDB_HANDLER=sqlite,
# FERRETDB_SQLITE_URL, FERRETDB_STATE_DIR, FERRETDB_LISTEN_ADDR, ...).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY ferretdb /usr/local/bin/ferretdb
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ferretdb"]
