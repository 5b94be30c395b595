"""Train an embedding model: the `ray job submit` entrypoint of `angle-ray train`.

Locally (an embedded Ray on this machine, CPU):

    python jobs/train.py --config jobs/configs/quickstart.yaml train.epochs=1

On a cluster (see cluster/README.md; the dashboard reached through `ray dashboard` or a
port-forward on 127.0.0.1:8265, token auth on):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \
        --runtime-env cluster/runtime_env.yaml \
        -- python jobs/train.py --config jobs/configs/sts_finetune.yaml \
           train.storage_path=/mnt/shared/runs train.use_gpu=true

Inside a submitted job Ray sets RAY_ADDRESS, so the driver joins that cluster instead of
starting its own. Arguments are those of `angle-ray train` (`python jobs/train.py --help`);
`key.sub=value` words override the config file.
"""

import sys

from angle_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
