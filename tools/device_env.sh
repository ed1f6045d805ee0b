# Sourced by the device scripts (gpu_check.sh, gpu_train_and_sweep.sh) from the repo root: installs
# the wheels of tools/device_wheels.sh carried in .whl/ into /tmp/site (a GPU machine of this workplace lacks them)
# and puts them and the checkout on PYTHONPATH.
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
