"""A toy stage run as a subprocess by test_shards.py: writes keys k0..k{N-1} (every 7th skipped) with
ResumableMDSWriter, this rank's share only; with --merge, waits for all ranks and rank 0 merges."""

import argparse
import time

from data_prep.shards import ResumableMDSWriter, barrier, get_rank_world, merge_ranks, shard_for_rank

COLUMNS = {"photo_id": "str", "value": "int", "license": "str", "blob": "bytes"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--part-size", type=int, default=10)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--merge", action="store_true")
    args = p.parse_args()
    rank, world = get_rank_world()
    keys = [f"k{i}" for i in range(args.n)]
    with ResumableMDSWriter(args.out, COLUMNS, rank=rank, part_size=args.part_size, size_limit=2000) as writer:
        done = writer.done_keys()
        for key in shard_for_rank(keys, rank, world):
            if key in done:
                continue
            i = int(key[1:])
            if i % 7 == 0:
                writer.skip(key, "multiple_of_7", license="CC-BY")
            else:
                writer.write(key, {"value": i, "license": "CC-BY-SA", "blob": bytes([i % 256]) * 50})
            time.sleep(args.sleep)
    if args.merge:
        barrier()
        if rank == 0:
            print("merged", merge_ranks(args.out))


if __name__ == "__main__":
    main()
