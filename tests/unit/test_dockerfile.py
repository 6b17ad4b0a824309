"""The Dockerfile: hadolint clean, and the same install steps as the README, stage by stage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def stages() -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def pip_installs(text: str) -> list[str]:
    """`pip install X` steps, normalised: no flags, the venv prefix dropped, the built wheel named as in the README."""
    out = []
    for m in re.finditer(r"pip install ([^\n&\\]+)", text):
        args = [a for a in m.group(1).split() if not a.startswith("--")]
        if any(a.startswith(("pip==", "setuptools==")) for a in args):
            continue  # the build stage's pinned tooling
        out.append(" ".join(args).replace('"$(cat /wheels/path.txt)"', '"$(hack/llama-wheel.sh)"'))
    return out


def readme_images() -> dict[str, list[str]]:
    block = (REPO / "README.md").read_text().split("## Container images", 1)[1].split("```console", 1)[1].split("```")[0]
    steps: dict[str, list[str]] = {}
    target = None
    for line in block.splitlines():
        t = re.search(r"--target (\w+)", line)
        if t:
            target = t.group(1)
        if "GGML_CUDA" in line:
            target = None  # the CUDA variant of runtime: same steps, other base
        for m in re.finditer(r"# pip install (.+)$", line):
            steps.setdefault(target, []).append(m.group(1).strip())
    return steps


def test_hadolint_is_clean():
    r = subprocess.run([str(Path(sys.executable).parent / "hadolint"), "--config", str(REPO / ".hadolint.yaml"),
                        str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_each_image_installs_what_the_readme_says():
    s, readme = stages(), readme_images()
    assert set(s) == {"llama-build", "operator", "runtime"}
    assert pip_installs(s["operator"]) == readme["operator"] == ["'.[operator]'"]
    assert pip_installs(s["runtime"]) == readme["runtime"] == ['"$(hack/llama-wheel.sh)"', "'.[runtime]'"]
    assert "hack/llama-wheel.sh" in s["llama-build"]  # the wheel is built by the same script as make setup


def test_the_readme_dev_install_covers_the_image_extras():
    dev = (REPO / "README.md").read_text().split("Install steps", 1)[1].split("```")[1]
    assert '"$(hack/llama-wheel.sh)"' in dev and ".[operator,runtime,test]" in dev


def test_versions_agree_and_final_stages_have_no_compiler_and_no_root():
    pinned = re.search(r'"llama-cpp-python==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"LLAMA_CPP_PYTHON_VERSION={pinned}" in DOCKERFILE
    assert f'VERSION="${{LLAMA_CPP_PYTHON_VERSION:-{pinned}}}"' in (REPO / "hack" / "llama-wheel.sh").read_text()
    for name in ("operator", "runtime"):
        body = stages()[name]
        assert not re.search(r"build-essential|\bgcc\b|\bcmake\b", body), name
        assert re.search(r"^USER \d+:\d+$", body, flags=re.M), name  # numeric: runAsNonRoot can check it


def test_pods_run_as_the_image_user():
    """The UID of the images, of the runtime pods the operator builds, and of the chart's operator pod agree."""
    import yaml

    from r1_operator.settings import OperatorSettings

    (uid,) = set(re.findall(r"^USER (\d+):\1$", DOCKERFILE, flags=re.M))
    chart = yaml.safe_load((REPO / "charts" / "r1-operator" / "values.yaml").read_text())
    assert OperatorSettings().run_as_user == chart["podSecurityContext"]["runAsUser"] == int(uid)


def test_the_cuda_build_compiles_real_sass_for_every_datacenter_gpu_generation_and_names_its_driver():
    build = stages()["llama-build"]
    archs = re.search(r'^ARG CUDA_ARCHITECTURES="([^"]+)"', build, flags=re.M).group(1).split(";")
    assert {"80-real", "86-real", "89-real", "90-real"} <= set(archs)  # A100, A10/A40, L4/L40S, H100/H200
    assert any(a.endswith("-virtual") for a in archs)  # PTX for GPUs newer than the build
    assert "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" in build
    assert re.search(r"driver 5\d\d\.\d+", build)  # the minimum driver, beside the CUDA version it follows from
