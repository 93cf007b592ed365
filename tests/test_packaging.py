"""The package as a user installs it: ``python -m build`` makes an sdist and a wheel (the wheel built from the
sdist), and the wheel, installed into a fresh virtual environment outside the source tree, answers
``uniemo --version`` and runs ``uniemo demo --fast`` without reading a file of the source tree.

The build and install tests are marked ``package`` (``make test-package``, a few minutes); ``make test`` leaves
them out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import uniemo
from tests.conftest import REPO

VERSION = uniemo.__version__  # the one place the version is written (pyproject reads it from there)

# Loaded from the fresh venv's site-packages by a .pth line: an audit hook that logs every file opened or directory
# listed under the source tree, apart from the project venv that lends the third-party packages.
GUARD = """\
import os
import sys

_ROOT = os.environ.get("UNIEMO_GUARD_ROOT")
_ALLOW = os.environ.get("UNIEMO_GUARD_ALLOW", "")
_LOG = os.environ.get("UNIEMO_GUARD_LOG")


def _hook(event, args):
    if event not in ("open", "os.listdir", "os.scandir") or not args or not isinstance(args[0], (str, bytes)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if path.startswith(_ROOT + os.sep) and not (_ALLOW and path.startswith(_ALLOW + os.sep)):
        with open(_LOG, "a") as log:
            log.write(f"{event} {path}\\n")


if _ROOT and _LOG:
    sys.addaudithook(_hook)
"""


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 300)
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def outside_tree(path: Path) -> Path:
    assert not path.resolve().is_relative_to(REPO), f"{path} is inside the source tree {REPO}"
    return path


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` of the source tree: the sdist, then the wheel built from the unpacked sdist.
    ``--no-isolation`` builds with the venv's setuptools (the test extra), so nothing is downloaded."""
    out = outside_tree(tmp_path_factory.mktemp("dist"))
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO)
    return out


def wheel_of(dist: Path) -> Path:
    return dist / f"uniemo-{VERSION}-py3-none-any.whl"


def test_the_version_is_written_once_and_printed_without_torch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "uniemo.__version__"}
    # argparse's version action exits the process: what was imported by then is printed at exit
    code = "import atexit, sys; atexit.register(lambda: print(sorted({'torch', 'diffusers'} & set(sys.modules))))"
    code += "; from uniemo.cli.main import main; main(['--version'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines() == [f"uniemo {VERSION}", "[]"], r.stdout + r.stderr


@pytest.mark.package
def test_build_makes_an_sdist_and_a_wheel_with_every_file_of_the_package(dist):
    assert sorted(p.name for p in dist.iterdir()) == [f"uniemo-{VERSION}-py3-none-any.whl", f"uniemo-{VERSION}.tar.gz"]
    package = REPO / "src" / "uniemo"
    files = {
        str(p.relative_to(package.parent)): p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    # the wheel, built from the sdist, is the package directory byte for byte: code, the stand-in (nested sd/unet,
    # sd/vae, …), the judge, the BPE vocabulary, presets, model configs and run configs
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        in_wheel = {name for name in wheel.namelist() if not name.startswith(f"uniemo-{VERSION}.dist-info/")}
        assert in_wheel == set(files)
        assert [name for name in in_wheel if wheel.read(name) != files[name].read_bytes()] == []
        metadata = wheel.read(f"uniemo-{VERSION}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"uniemo-{VERSION}.dist-info/entry_points.txt").decode()
    assert "uniemo/assets/standin/sd/unet/diffusion_pytorch_model.safetensors" in in_wheel
    assert f"Version: {VERSION}\n" in metadata and "uniemo = uniemo.cli.main:main" in entry_points
    # the sdist: the package, and what its test suite needs
    with tarfile.open(dist / f"uniemo-{VERSION}.tar.gz") as sdist:
        in_sdist = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {f"src/{name}" for name in files} <= in_sdist
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "tests/conftest.py", "configs/tiny.yaml"} <= in_sdist


@pytest.fixture(scope="module")
def fresh_venv(dist, tmp_path_factory) -> Path:
    """A venv outside the tree with the wheel installed and the project venv's third-party packages lent through a
    .pth file to a directory of links that leaves out the project's own (editable) install of uniemo."""
    root = outside_tree(tmp_path_factory.mktemp("fresh"))
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel_of(dist))
    lent = root / "third-party"
    lent.mkdir()
    for path in {Path(sysconfig.get_path("purelib")), Path(sysconfig.get_path("platlib"))}:
        for entry in path.iterdir():
            own = entry.name.startswith(("uniemo", "__editable__", "_uniemo")) or entry.suffix == ".pth"
            if not own and not (lent / entry.name).exists():
                (lent / entry.name).symlink_to(entry)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    (site / "_third_party.pth").write_text(f"{lent}\n")
    (site / "_source_guard.py").write_text(GUARD)
    (site / "_source_guard.pth").write_text("import _source_guard\n")
    return venv


def guarded_env(root: Path) -> dict[str, str]:
    """A user's environment: no PYTHONPATH, a home of its own, offline, and the source-tree guard switched on."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    allowed = Path(sys.prefix).resolve()  # the project venv, which lends the third-party packages
    return {
        "PATH": os.pathsep.join([str(root / "venv" / "bin"), os.defpath]),
        "HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "UNIEMO_CACHE": str(root / "cache"),
        "UNIEMO_GUARD_ROOT": str(REPO),
        "UNIEMO_GUARD_ALLOW": str(allowed) if allowed.is_relative_to(REPO) else "",
        "UNIEMO_GUARD_LOG": str(root / "source-reads.log"),
    }


@pytest.mark.package
def test_the_installed_wheel_runs_the_demo_without_the_source_tree(fresh_venv):
    root = fresh_venv.parent
    env, cwd = guarded_env(root), outside_tree(root / "work")
    cwd.mkdir()
    log = Path(env["UNIEMO_GUARD_LOG"])
    python, command = fresh_venv / "bin" / "python", fresh_venv / "bin" / "uniemo"

    # the guard sees a read of the source tree (so its silence below means something)
    run(python, "-c", f"open({str(REPO / 'pyproject.toml')!r}).close()", env=env, cwd=cwd)
    assert str(REPO / "pyproject.toml") in log.read_text()
    log.unlink()

    # uniemo is the wheel's copy, and nothing on sys.path is in the tree
    code = "import sys, importlib.metadata, uniemo; print(uniemo.__file__, importlib.metadata.version('uniemo'))"
    code += "; print(*sys.path, sep='\\n')"
    first, *path = run(python, "-c", code, env=env, cwd=cwd).stdout.splitlines()
    where, version = first.rsplit(" ", 1)
    assert Path(where).is_relative_to(fresh_venv) and version == VERSION
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(REPO)], path

    assert run(command, "--version", env=env, cwd=cwd).stdout.strip() == f"uniemo {VERSION}"

    out = root / "demo"
    r = run(command, "demo", "--fast", "--out", out, env=env, cwd=cwd, timeout=1800)
    assert (out / "report.html").is_file() and f"report: {out / 'report.html'}" in r.stdout
    assert not log.exists(), log.read_text()[:3000]
    written = [p for p in out.rglob("*") if p.suffix in (".yaml", ".json", ".html", ".jsonl")]
    assert any(p.name == "config.yaml" for p in written)
    assert [p for p in written if str(REPO) in p.read_text(errors="replace")] == []
