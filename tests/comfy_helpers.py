"""Helpers for tests that run Skip Tuning inside a real ComfyUI checkout.

Shared by every ComfyUI test module (and by ``comfy_test_nodes``, the test-only node
pack a server test installs next to the extension):

* ``find_comfyui`` / ``import_comfyui``: locate the checkout (env ``COMFYUI_PATH``,
  else ``~/ComfyUI``, else ``shared/ComfyUI`` beside the repository) and make ``comfy``
  importable in this process.
* ``load_pack``: import the repository the way ComfyUI imports a custom node pack.
* ``build_tiny_unet`` / ``build_tiny_flux``: tiny models made of ComfyUI's own classes
  (``UNetModel`` in ``BaseModel``, ``Flux``) wrapped in a ``ModelPatcher``, with seeded
  random weights, for 12-, 9- and 6-skip U-Nets (one without a middle block).
* ``skip_probe`` / ``sample``: record the skips output blocks receive while sampling
  through ``comfy.sample.sample``.
* ``comfyui_server``: start ``main.py --cpu`` on a free port with a temporary base
  directory whose ``custom_nodes`` holds the given packs; always stopped afterwards.

Nothing here is imported by the extension itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import torch

TESTS_DIR = Path(os.path.realpath(__file__)).parent
REPO_ROOT = TESTS_DIR.parent
TEST_NODES_DIR = TESTS_DIR / "comfy_test_nodes"
PACK_NAME = "skip_tuning_pack"  # module name used when tests import the repository as a node pack

CONTEXT_DIM = 32
CONTEXT_TOKENS = 4
POOLED_DIM = 16
LATENT_CHANNELS = 4

# Tiny U-Nets with the block structure of real families (channel widths shrunk to 32/64/128).
# transformer_depth lists one entry per input res block, transformer_depth_output one per output block.
TINY_UNETS = {
    "sd1": {  # SD1.x/SD2.x layout: 4 levels x 2 res blocks -> 12 long skips
        "channel_mult": (1, 2, 4, 4),
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
    },
    "sdxl": {  # SDXL/SSD-1B/Vega layout: 3 levels x 2 res blocks -> 9 long skips
        "channel_mult": (1, 2, 4),
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 1, 1, 2, 2],
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
    },
    "koala": {  # KOALA-1B-like: 3 levels x 1 res block -> 6 long skips, with a middle block
        "channel_mult": (1, 2, 4),
        "num_res_blocks": [1, 1, 1],
        "transformer_depth": [0, 1, 1],
        "transformer_depth_output": [0, 0, 1, 1, 1, 1],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
    },
    "sdxs": {  # KOALA-700M/SD-XS-like: 6 long skips and no middle block (h is hsp at block 0)
        "channel_mult": (1, 2, 4),
        "num_res_blocks": [1, 1, 1],
        "transformer_depth": [0, 1, 1],
        "transformer_depth_output": [0, 0, 1, 1, 1, 1],
        "transformer_depth_middle": -2,
        "use_linear_in_transformer": True,
    },
}
TINY_UNET_SKIPS = {"sd1": 12, "sdxl": 9, "koala": 6, "sdxs": 6}

# Filled by the integration tests, printed in pytest's terminal summary (see conftest.py).
MEASURED_RHOS: dict = {}
MEASURED_WINDOWS: dict = {}


# ---------------------------------------------------------------------------------------------
# Locating and importing ComfyUI


def find_comfyui() -> Path | None:
    """The ComfyUI checkout at COMFYUI_PATH, else ~/ComfyUI, else shared/ComfyUI beside the repository."""
    from skip_tuning_demo import comfy_import  # not at module level: the test server loads this file alone

    path = comfy_import.comfyui_path()
    return Path(path) if path else None


def comfyui_missing_reason() -> str:
    from skip_tuning_demo import comfy_import

    where = " or ".join(comfy_import.comfyui_candidates())
    return f"no ComfyUI checkout found at {where} (set COMFYUI_PATH to use another)"


def import_comfyui(path: Path) -> None:
    """Put the checkout first on sys.path and import what the in-process tests use.

    ComfyUI's top-level modules (``nodes``, ``utils``, ``server``) must win over anything
    else on sys.path; the extension itself is only ever imported as a package (``load_pack``).
    """
    path_str = str(path)
    if path_str in sys.path:
        sys.path.remove(path_str)
    sys.path.insert(0, path_str)
    import comfy.options

    comfy.options.enable_args_parsing(False)  # never parse pytest's argv
    import comfy.cli_args

    if not torch.cuda.is_available() or os.environ.get("SKIP_TUNING_TEST_CPU"):
        comfy.cli_args.args.cpu = True  # what main.py --cpu does; must precede comfy.model_management
    import comfy.model_base  # noqa: F401
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.supported_models_base  # noqa: F401


def load_pack(name: str = PACK_NAME, root: Path = REPO_ROOT):
    """Import the repository as a custom node pack, the way ComfyUI's loader does."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    # The host-free ComfyUI adapters, reachable as pack.skip_tuning.comfyui.<module> (the nodes module needs
    # ComfyUI's comfy_api and is imported by comfy_entrypoint).
    for adapter in ("adapter", "compare", "residual"):
        importlib.import_module(f"{name}.skip_tuning.comfyui.{adapter}")
    return module


# ---------------------------------------------------------------------------------------------
# Tiny models


def _seeded_init(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip weight init; fill every parameter from a seeded generator instead."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                value = noise / math.sqrt(param[0].numel())
            elif name.endswith("weight"):
                value = 1.0 + 0.1 * noise  # norm scales
            else:
                value = 0.1 * noise
            param.copy_(value.to(param.dtype))


def tiny_unet_config(kind: str = "sd1", dtype: torch.dtype = torch.float32) -> dict:
    layout = TINY_UNETS[kind]
    return {
        "image_size": 32,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "model_channels": 32,
        "context_dim": CONTEXT_DIM,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_heads": -1,
        "num_head_channels": 32,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "dtype": dtype,
        **{key: (list(value) if isinstance(value, list) else value) for key, value in layout.items()},
    }


def _patcher(model):
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def build_tiny_unet(kind: str = "sd1", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ModelPatcher around ComfyUI's BaseModel(EPS) with a tiny UNetModel of the given layout."""
    import comfy.model_base
    import comfy.supported_models_base

    class TinyUNet(comfy.supported_models_base.BASE):
        unet_extra_config = {}
        supported_inference_dtypes = [torch.float32, torch.float16, torch.bfloat16]

    config = TinyUNet(tiny_unet_config(kind, dtype))
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS)
    _seeded_init(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def build_tiny_flux(seed: int = 0, depth: int = 1, depth_single_blocks: int = 1, dtype: torch.dtype = torch.float32):
    """A ModelPatcher around ComfyUI's Flux model (a DiT without long skips), tiny."""
    import comfy.supported_models

    unet_config = {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": POOLED_DIM,
        "context_in_dim": CONTEXT_DIM,
        "hidden_size": 64,
        "mlp_ratio": 2.0,
        "num_heads": 2,
        "depth": depth,
        "depth_single_blocks": depth_single_blocks,
        "axes_dim": [8, 12, 12],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": False,
        "dtype": dtype,
        **_flux_params_added_since_0_3_64(),
    }
    config = comfy.supported_models.Flux(unet_config)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    _seeded_init(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def _flux_params_added_since_0_3_64() -> dict:
    """Required ``FluxParams`` fields that later ComfyUIs added, at what Flux.1 uses (none on 0.3.64)."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    fields = {field.name for field in dataclasses.fields(FluxParams)}
    return {"txt_ids_dims": []} if "txt_ids_dims" in fields else {}  # 2026: Flux.2 puts text ids on some axes


def build_tiny_sd3(seed: int = 0, depth: int = 3):
    """A ModelPatcher around ComfyUI's SD3 model (MMDiT: joint blocks, no long skips), tiny (width 64 * depth)."""
    import comfy.supported_models

    unet_config = {
        "in_channels": 16,
        "patch_size": 2,
        "depth": depth,
        "adm_in_channels": POOLED_DIM,
        "pos_embed_max_size": 16,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": CONTEXT_DIM, "out_features": 64 * depth}},
    }
    config = comfy.supported_models.SD3(unet_config)
    model = config.get_model({})
    _seeded_init(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


# Tiny U-ViTs of ComfyUI's own classes, with the released models' skip counts (depth 40 and 21).
TINY_UVIT_SKIPS = {"hunyuan_dit": 19, "hunyuan3d_2_1": 10}
HUNYUAN3D_CHANNELS = 64
HUNYUAN3D_TOKENS = 8


def build_tiny_hunyuan_dit(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ModelPatcher around ComfyUI's HunyuanDiT (1.x layout: depth 40, 19 long skips), tiny."""
    import comfy.supported_models

    unet_config = {
        "image_model": "hydit",
        "input_size": 8,
        "patch_size": 2,
        "in_channels": LATENT_CHANNELS,
        "hidden_size": 32,
        "depth": 40,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "text_states_dim": CONTEXT_DIM,
        "text_states_dim_t5": CONTEXT_DIM,
        "text_len": CONTEXT_TOKENS,
        "text_len_t5": CONTEXT_TOKENS,
        "dtype": dtype,
    }
    config = comfy.supported_models.HunyuanDiT(unet_config)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    _seeded_init(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def build_tiny_hunyuan3d(seed: int = 0, num_moe_layers: int = 2, depth: int = 21):
    """A ModelPatcher around ComfyUI's Hunyuan3D 2.1 DiT (depth 21: 10 long skips, MoE tail), tiny.
    ``num_moe_layers=0`` leaves out the MoE tail, whose routing (bincount) breaks a compiled graph; a smaller
    ``depth`` (7: 3 long skips) keeps inductor's compile short."""
    import comfy.supported_models

    unet_config = {
        "image_model": "hunyuan3d2_1",
        "in_channels": HUNYUAN3D_CHANNELS,
        "hidden_size": 32,
        "context_dim": CONTEXT_DIM,
        "depth": depth,
        "num_heads": 2,
        "num_moe_layers": num_moe_layers,
        "num_experts": 2,
        "moe_top_k": 1,
        "guidance_cond_proj_dim": None,
    }
    config = comfy.supported_models.Hunyuan3Dv2_1(unet_config)
    model = config.get_model({})
    _seeded_init(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def hunyuan_dit_conditioning(seed: int = 1) -> list:
    """A CONDITIONING for the tiny HunyuanDiT: CLIP-like tokens plus its mT5 tokens and masks."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM, generator=generator)
    t5 = torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM, generator=generator)
    mask = torch.ones(1, CONTEXT_TOKENS, dtype=torch.long)
    return [[context, {"attention_mask": mask, "conditioning_mt5xl": t5, "attention_mask_mt5xl": mask}]]


def sample_hunyuan3d(model, steps: int = 4, cfg: float = 3.0, seed: int = 0):
    """Sample the tiny Hunyuan3D 2.1 (its forward splits cond/uncond, so cfg must not be 1)."""
    import comfy.sample

    generator = torch.Generator().manual_seed(seed + 100)
    positive = [[torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM, generator=generator), {}]]
    negative = [[torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM, generator=generator), {}]]
    latent = torch.zeros(1, HUNYUAN3D_CHANNELS, HUNYUAN3D_TOKENS)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                   seed=seed, disable_pbar=True)


@contextlib.contextmanager
def uvit_skip_probe(model):
    """Record, for every U-ViT forward, each skip as pushed and as its consuming block receives it.

    Yields a list of calls; each call is a dict skip index (0 = deepest) -> (pushed, received).
    Hooks sit on the base network's blocks only while the context is open. Blocks 0..n-1 push
    (HunyuanDiT and Hunyuan3D 2.1 alike) and block depth // 2 + 1 + i consumes skip i, so skip i
    is the output of block n - 1 - i.
    """
    network = model.model.diffusion_model
    depth = len(network.blocks)
    first_popping = depth // 2 + 1
    n_skips = depth - first_popping
    calls = []
    pushed = {}
    handles = []

    def on_push(block_index):
        def hook(module, args, output):
            if block_index == 0:
                calls.append({})
                pushed.clear()
            pushed[n_skips - 1 - block_index] = output.detach().clone()
        return hook

    def on_consume(skip_index):
        def hook(module, args, kwargs):
            received = kwargs.get("skip_tensor", args[4] if len(args) > 4 else kwargs.get("skip"))
            calls[-1][skip_index] = (pushed[skip_index], received.detach().clone())
        return hook

    try:
        for index in range(n_skips):
            handles.append(network.blocks[index].register_forward_hook(on_push(index)))
            handles.append(network.blocks[first_popping + index].register_forward_pre_hook(
                on_consume(index), with_kwargs=True))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def tiny_conditioning(seed: int = 1, extra: dict | None = None) -> list:
    """A CONDITIONING value for the tiny models: [[context, {"pooled_output": ..., **extra}]]."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM, generator=generator)
    pooled = torch.randn(1, POOLED_DIM, generator=generator)  # used by the tiny Flux, ignored by the U-Nets
    return [[context, {"pooled_output": pooled, **(extra or {})}]]


def sample(model, positive=None, negative=None, steps: int = 6, cfg: float = 3.0, seed: int = 0,
           sampler: str = "euler", scheduler: str = "simple", size: int = 8, channels: int = LATENT_CHANNELS):
    """Sample through comfy.sample.sample (what KSampler does), under inference mode."""
    import comfy.sample

    positive = tiny_conditioning(1) if positive is None else positive
    negative = tiny_conditioning(2) if negative is None else negative
    latent = torch.zeros(1, channels, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                                   seed=seed, disable_pbar=True)


def skip_probe(model):
    """Clone ``model`` and append an output-block patch that records what each block passes on.

    Returns (clone, records); records is a list of dicts with block index, sigma, h and hsp
    (copies). A plain closure, because ModelPatcher.clone() deep-copies callable objects.
    """
    records = []

    def probe(h, hsp, transformer_options):
        sigmas = transformer_options.get("sigmas")
        records.append({
            "block": transformer_options["block"][1],
            "sigma": float(sigmas.reshape(-1)[0]) if sigmas is not None else None,
            "h": h.detach().clone(),
            "hsp": hsp.detach().clone(),
            "h_is_hsp": h is hsp,
        })
        return h, hsp

    clone = model.clone()
    clone.set_model_output_block_patch(probe)
    return clone, records


# ---------------------------------------------------------------------------------------------
# A ComfyUI server in a subprocess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyUIServer:
    """A running ``main.py --cpu``; JSON helpers for its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen, base_directory: Path, log_path: Path):
        self.url = url
        self.process = process
        self.base_directory = base_directory
        self.log_path = log_path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, payload=None, timeout: float = 60.0):
        """(status, parsed JSON or text) for one request; HTTP errors are returned, not raised."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def get_json(self, path: str):
        status, body = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {body}")
        return body

    def queue_prompt(self, graph: dict):
        """POST /prompt; (status, body). 200 has prompt_id, 400 has error and node_errors."""
        return self.request("POST", "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})

    def run_prompt(self, graph: dict, timeout: float = 180.0) -> dict:
        """Queue a graph and wait for its history entry (completed or failed)."""
        status, body = self.queue_prompt(graph)
        if status != 200:
            raise AssertionError(f"/prompt rejected the graph ({status}): {body}")
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry:  # written when the prompt has finished, successfully or not
                return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited while running the prompt:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()[-4000:]}")


@contextlib.contextmanager
def comfyui_server(comfyui_path: Path, base_directory: Path, packs: dict, startup_timeout: float = 240.0,
                   extra_args: tuple = ()):
    """Start ComfyUI's main.py on CPU with ``packs`` ({folder name: source dir}) in custom_nodes.

    The packs are symlinked (copied where links are unavailable). The server is stopped, its
    whole process group killed if need be, when the block exits, whatever happens inside it.
    """
    base_directory = Path(base_directory)
    custom_nodes = base_directory / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    for folder, source in packs.items():
        target = custom_nodes / folder
        if not target.exists():
            try:
                target.symlink_to(Path(source).resolve(), target_is_directory=True)
            except OSError:
                import shutil

                shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git", "__pycache__"))

    port = free_port()
    log_path = base_directory / "comfyui-server.log"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               *_directory_args(Path(comfyui_path), base_directory), *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=str(comfyui_path), stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = ComfyUIServer(f"http://127.0.0.1:{port}", process, base_directory, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during startup (rc {process.returncode}):\n{server.log()[-6000:]}")
            try:
                with urllib.request.urlopen(server.url + "/system_stats", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not start in {startup_timeout} s:\n{server.log()[-6000:]}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(process)


def _directory_args(comfyui_path: Path, base_directory: Path) -> list:
    """Point the server at base_directory: --base-directory where it exists (2025), else the older flags."""
    cli_args = (comfyui_path / "comfy" / "cli_args.py").read_text(errors="replace")
    args = []
    if "--base-directory" in cli_args:
        args += ["--base-directory", str(base_directory)]
    else:  # ComfyUI from 2024: custom_nodes through an extra paths file, the rest through their own flags
        config = base_directory / "extra_model_paths.yaml"
        config.write_text(f"skip_tuning_tests:\n    base_path: {json.dumps(str(base_directory))}\n"
                          "    custom_nodes: custom_nodes\n")
        args += ["--extra-model-paths-config", str(config)]
        for name in ("output", "input", "temp"):
            (base_directory / name).mkdir(exist_ok=True)
            args += [f"--{name}-directory", str(base_directory / name)]
    if "--database-url" in cli_args:
        args += ["--database-url", "sqlite:///:memory:"]
    return args


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)  # its own session: the group is the server and its children only
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
