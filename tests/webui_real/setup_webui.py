#!/usr/bin/env python3
"""Build a real Automatic1111, Forge, reForge or SD.Next checkout for the real-webui test tier.

    python3 tests/webui_real/setup_webui.py forge --dest DIR --tokenizer DIR --clip-config FILE [--commit SHA]
        [--git NAME=URL ...]
    python3 tests/webui_real/setup_webui.py sdnext --dest DIR [--commit SHA] [--git sdnext=URL]

A1111, Forge, reForge: clones the webui and the code repositories it would clone at launch (sources
default to GitHub; ``--git NAME=URL`` points any of them at a mirror or local clone), makes a venv on
Python 3.11 with torch 2.3.1 and the webui's own requirements (the few pins that do not install
offline on 3.11 are replaced: see RELAXED), lays out the CLIP tokenizer as an offline Hugging Face
cache, links this extension into ``extensions/``, writes a random-weight SD1.5 checkpoint.

SD.Next: clones it, makes a venv with SDNEXT_PACKAGES (its installer would take diffusers and
transformers from git commits and add gradio and the rest at launch: the nearest PyPI releases are
installed instead, and the webui is started with ``--skip-all``), makes a data folder with this
extension and the test probe (tests/webui_real/sdnext_probe) in its ``extensions/`` and offline mode
on, and writes two random-weight SD1.5 diffusers folders (SD.Next ships their configs and tokenizer).

Either way it records how to start the webui in ``DIR/skip_tuning_webui.json`` (read by
tests/test_webui_real.py and tests/test_webui_real_sdnext.py). Nothing here needs the network at webui
start (``HF_HUB_OFFLINE``). Point the tests at the result with ``SKIP_TUNING_WEBUI_PATHS=DIR[:DIR...]``.
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
    "sdnext": "https://github.com/vladmandic/sdnext.git",
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

# SD.Next (diffusers only): the commit tested, and what its installer would put in the venv at launch, as the
# nearest PyPI releases. Its pins: diffusers 0.39.0.dev0 (git 01969142, 2026-06-29) and transformers 5.13.0.dev0
# (git b70d02fc), whose release needs tokenizers <= 0.23.0; gradio 3.43.2 and gradio-client 0.5.0 without their
# dependencies (install_gradio), plus what gradio, install_optional and SD.Next's start import (addict and yapf
# it would pip-install at its first start). requirements.txt is used as is but for its lint tools and the
# setuptools pin, which torch 2.14's setuptools requirement overrides (the pin is for Python >= 3.12).
SDNEXT_COMMIT = "058a7f0cf326f39c0135c6257d7b7e61073e51fd"
SDNEXT_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
SDNEXT_PACKAGES = [
    "diffusers==0.39.0", "transformers==5.13.0", "tokenizers==0.22.2", "fastapi==0.124.4", "websockets==17.4",
    "aiofiles==25.1.0", "ffmpy==1.0.0", "pydub==0.25.1", "uvicorn==0.55.0", "semantic-version==2.10.0",
    "altair==6.3.0", "python-multipart==0.0.34", "matplotlib==3.11.2", "importlib-resources==7.1.0",
    "pydantic==2.13.4", "compel==2.5.1", "scipy==1.17.1", "opencv-python-headless==4.13.0.92", "addict==2.4.0",
    "yapf==0.43.0",
]
SDNEXT_NO_DEPS = ["gradio==3.43.2", "gradio-client==0.5.0"]
SDNEXT_SKIPPED_REQUIREMENTS = ("ruff", "pylint", "pre-commit", "setuptools")
SDNEXT_MODELS = {"skip-tuning-random-sd15": 0, "skip-tuning-random-sd15-refiner": 1}
SDNEXT_PROBE = HERE / "sdnext_probe"

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


def setup_a1111_family(args, sources: dict, dest: Path) -> dict:
    """Check out A1111, Forge or reForge with its repositories, venv, offline tokenizer and checkpoints."""
    spec = WEBUIS[args.webui]
    git_checkout(sources[args.webui], dest, args.commit or spec["commit"])
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
    return {
        "python": str(venv / "bin" / "python"),
        "args": ["--skip-prepare-environment", "--skip-version-check", "--skip-install", *spec["cpu_args"],
                 "--ckpt", str(checkpoint)],
        "env": {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    }


def setup_sdnext(args, sources: dict, dest: Path) -> dict:
    """Check out SD.Next with its venv, a data folder (this extension, the probe, offline mode) and two models."""
    git_checkout(sources["sdnext"], dest, args.commit or SDNEXT_COMMIT)
    venv = dest / "venv"
    if not (venv / "bin" / "python").exists():
        run([args.python, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run([*pip, *SDNEXT_TORCH])
    lines = [line.split("#", 1)[0].strip() for line in (dest / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith(SDNEXT_SKIPPED_REQUIREMENTS)]
    req_file = dest / "skip_tuning_requirements.txt"
    req_file.write_text("\n".join(requirements + SDNEXT_PACKAGES) + "\n")
    run([*pip, "-r", req_file, *SDNEXT_TORCH])  # repeating torch keeps a requirement from moving it
    run([*pip, "--no-deps", *SDNEXT_NO_DEPS])

    data = dest / "skip_tuning_data"
    for name, target in (("skip-tuning", EXTENSION_ROOT), ("skip-tuning-probe", SDNEXT_PROBE)):
        link = data / "extensions" / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)
    config_file = data / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["offline_mode"] = True  # SD.Next clears HF_HUB_OFFLINE at every model load unless this is on
    config_file.write_text(json.dumps(config, indent=2) + "\n")

    models = dest / "skip_tuning_models"
    (models / "Diffusers").mkdir(parents=True, exist_ok=True)
    made = (args.checkpoints or models / "Diffusers").resolve()
    for name, seed in SDNEXT_MODELS.items():
        if not (made / name).exists():
            run([venv / "bin" / "python", HERE / "make_checkpoint.py", "--diffusers-configs", dest / "configs" / "sd15",
                 "--seed", seed, "--out", made / name])
        if not (models / "Diffusers" / name).exists():
            (models / "Diffusers" / name).symlink_to(made / name, target_is_directory=True)
    return {
        "python": str(venv / "bin" / "python"),
        "args": ["--skip-all", "--quick", "--data-dir", str(data), "--models-dir", str(models), "--use-cpu", "all",
                 "--ckpt", next(iter(SDNEXT_MODELS))],
        "env": {"HF_HOME": str(dest / "skip_tuning_hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        "versions": versions(venv, ("torch", "diffusers", "transformers", "gradio")),
    }


def versions(venv: Path, packages) -> dict:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    result = subprocess.run([venv / "bin" / "python", "-c", code, *packages], check=True, capture_output=True,
                            text=True)
    return json.loads(result.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("webui", choices=sorted([*WEBUIS, "sdnext"]))
    parser.add_argument("--dest", required=True, type=Path, help="the checkout to create (outside this repository)")
    parser.add_argument("--commit", help="webui commit or tag (default: the tested one)")
    parser.add_argument("--name", help="name in test reports (default: WEBUI-COMMIT)")
    parser.add_argument("--git", action="append", default=[], metavar="NAME=URL",
                        help=f"clone NAME from URL instead of GitHub; NAME is one of {', '.join(SOURCES)}")
    parser.add_argument("--python", default="python3.11")
    parser.add_argument("--tokenizer", type=Path,
                        help="A1111/Forge/reForge: CLIP's tokenizer files (vocab.json, merges.txt, ...)")
    parser.add_argument("--clip-config", type=Path, help="A1111/Forge/reForge: CLIP ViT-L/14 text model config.json")
    parser.add_argument("--checkpoints", type=Path,
                        help="folder for the two random-weight models (made there if missing, then linked into the "
                             "webui; share one between webuis of a kind); default: the webui's models folder")
    args = parser.parse_args(argv)
    if args.webui != "sdnext" and (args.tokenizer is None or args.clip_config is None):
        parser.error(f"{args.webui} needs --tokenizer and --clip-config")

    sources = dict(SOURCES)
    for item in args.git:
        name, _, url = item.partition("=")
        if name not in sources or not url:
            parser.error(f"--git {item!r}: expected NAME=URL with NAME in {', '.join(SOURCES)}")
        sources[name] = url

    dest = args.dest.resolve()
    if EXTENSION_ROOT in dest.parents or dest == EXTENSION_ROOT:
        parser.error("--dest must be outside this repository")
    started = time.monotonic()
    setup = setup_sdnext if args.webui == "sdnext" else setup_a1111_family
    launch = setup(args, sources, dest)
    commit = subprocess.run(["git", "-C", dest, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    config = {
        "name": args.name or f"{args.webui}-{commit[:8]}",
        "webui": args.webui,
        "commit": commit,
        **launch,
        "setup_seconds": round(time.monotonic() - started),
    }
    (dest / "skip_tuning_webui.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"ready in {config['setup_seconds']} s: SKIP_TUNING_WEBUI_PATHS={dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
