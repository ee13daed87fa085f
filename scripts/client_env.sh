#!/usr/bin/env bash
# Builds an overlay (default ~/.cache/nemo_hs2/clients-<pins hash>; $CLIENT_ENV overrides; prints its path last)
# holding the real Triton clients NeMo-Aligner's reward-model callers use (pytriton's ModelClient /
# FuturesModelClient over tritonclient.http), as an overlay on .venv for tests/test_server_clients.py:
#   PYTHONPATH=$(bash scripts/client_env.sh | tail -1) .venv/bin/python -c "from pytriton.client import ModelClient"
# Why not requirements/cpu.lock: pytriton 0.7.0 is a 55 MB wheel (it ships a Triton server binary) and brings 27
# packages the training stack never imports. Every package below is absent from cpu.lock and is installed with
# --no-deps, so nothing pinned there is shadowed; the pins are pip's resolution of
# `nvidia-pytriton==0.7.0 tritonclient[grpc,http]==2.65.0` constrained by cpu.lock (tritonclient 2.65, not the newest,
# because from 2.66 its grpc extra needs protobuf 6 and cpu.lock has 5.29). Re-uses a complete build.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS="nvidia-pytriton==0.7.0 tritonclient==2.65.0 grpcio==1.67.1 geventhttpclient==2.6.1 gevent==26.9.0
greenlet==3.5.6 zope.event==6.2 zope.interface==8.7 brotli==1.2.1 python-rapidjson==1.25 pyzmq==27.3.0 sh==2.4.0
typing-inspect==0.9.0 mypy_extensions==1.2.0 typer==0.29.2 shellingham==1.5.4 rich==15.0.0 markdown-it-py==4.3.0
mdurl==0.1.2 Pygments==2.21.0 annotated-doc==0.0.7 importlib_metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0
pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"
want=$(echo "$PINS" | sha256sum | cut -d' ' -f1)
DEST=${CLIENT_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/nemo_hs2/clients-${want:0:12}}
STAMP="$DEST/.nemo_hs2-clients"
# One build at a time: .ci/run starts this in the background while the tests run, and a test that needs it waits
# here for that build, then re-uses it.
mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"
flock 9

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "client_env: re-using $DEST" >&2
  echo "$DEST"
  exit 0
fi
for pin in $PINS; do  # an overlay package that cpu.lock also pins would shadow the tested stack
  name=$(echo "${pin%%==*}" | tr 'A-Z_.' 'a-z--')
  if tr 'A-Z_.' 'a-z--' < requirements/cpu.lock | grep -q "^$name=="; then
    echo "client_env: $name is pinned in requirements/cpu.lock; it must not be in the overlay" >&2
    exit 1
  fi
done
start=$(date +%s)
rm -rf "$DEST"
# shellcheck disable=SC2086  # one word per pin
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --target "$DEST" $PINS
PYTHONPATH="$DEST" .venv/bin/python -c "from pytriton.client import FuturesModelClient, ModelClient; import tritonclient.http"
echo "$want" > "$STAMP"
echo "client_env: built $DEST in $(( $(date +%s) - start )) s ($(du -sh "$DEST" | cut -f1))" >&2
echo "$DEST"
