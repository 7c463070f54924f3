# Sourced by examples/run.sh and examples/digits.sh, from the repository root: create .venv on
# the first run and install the project with the examples' extras.
# torch and tensorflow-cpu are pinned here, not in the package metadata (see .ci/run).
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet torch==2.13.0 tensorflow-cpu==2.21.0 -e ".[keras,torch,flax,examples]"
