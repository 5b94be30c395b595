"""Driver of tests/jobs/test_multinode.py: wait for the cluster's nodes, then `angle-ray train`.

Run in its own process, joined to the test's local multi-node cluster (RAY_ADDRESS):

    python tests/jobs/spread_train.py --config job.yaml --nodes 3 --result out.json

The job config pins one training worker per worker node with
`train.resources_per_worker: {node_slot: 1}` (only worker nodes offer a `node_slot`), so when a
node dies the elastic worker group can only come back at the size the surviving nodes allow.
Waiting for every node first keeps the starting group at its full size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def wait_for_nodes(count: int, timeout: float) -> None:
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(1 for n in ray.nodes() if n["Alive"]) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"fewer than {count} live nodes after {timeout} s: {ray.nodes()}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)

    from angle_ray.config import load_config
    from angle_ray.train import driver

    cfg = load_config(args.config)
    driver.init_ray()  # RAY_ADDRESS: the test's cluster
    wait_for_nodes(args.nodes, timeout=120)
    run = driver.run_training(cfg)
    with open(args.result, "w") as f:
        json.dump({"run_dir": str(run.run_dir), "model_dir": str(run.model_dir),
                   "total_steps": run.total_steps}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
