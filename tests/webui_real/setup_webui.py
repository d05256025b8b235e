#!/usr/bin/env python3
"""Build a real Automatic1111, Forge or reForge checkout for the real-webui test tier.

    python3 tests/webui_real/setup_webui.py forge --dest DIR [--commit SHA] [--git NAME=URL ...]

Clones the webui and the code repositories it would clone at launch (sources default to GitHub;
``--git NAME=URL`` points any of them at a mirror or local clone), makes a venv on Python 3.11
with torch 2.3.1 and the webui's own requirements (the few pins that do not install offline on
3.11 are replaced: see RELAXED), lays out the CLIP tokenizer as an offline Hugging Face cache,
links this extension into ``extensions/``, writes a random-weight SD1.5 checkpoint and records
how to start the webui in ``DIR/skip_tuning_webui.json`` (read by tests/test_webui_real.py).
Nothing here needs the network at webui start: the webui is started with
``--skip-prepare-environment`` and ``HF_HUB_OFFLINE``.

Point the tests at the result with ``SKIP_TUNING_WEBUI_PATHS=DIR[:DIR...]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXTENSION_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SOURCES = {
    "a1111": "https://github.com/AUTOMATIC1111/stable-diffusion-webui.git",
    "forge": "https://github.com/lllyasviel/stable-diffusion-webui-forge.git",
    "reforge": "https://github.com/Panchovix/stable-diffusion-webui-reForge.git",
    "stablediffusion": "https://github.com/Stability-AI/stablediffusion.git",
    "generative-models": "https://github.com/Stability-AI/generative-models.git",
    "k-diffusion": "https://github.com/crowsonkb/k-diffusion.git",
    "huggingface_guess": "https://github.com/lllyasviel/huggingface_guess.git",
}

# The commits each webui's launch_utils pins; (source, folder under repositories/, commit, paths or None for all).
# The Stability-AI repositories are checked out partially: their mirrors may lack the large assets.
LDM = ("stablediffusion", "stable-diffusion-stability-ai", "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf",
       ["ldm", "configs"])
SGM = ("generative-models", "generative-models", "45c443b316737a4ab6e40413d7794a7f5657c19f", ["sgm", "configs"])
KDIFF = ("k-diffusion", "k-diffusion", "ab527a9a6d347f364e3d185ba6d714e22d80cb3c", None)
HF_GUESS = ("huggingface_guess", "huggingface_guess", "84826248b49bb7ca754c73293299c4d4e23a548d", None)

WEBUIS = {
    "a1111": {"commit": "82a973c04367123ae98bd9abdf80d9eda9b910e2", "repositories": [LDM, SGM, KDIFF],
              "cpu_args": ["--use-cpu", "all", "--no-half", "--precision", "full", "--skip-torch-cuda-test"]},
    "forge": {"commit": "dfdcbab685e57677014f05a3309b48cc87383167", "repositories": [HF_GUESS],
              "cpu_args": ["--always-cpu", "--skip-torch-cuda-test"]},
    "reforge": {"commit": "3b56b268ad9158ee8b30900973b6ccda4ec22241", "repositories": [LDM, SGM, KDIFF],
                "cpu_args": ["--always-cpu", "--skip-torch-cuda-test"]},
}

TORCH = ["torch==2.3.1", "torchvision==0.18.1"]

# Requirement lines replaced (prefix -> replacement, None drops it) and extra packages, per webui.
# Why: reForge pins a pydantic wheel on GitHub (only PyPI is reachable; 1.10.15 is the same version);
# the webuis install openai's CLIP from a GitHub zip at launch (PyPI's openai-clip is that code; its
# own pins are ancient, hence --no-deps); Forge imports joblib without requiring it.
RELAXED = {
    "a1111": {"replace": {}, "extra": [], "no_deps": ["openai-clip", "ftfy", "regex"]},
    "forge": {"replace": {}, "extra": ["joblib"], "no_deps": ["openai-clip", "ftfy", "regex"]},
    "reforge": {"replace": {"https://github.com/Panchovix/pydantic-fixreforge": "pydantic==1.10.15"},
                "extra": [], "no_deps": ["openai-clip", "ftfy", "regex"]},
}

CLIP_REPO = "openai/clip-vit-large-patch14"
# The model the tests use and a second SD1.5 (other weights) they use as the refiner.
CHECKPOINTS = {"skip-tuning-random-sd15.safetensors": 0, "skip-tuning-random-sd15-refiner.safetensors": 1}


def run(cmd, **kwargs):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def git_checkout(source: str, dest: Path, commit: str, paths=None) -> None:
    """Clone ``source`` into ``dest`` at ``commit`` (only ``paths`` when given)."""
    if not (dest / ".git").exists():
        run(["git", "clone", "--quiet", "--no-checkout", source, dest])
    if paths:
        run(["git", "-C", dest, "checkout", commit, "--", *paths])
        return
    missing = missing_files(dest, commit)
    if missing:  # a mirror without some large blobs: leave those files out rather than fail
        print(f"{dest.name}: leaving out files the source lacks: {', '.join(missing)}", flush=True)
        run(["git", "-C", dest, "sparse-checkout", "set", "--no-cone", "/*", *(f"!/{path}" for path in missing)])
    run(["git", "-C", dest, "-c", "advice.detachedHead=false", "checkout", "--quiet", commit])


def missing_files(repo: Path, commit: str) -> list[str]:
    """Files of ``commit`` whose contents the clone does not have."""
    tree = subprocess.run(["git", "-C", repo, "ls-tree", "-r", commit], check=True, capture_output=True,
                          text=True).stdout.splitlines()
    blobs = {line.split()[2]: line.split("\t", 1)[1] for line in tree if line.split()[1] == "blob"}
    check = subprocess.run(["git", "-C", repo, "cat-file", "--batch-check"], input="\n".join(blobs) + "\n",
                           check=True, capture_output=True, text=True).stdout.splitlines()
    return sorted(blobs[line.split()[0]] for line in check if line.endswith(" missing"))


def requirements(webui_dir: Path, webui: str) -> list[str]:
    """The webui's pinned requirements with RELAXED applied, torch left to TORCH."""
    lines = []
    for raw in (webui_dir / "requirements_versions.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line == "torch":
            continue
        for prefix, replacement in RELAXED[webui]["replace"].items():
            if line.startswith(prefix):
                line = replacement
                break
        if line:
            lines.append(line)
    return lines + RELAXED[webui]["extra"]


def make_venv(webui_dir: Path, webui: str, python: str) -> Path:
    venv = webui_dir / "venv"
    if not (venv / "bin" / "python").exists():
        run([python, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run([*pip, *TORCH])
    req_file = webui_dir / "skip_tuning_requirements.txt"
    req_file.write_text("\n".join(requirements(webui_dir, webui)) + "\n")
    run([*pip, "-r", req_file, *TORCH])  # repeating torch keeps a requirement from moving it
    run([*pip, "--no-deps", *RELAXED[webui]["no_deps"]])
    return venv


def hf_offline_cache(hf_home: Path, tokenizer_dir: Path, clip_config: Path) -> None:
    """openai/clip-vit-large-patch14's tokenizer and text config, laid out as a hub cache snapshot."""
    repo = hf_home / "hub" / ("models--" + CLIP_REPO.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in tokenizer_dir.iterdir():
        shutil.copy(path, snapshot / path.name)
    shutil.copy(clip_config, snapshot / "config.json")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("webui", choices=sorted(WEBUIS))
    parser.add_argument("--dest", required=True, type=Path, help="the checkout to create (outside this repository)")
    parser.add_argument("--commit", help="webui commit or tag (default: the tested one)")
    parser.add_argument("--name", help="name in test reports (default: WEBUI-COMMIT)")
    parser.add_argument("--git", action="append", default=[], metavar="NAME=URL",
                        help=f"clone NAME from URL instead of GitHub; NAME is one of {', '.join(SOURCES)}")
    parser.add_argument("--python", default="python3.11")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="CLIP's tokenizer files (vocab.json, merges.txt, tokenizer_config.json, ...)")
    parser.add_argument("--clip-config", type=Path, required=True, help="CLIP ViT-L/14 text model config.json")
    parser.add_argument("--checkpoints", type=Path,
                        help="folder for the two random-weight checkpoints (made there if missing, then linked "
                             "into the webui; share one between webuis); default: the webui's models folder")
    args = parser.parse_args(argv)

    sources = dict(SOURCES)
    for item in args.git:
        name, _, url = item.partition("=")
        if name not in sources or not url:
            parser.error(f"--git {item!r}: expected NAME=URL with NAME in {', '.join(SOURCES)}")
        sources[name] = url

    spec = WEBUIS[args.webui]
    commit = args.commit or spec["commit"]
    dest = args.dest.resolve()
    if EXTENSION_ROOT in dest.parents or dest == EXTENSION_ROOT:
        parser.error("--dest must be outside this repository")
    started = time.monotonic()

    git_checkout(sources[args.webui], dest, commit)
    commit = subprocess.run(["git", "-C", dest, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    for source, folder, repo_commit, paths in spec["repositories"]:
        git_checkout(sources[source], dest / "repositories" / folder, repo_commit, paths)
    # The UI serves files from the assets repository; an empty one is enough for the tests.
    (dest / "repositories" / "stable-diffusion-webui-assets").mkdir(parents=True, exist_ok=True)

    venv = make_venv(dest, args.webui, args.python)
    hf_home = dest / "skip_tuning_hf_home"
    hf_offline_cache(hf_home, args.tokenizer, args.clip_config)

    link = dest / "extensions" / "skip-tuning"
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(EXTENSION_ROOT, target_is_directory=True)

    models = dest / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    made = (args.checkpoints or models).resolve()
    for name, seed in CHECKPOINTS.items():
        if not (made / name).exists():
            ldm_root = dest / "repositories" / LDM[1]
            if not (ldm_root / "ldm").is_dir():
                ldm_root = dest / "skip_tuning_ldm"
                git_checkout(sources[LDM[0]], ldm_root, LDM[2], LDM[3])
            run([venv / "bin" / "python", HERE / "make_checkpoint.py", "--ldm", ldm_root,
                 "--clip-config", args.clip_config, "--seed", seed, "--out", made / name])
        if not (models / name).exists():
            (models / name).symlink_to(made / name)
    checkpoint = models / next(iter(CHECKPOINTS))

    config = {
        "name": args.name or f"{args.webui}-{commit[:8]}",
        "webui": args.webui,
        "commit": commit,
        "python": str(venv / "bin" / "python"),
        "args": ["--skip-prepare-environment", "--skip-version-check", "--skip-install", *spec["cpu_args"],
                 "--ckpt", str(checkpoint)],
        "env": {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        "setup_seconds": round(time.monotonic() - started),
    }
    (dest / "skip_tuning_webui.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"ready in {config['setup_seconds']} s: SKIP_TUNING_WEBUI_PATHS={dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
