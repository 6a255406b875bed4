"""Mutation check: would the suite notice a meaningful bug? (issue #30)

    COMFYUI_ROOT=... python -m testkit.mutation_check              # every mutation (about 20 min on 2 cores)
    COMFYUI_ROOT=... python -m testkit.mutation_check --only edm-weight-in-loop,mix-order
    python -m testkit.mutation_check --list

Each mutation is one small, plausible bug in the product (an exact snippet of one file replaced) and the
test files that should catch it. For each, the repository's tracked files are copied to a temporary
folder, the snippet is replaced there (never here), and those test files run (``pytest -x``). A mutation
whose tests all pass *survived*: the suite would not have noticed that bug. The table gives, per mutation,
killed or survived and the first test that failed. Mutations whose snippet no longer exists are reported
as stale (tests/test_mutation_check.py keeps the list applicable).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTATIONS = (
    # ---- the method (reenact_core) ------------------------------------------------------------------
    Mutation("edm-weight-in-loop", "reenact_core/inversion.py",
             "            loss = edm_loss(denoised, x0, sigma)\n",
             "            loss = torch.mean((denoised.float() - x0.float()) ** 2)\n",
             ("test_core.py",), "the optimiser steps on the plain MSE; edm_loss itself intact"),
    Mutation("edm-weight-in-edm-loss", "reenact_core/inversion.py",
             "    return edm_weight(sigma) * torch.mean((denoised.float() - x0.float()) ** 2)",
             "    return torch.mean((denoised.float() - x0.float()) ** 2)",
             ("test_core.py",), "the EDM weight dropped from edm_loss"),
    Mutation("no-optimiser-step", "reenact_core/inversion.py",
             "            optimizer.step()\n",
             "            pass\n",
             ("test_core.py", "test_transfer.py"), "the tokens never move"),
    Mutation("first-step-check-skipped", "reenact_core/inversion.py",
             "        if step == 0:\n            _backward_checked(scaler.scale(loss), params, scaler)\n        else:\n",
             "        if False:\n            pass\n        else:\n",
             ("test_core.py",), "no gradient check before the first step"),
    Mutation("mix-order", "reenact_core/embedding.py",
             "    spatial = (1 - w) * a.spatial.float() + w * b.spatial.float().to(a.spatial.device)\n"
             "    temporal = (1 - w) * a.temporal.float() + w * b.temporal.float().to(a.temporal.device)\n",
             "    spatial = w * a.spatial.float() + (1 - w) * b.spatial.float().to(a.spatial.device)\n"
             "    temporal = w * a.temporal.float() + (1 - w) * b.temporal.float().to(a.temporal.device)\n",
             ("test_core.py", "test_node_inputs.py"), "Mix Motion Embeddings with a and b swapped"),
    Mutation("strength-clamped", "reenact_core/embedding.py",
             "        if strength == 1.0:\n",
             "        strength = min(strength, 1.0)\n        if strength == 1.0:\n",
             ("test_core.py", "test_node_inputs.py"), "strength above 1 clamped to 1"),
    Mutation("nan-check-on-load", "reenact_core/fileformat.py",
             "        if not torch.isfinite(t).all():",
             "        if False:",
             ("test_fileformat.py", "test_fileformat_fuzz.py"), "NaN/inf embeddings load"),
    Mutation("save-straight-to-final-path", "reenact_core/fileformat.py",
             '        with open(tmp_name, "xb") as f:\n            f.write(data)\n            f.flush()\n'
             "            os.fsync(f.fileno())\n        os.replace(tmp_name, path)\n",
             '        tmp_name = path\n        with open(path, "wb") as f:\n            f.write(data)\n            f.flush()\n'
             "            os.fsync(f.fileno())\n",
             ("test_fileformat.py",), "the save writes the final name directly and deletes it on error"),
    # ---- the nodes -----------------------------------------------------------------------------------
    Mutation("fps-bucket-swapped", "nodes/inversion.py",
             "            denoiser = ComfySVDDenoiser(base, device, fps, motion_bucket_id, augmentation_level)\n",
             "            denoiser = ComfySVDDenoiser(base, device, motion_bucket_id, fps, augmentation_level)\n",
             ("test_node_inputs.py",), "fps and motion_bucket_id swapped where the node builds the inversion's denoiser"),
    Mutation("precision-ignored", "nodes/inversion.py",
             "        dtype = compute_dtype(precision, device)\n",
             '        dtype = compute_dtype("auto", device)\n',
             ("test_node_inputs.py",), "the precision input ignored"),
    Mutation("preflight-always-raises", "nodes/comfy_denoiser.py",
             "    free, total, now = private_model.free_vram(device), len(sizes), len(swap.swapped)\n",
             "    free, total, now = 0, len(sizes), len(swap.swapped)\n",
             ("test_node_inputs.py",), "the VRAM preflight refuses whatever the free memory (it runs only off CPU)"),
    Mutation("probe-keeps-saved-tensors", "nodes/comfy_denoiser.py",
             "        # block's copy) would otherwise pile up over the whole model, more than the card holds, before any is counted.\n"
             "        return None\n",
             "        return t\n",
             ("test_nodes_memory.py",), "the memory probe keeps what autograd saves (an fp8 14B's cast weights fill the card)"),
    Mutation("block-swap-without-checkpointing", "nodes/comfy_denoiser.py",
             "                if gradient_checkpointing or swap.swapped:",
             "                if gradient_checkpointing:",
             ("test_node_inputs.py",), "block swap left without checkpointing: autograd keeps every swapped block's copy"),
    Mutation("apply-frame-order", "nodes/embeddings.py",
             "        motion = motion_embedding.resample_frames(frames)\n",
             "        motion = motion_embedding.resample_frames(frames)\n"
             "        motion = MotionEmbedding(motion.spatial.flip(0), motion.temporal, motion.metadata)\n",
             ("test_nodes.py",), "Apply Motion Embedding plays the frames backwards"),
    Mutation("mix-node-order", "nodes/embeddings.py",
             "        return (mix(embedding_a, embedding_b, weight),)\n",
             "        return (mix(embedding_b, embedding_a, weight),)\n",
             ("test_nodes.py", "test_node_inputs.py"), "the Mix node passes a and b to the mix the wrong way round"),
    Mutation("strength-ignored", "nodes/embeddings.py",
             "            applied = motion.with_strength(strength, neutral)\n",
             "            applied = motion\n",
             ("test_nodes.py", "test_node_inputs.py"), "strength ignored"),
    # ---- the GPU path (issue #25) ---------------------------------------------------------------------
    Mutation("attention-not-swapped", "nodes/private_model.py",
             "        for module, name, _ in saved:\n            setattr(module, name, chosen)\n",
             "        pass\n",
             ("test_gpu_path.py",), "the loop trains through whatever attention ComfyUI or a pack installed"),
    Mutation("eviction-outside-inference-mode", "nodes/private_model.py",
             "    with torch.inference_mode():\n        comfy.model_management.free_memory(",
             "    with torch.inference_mode(False):\n        comfy.model_management.free_memory(",
             ("test_gpu_path.py",), "shared models evicted outside inference mode"),
    Mutation("dynamic-handles-copied", "nodes/private_model.py",
             "            if not _is_atom(value):  # memoising an atom",
             "            if False:  # memoising an atom",
             ("test_gpu_path.py",), "the copy duplicates the dynamic-VRAM handles"),
    Mutation("patches-not-copied", "nodes/private_model.py",
             "    private.patches = {key: list(patches) for key, patches in model_patcher.patches.items()}\n",
             "    private.patches = {}\n",
             ("test_gpu_path.py",), "the MODEL's LoRA patches left out of the copy"),
)


def run(mutation: Mutation, comfyui_root: str | None, timeout: int) -> dict:
    source = (REPO / mutation.file).read_text()
    count = source.count(mutation.old)
    if count != 1:
        return {"name": mutation.name, "outcome": "stale", "detail": f"snippet found {count} times in {mutation.file}"}
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.name}-") as tmp:
        copy = Path(tmp) / REPO.name  # the pack's folder name matters to ComfyUI's loader only as a module name
        listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]  # what a commit would hold
        tracked = subprocess.run(listing, cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, tracked):
            if (REPO / rel).is_file():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, copy / rel)
        (copy / mutation.file).write_text(source.replace(mutation.old, mutation.new))
        env = dict(os.environ)
        if comfyui_root:
            env["COMFYUI_ROOT"] = comfyui_root
        started = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-rf", *mutation.tests]
        try:
            result = subprocess.run(command, cwd=copy / "tests", env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"name": mutation.name, "outcome": "killed", "detail": f"timed out after {timeout} s", "seconds": timeout}
        seconds = time.perf_counter() - started
    failed = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if result.returncode == 0:
        return {"name": mutation.name, "outcome": "survived", "detail": "all tests passed", "seconds": seconds}
    last = (result.stdout.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    if result.returncode != 1:  # pytest's 1 is "tests failed"; anything else (no tests, usage error) proves nothing
        return {"name": mutation.name, "outcome": "error", "detail": f"pytest exit code {result.returncode}: {last}"[:140], "seconds": seconds}
    return {"name": mutation.name, "outcome": "killed", "detail": (failed[0] if failed else last)[:140], "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per mutation's test run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    if args.list:
        for m in chosen:
            print(f"{m.name:32} {m.file:28} {', '.join(m.tests):40} {m.why}")
        return 0
    rows = []
    for mutation in chosen:
        row = run(mutation, os.environ.get("COMFYUI_ROOT"), args.timeout)
        rows.append(row)
        print(f"{row['name']:32} {row['outcome']:8} {row.get('seconds', 0):6.0f} s  {row['detail']}", flush=True)
    survived = [r["name"] for r in rows if r["outcome"] != "killed"]
    print(f"\n{len(rows) - len(survived)} of {len(rows)} mutations killed" + (f"; not killed: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
