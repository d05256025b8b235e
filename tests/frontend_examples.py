"""The example workflows, as specifications the browser tests can rebuild them from.

``SKIP_TUNING_UPDATE_DOCS=1 pytest tests/test_frontend.py`` builds each one in the real
front end (so the saved JSON is what the front end itself writes for the current nodes),
saves it to example_workflows/ and takes its thumbnail. Run it against the oldest ComfyUI
the pack supports (../shared/ComfyUI), so the saved JSON is in a format every newer front end
reads; normal runs only load them, in every front end and renderer tested.
"""

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
CHECKPOINTS = (SD15, SDXL)
POSITIVE = "a photograph of a lighthouse on a rocky coast at golden hour, detailed, sharp focus"
NEGATIVE = "blurry, low quality, watermark"


def _node(key, node_type, pos, widgets=None, **extra):
    return {"key": key, "type": node_type, "pos": pos, "widgets": widgets or {}, **extra}


def _ksampler(key, pos, cfg, title=None):
    widgets = {"seed": 42, "control_after_generate": "fixed", "steps": 8, "cfg": cfg,
               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    return _node(key, "KSampler", pos, widgets, **({"title": title} if title else {}))


def _prompts_and_latent(ckpt, size):
    return [
        _node("ckpt", "CheckpointLoaderSimple", [40, 80], {"ckpt_name": ckpt}),
        _node("pos", "CLIPTextEncode", [420, 40], {"text": POSITIVE}, size=[400, 150], title="Positive prompt"),
        _node("neg", "CLIPTextEncode", [420, 230], {"text": NEGATIVE}, size=[400, 120], title="Negative prompt"),
        _node("lat", "EmptyLatentImage", [420, 400], {"width": size, "height": size, "batch_size": 1}),
    ]


_PROMPT_LINKS = [["ckpt", "CLIP", "pos", "clip"], ["ckpt", "CLIP", "neg", "clip"]]


def _side_by_side(ckpt, size, cfg, prefix, preview_skips, note):
    nodes = _prompts_and_latent(ckpt, size) + [
        _node("st", "SkipTuning", [40, 300], {"rho_bottom": 0.8, "rho_top": 1.0},
              properties={"skip_profile_preview_skips": preview_skips}),
        _ksampler("ks_off", [880, 40], cfg, "KSampler: without Skip Tuning"),
        _ksampler("ks_on", [880, 380], cfg, "KSampler: with Skip Tuning"),
        _node("dec_off", "VAEDecode", [1220, 40]),
        _node("dec_on", "VAEDecode", [1220, 380]),
        _node("save_off", "SaveImage", [1440, 40], {"filename_prefix": f"skip_tuning/{prefix}_off"},
              size=[300, 320], title="Without Skip Tuning"),
        _node("save_on", "SaveImage", [1440, 380], {"filename_prefix": f"skip_tuning/{prefix}_on"},
              size=[300, 320], title="With Skip Tuning"),
        _node("note", "Note", [40, 560], {"text": note}, size=[780, 150]),
    ]
    links = _PROMPT_LINKS + [
        ["ckpt", "MODEL", "ks_off", "model"], ["ckpt", "MODEL", "st", "model"], ["st", "MODEL", "ks_on", "model"],
        ["pos", "CONDITIONING", "ks_off", "positive"], ["neg", "CONDITIONING", "ks_off", "negative"],
        ["pos", "CONDITIONING", "ks_on", "positive"], ["neg", "CONDITIONING", "ks_on", "negative"],
        ["lat", "LATENT", "ks_off", "latent_image"], ["lat", "LATENT", "ks_on", "latent_image"],
        ["ks_off", "LATENT", "dec_off", "samples"], ["ks_on", "LATENT", "dec_on", "samples"],
        ["ckpt", "VAE", "dec_off", "vae"], ["ckpt", "VAE", "dec_on", "vae"],
        ["dec_off", "IMAGE", "save_off", "images"], ["dec_on", "IMAGE", "save_on", "images"],
    ]
    return {"nodes": nodes, "links": links}


WORKFLOWS = {
    "1 - SD1.5 side by side": _side_by_side(
        SD15, 512, 7.0, "sd15", 12,
        "Skip Tuning, SD1.5, 8 steps: the same seed, sampler and prompt with and without Skip Tuning.\n\n"
        "Both KSamplers use seed 42 (fixed). The lower one gets the model through the Skip Tuning node, which "
        "scales the U-Net's 12 long skips from rho_bottom (deepest) to rho_top (highest resolution) before "
        "they are concatenated.\n\n"
        "Pick your SD1.5 checkpoint in Load Checkpoint, then try rho_bottom between 0.7 and 0.9. "
        "rho_bottom = rho_top = 1 is exactly the model without Skip Tuning.",
    ),
    "2 - SDXL side by side": _side_by_side(
        SDXL, 1024, 6.0, "sdxl", 9,
        "Skip Tuning, SDXL, 8 steps: the same seed with and without Skip Tuning.\n\n"
        "SDXL's U-Net has 9 long skips; the profile on the Skip Tuning node is set to preview 9 (right-click "
        "the node > Skip profile preview). At run time the node reads the count from the model.\n\n"
        "Pick your SDXL base checkpoint in Load Checkpoint, then try rho_bottom between 0.7 and 0.9.",
    ),
    "3 - Steps x rho grid": {
        "nodes": _prompts_and_latent(SD15, 512) + [
            _node("cmp", "SkipTuningCompare", [880, 40], {
                "seed": 42, "control_after_generate": "fixed", "sampler_name": "euler", "scheduler": "normal",
                "cfg": 7.0, "steps_list": "4, 8, 16", "rho_bottom_list": "1.0, 0.9, 0.8", "rho_top": 1.0}),
            _node("save", "SaveImage", [1240, 40], {"filename_prefix": "skip_tuning/compare_grid"},
                  size=[420, 420], title="Grid: rows rho_bottom, columns steps"),
            _node("diff", "PreviewImage", [1700, 40], size=[420, 420],
                  title="Differences: |tuned - baseline|, amplified as labelled"),
            _node("prev", "PreviewImage", [1240, 500], size=[420, 260], title="Every image (batch)"),
            _node("note", "Note", [40, 560], {"text": (
                "Skip Tuning Compare samples every (steps, rho_bottom) pair with the same seed and noise and lays "
                "them out as a labelled grid: one row per rho_bottom, one column per step count.\n\n"
                "rho_bottom 1.0 (with rho_top 1.0) is the model without Skip Tuning, so the first row is the "
                "baseline. The differences grid shows each tuned cell's amplified difference from the baseline "
                "of its column (the factor is in its label): where the eye finds no change in the grid, it shows "
                "what changed. The node uses ComfyUI's own sampler and the Skip Tuning node's patch; the progress "
                "bar covers the whole sweep and Cancel stops it within a step.\n\n"
                "3 x 3 = 9 images: 84 sampling steps in all.")}, size=[780, 180]),
        ],
        "links": _PROMPT_LINKS + [
            ["ckpt", "MODEL", "cmp", "model"], ["pos", "CONDITIONING", "cmp", "positive"],
            ["neg", "CONDITIONING", "cmp", "negative"], ["lat", "LATENT", "cmp", "latent"],
            ["ckpt", "VAE", "cmp", "vae"], ["cmp", "grid", "save", "images"], ["cmp", "images", "prev", "images"],
            ["cmp", "differences", "diff", "images"],
        ],
    },
    "4 - Window after FreeU": {
        "nodes": _prompts_and_latent(SD15, 512) + [
            _node("freeu", "FreeU_V2", [40, 260], {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2}),
            _node("st", "SkipTuningAdvanced", [40, 470], {
                "rho_bottom": 0.8, "rho_top": 1.0, "start_percent": 0.0, "end_percent": 0.6, "rho_per_skip": "",
                "scale_controlnet": True}),
            _ksampler("ks", [880, 40], 7.0),
            _node("dec", "VAEDecode", [1220, 40]),
            _node("save", "SaveImage", [1440, 40], {"filename_prefix": "skip_tuning/advanced_freeu"},
                  size=[320, 360]),
            _node("note", "Note", [420, 580], {"text": (
                "Skip Tuning (Advanced) after FreeU V2 (SD1.5 values 1.5 / 1.6 / 0.9 / 0.2).\n\n"
                "start_percent 0 and end_percent 0.6: the skips are scaled during the first 60% of sampling (the "
                "noisy part) and left alone for the rest. rho_per_skip (empty here) overrides the schedule with one "
                "value per skip, bottom to top. scale_controlnet decides whether a ControlNet's residuals on the "
                "skips are scaled too.\n\n"
                "Model patches run in graph order: FreeU first, then Skip Tuning. FreeU's skip filter is linear, "
                "so a uniform scale commutes with it.")}, size=[780, 170]),
        ],
        "links": _PROMPT_LINKS + [
            ["ckpt", "MODEL", "freeu", "model"], ["freeu", "MODEL", "st", "model"], ["st", "MODEL", "ks", "model"],
            ["pos", "CONDITIONING", "ks", "positive"], ["neg", "CONDITIONING", "ks", "negative"],
            ["lat", "LATENT", "ks", "latent_image"], ["ks", "LATENT", "dec", "samples"],
            ["ckpt", "VAE", "dec", "vae"], ["dec", "IMAGE", "save", "images"],
        ],
    },
}

# Builds a workflow from a specification in the page and frames it; returns what the
# front end saves (app.graph.serialize(), with the view in extra.ds).
BUILD_JS = r"""
(spec) => {
  app.graph.clear();
  const made = {};
  for (const s of spec.nodes) {
    const n = LiteGraph.createNode(s.type);
    if (!n) throw new Error('no node type ' + s.type);
    n.pos = s.pos;
    if (s.title) n.title = s.title;
    Object.assign(n.properties, s.properties || {});
    app.graph.add(n);
    for (const [k, v] of Object.entries(s.widgets)) {
      const w = s.type === 'Note' ? n.widgets[0] : n.widgets.find((w) => w.name === k);
      if (!w) throw new Error(s.type + ' has no widget ' + k);
      w.value = v;
    }
    if (s.size) {
      const min = n.computeSize();
      n.setSize([Math.max(s.size[0], min[0]), Math.max(s.size[1], min[1])]);
    }
    made[s.key] = n;
  }
  for (const [a, output, b, input] of spec.links) {
    const from = made[a], to = made[b];
    const oi = from.outputs.findIndex((o) => o.name === output || o.type === output);
    const ii = to.inputs.findIndex((i) => i.name === input);
    if (oi < 0 || ii < 0) throw new Error('cannot link ' + [a, output, b, input]);
    from.connect(oi, to, ii);
  }
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const vw = app.canvas.canvas.width, vh = app.canvas.canvas.height;
  const scale = Math.min(1, (vw - 40) / (x1 - x0), (vh - 40) / (y1 - y0));
  const offset = [(vw / scale - (x1 - x0)) / 2 - x0, (vh / scale - (y1 - y0)) / 2 - y0];
  app.canvas.ds.scale = scale; app.canvas.ds.offset = offset;
  app.graph.setDirtyCanvas(true, true);
  const workflow = app.graph.serialize();
  workflow.extra = { ...(workflow.extra || {}), ds: { scale, offset } };
  return workflow;
}
"""
