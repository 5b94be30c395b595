"""Export a trained model: the `ray job submit` entrypoint of `angle-ray export`.

Writes a Hugging Face folder and a sentence-transformers folder (a LoRA adapter merged in).

Locally:

    python jobs/export.py --model runs/quickstart/model --output exported/quickstart

On a cluster (the output lands on shared storage; copy it home with `ray rsync-down`,
`kubectl cp` or your bucket tool, see cluster/README.md):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \
        --runtime-env cluster/runtime_env.yaml \
        -- python jobs/export.py --model /mnt/shared/runs/llm-lora/model \
           --output /mnt/shared/exported/llm-lora

Arguments are those of `angle-ray export` (`python jobs/export.py --help`).
"""

import sys

from angle_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
