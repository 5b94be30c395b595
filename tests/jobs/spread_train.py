"""Driver of tests/jobs/test_multinode.py: `run_training` with one Ray Train worker per node.

Run in its own process, joined to the test's local multi-node cluster (RAY_ADDRESS):

    python tests/jobs/spread_train.py --config job.yaml --slot node_slot --nodes 3 --result out.json

It is angle-ray's own driver (angle_ray.train.driver.run_training) with one change: every
training worker also asks for one unit of the custom resource named by `--slot`, which only
the worker nodes offer (one unit each). So each worker lands on its own node, and when a node
dies the elastic worker group can only come back at the size the surviving nodes allow.
The job config has no key for extra per-worker resources, hence the wrapper around
`build_trainer`.
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


def one_worker_per_slot(build_trainer, slot: str):
    """Wrap build_trainer: same trainer, each worker also needs 1 `slot` resource."""

    def build(cfg, datasets, plan):
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer

        base = build_trainer(cfg, datasets, plan)
        sc = base.scaling_config
        scaling = ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                resources_per_worker={**sc.resources_per_worker, slot: 1})
        return TorchTrainer(base.train_loop_per_worker, train_loop_config=base.train_loop_config,
                            torch_config=base.backend_config, scaling_config=scaling,
                            run_config=base.run_config, datasets=base.datasets,
                            dataset_config=base.data_config)

    return build


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--slot", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)

    from angle_ray.config import load_config
    from angle_ray.train import driver

    cfg = load_config(args.config)
    driver.init_ray()  # RAY_ADDRESS: the test's cluster
    wait_for_nodes(args.nodes, timeout=120)
    driver.build_trainer = one_worker_per_slot(driver.build_trainer, args.slot)
    run = driver.run_training(cfg)
    with open(args.result, "w") as f:
        json.dump({"run_dir": str(run.run_dir), "model_dir": str(run.model_dir),
                   "total_steps": run.total_steps}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
