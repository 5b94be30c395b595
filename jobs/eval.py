"""Evaluate a model (STS Spearman, retrieval): the `ray job submit` entrypoint of `angle-ray eval`.

Locally:

    python jobs/eval.py --model runs/quickstart/model --tasks stsb,sickr

On a cluster (`--entrypoint-num-gpus 1` runs the driver on a GPU worker instead of the head):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \
        --runtime-env cluster/runtime_env.yaml --entrypoint-num-gpus 1 \
        -- python jobs/eval.py --model /mnt/shared/runs/sts-finetune/model \
           --tasks stsb,sickr --output /mnt/shared/runs/sts-finetune/eval_results.json

Task data is read from --data-dir, else $ANGLE_RAY_DATA_DIR (set in cluster/runtime_env.yaml).
Arguments are those of `angle-ray eval` (`python jobs/eval.py --help`).
"""

import sys

from angle_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
