# Device side of the kit (source it, in the `run` that carries .whl): installs .whl/ into /tmp/site and puts it first
# on PYTHONPATH, so the kit's numpy / transformers shadow the image's while torch and CUDA come from the image.
#   source scripts/device_install.sh
# shellcheck shell=bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $(ls .whl/*.whl | grep -v cp311) || return 1
# megatron-core 0.10 has no cp312 wheel: its Python part (and dist-info, which compat's version guard reads) runs on 3.12.
python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall('/tmp/site', [n for n in z.namelist() if not n.endswith('.so')])" .whl/megatron_core-*-cp311-*.whl || return 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
