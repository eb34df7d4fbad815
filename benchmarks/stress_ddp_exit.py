"""How often a two-rank gloo run dies at exit; prints JSON.

    python benchmarks/stress_ddp_exit.py                  # the engine's teardown, 40 runs (about 3 min here)
    python benchmarks/stress_ddp_exit.py --plain-torch    # the same steps without it
    python benchmarks/stress_ddp_exit.py --switch-interval 5

Each run spawns two processes that do what the end of a DistributedDataParallel run does (DDP
construction, a backward step, an all_reduce, a barrier, ``destroy_process_group``) and exit. A
gloo worker thread drops each finished collective after the caller's wait has returned; dropping
one that holds a tensor seen from Python takes the GIL, and if the interpreter is finalising by
then the process dies with SIGABRT ("terminate called without an active exception"). With the
engine's teardown (``avs_lib.training.loop``: ``torch.distributed.nn.functional`` imported before
the group exists, the group destroyed from atexit) ``destroy_process_group`` frees the group and
joins its threads, so none is left. ``--switch-interval`` lengthens the GIL switch interval in the
workers, which widens the window in which a worker thread waits for the GIL.

Measured on the 2-core machine (torch 2.13): ``--runs 60 --plain-torch`` 2 aborted, ``--runs 60`` 0
(README, "Running on a cluster", has the scratch runs before this script: 4 of 140 and, with a 5 s
switch interval, 7 of 52 plain; 0 of 40 and 0 of 52 with the teardown).
"""
import argparse
import importlib
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, plain_torch: bool, switch_interval: float, report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    if not plain_torch:
        importlib.import_module("avs_lib.training.loop")  # before the group exists, as avs train does
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    box = [None]
    dist.broadcast_object_list(box, src=0)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        loss = torch.ones(1)
        dist.all_reduce(loss)
    dist.barrier()
    del model
    dist.destroy_process_group()
    if rank == 0:
        # imported only now: importing avs_lib.training.loop earlier is the engine's teardown itself
        from avs_lib.training.loop import gloo_threads_alive

        with open(report, "w") as f:
            json.dump(gloo_threads_alive(), f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--plain-torch", action="store_true", help="without the engine's teardown")
    parser.add_argument("--switch-interval", type=float, default=0.0, help="GIL switch interval (s) in the workers")
    args = parser.parse_args()
    aborted, left, started = 0, set(), time.time()
    report = f"/tmp/stress_ddp_exit_{os.getpid()}.json"
    for i in range(args.runs):
        try:
            mp.spawn(_worker, args=(2, _free_port(), args.plain_torch, args.switch_interval, report), nprocs=2)
            left.update(json.load(open(report)))
        except mp.ProcessExitedException as err:
            aborted += 1
            print(f"run {i}: {err}", file=sys.stderr, flush=True)
    print(json.dumps({"runs": args.runs, "aborted": aborted, "teardown": "plain torch" if args.plain_torch else "engine",
                      "switch_interval_s": args.switch_interval, "gloo_threads_left_after_destroy": sorted(left),
                      "torch": torch.__version__, "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
