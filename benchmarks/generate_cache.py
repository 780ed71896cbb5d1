"""The hf backend's growing KV cache vs transformers' default DynamicCache, side by side, one run.

    python benchmarks/generate_cache.py [--model DIR] [--lengths 128,512,1024] [--repeats 2]

Both sides are `HFSampler.generate` on the same prompts, seed and settings; the only difference is the
cache object handed to `generate()` (the default side passes none, so transformers builds its own
DynamicCache, which concatenates the whole cache at every step). Runs alternate (default, growing,
default, ...) so machine noise hits both; the medians, their ratio and whether the sampled tokens are
identical are printed per generation length. Without --model a tiny untrained model is built in a temp
folder: it rarely emits end-of-sequence, and a batch runs until its last row stops, so the calls run to
the full length (the worst case for the default cache). Rows per call: --batch (default 64).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from still_cli.sampling import SamplingParams
    from still_cli.sampling.hf import HFSampler
    from still_cli.tiny_model import InitModelConfig, init_model

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(init_model(InitModelConfig(output=str(Path(tmp) / "tiny"), seed=0)))
        sampler = HFSampler(model, batch_size=args.batch)
        growing = sampler._cache_kwarg
        if growing is None:
            sys.exit(f"{model}: the growing cache does not apply to this model (see growing_cache_kwarg in "
                     f"still_cli/sampling/hf.py)")
        prompts = [sampler.tokenizer.apply_chat_template([{"role": "user", "content": f"What is {i} + {2 * i}?"}],
                                                         tokenize=False, add_generation_prompt=True)
                   for i in range(args.batch)]
        print(f"model {model}, {args.batch} rows per call, T 1.0, seed 0")
        print("max tokens | default DynamicCache s | growing cache s | speed-up | same tokens")
        for length in [int(x) for x in args.lengths.split(",")]:
            params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=length, seed=0)
            times: dict[str, list[float]] = {"default": [], "growing": []}
            outs: dict[str, list[list[int]]] = {}
            for _ in range(args.repeats):
                for side in ("default", "growing"):
                    sampler._cache_kwarg = growing if side == "growing" else None
                    t = time.perf_counter()
                    res = sampler.generate(prompts, params)
                    times[side].append(time.perf_counter() - t)
                    outs[side] = [c.token_ids for cs in res for c in cs]
            d, g = statistics.median(times["default"]), statistics.median(times["growing"])
            print(f"{length} | {d:.2f} | {g:.2f} | {d / g:.2f}x | {outs['default'] == outs['growing']}")


if __name__ == "__main__":
    main()
