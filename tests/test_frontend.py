"""The extension in ComfyUI's real front end, driven in headless Chromium.

Starts ComfyUI's server (main.py --cpu) with the pack installed, opens the front end
the server ships, and checks what a user sees: the nodes can be added from the search
box, the rho profile drawn on the Skip Tuning nodes follows a slider while it moves
(read back from the canvas pixels), the per-skip override and the preview size are
drawn, a saved workflow keeps its values, every example workflow loads with no missing
node and passes the server's validation, and the browser console shows no error from
the pack. Also one /prompt run of the Compare node on a tiny test model.

Skipped, with the reason, when ComfyUI, Chromium or aiohttp is missing.
Screenshots go to a temporary folder; SKIP_TUNING_UPDATE_DOCS=1 also writes the ones
the repository ships (docs/screenshots/*.png, example_workflows/*.jpg).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import comfy_helpers
import pytest
from frontend_browser import BrowserError, Chromium, find_chromium
from frontend_examples import BUILD_JS, CHECKPOINTS, WORKFLOWS

pytestmark = [pytest.mark.comfyui, pytest.mark.comfyui_server]

PACK = "skip-tuning"  # the pack's folder in custom_nodes, as conftest installs it
FRONTEND_TEST_NODES = comfy_helpers.TESTS_DIR / "comfy_test_nodes_frontend"
UPDATE_DOCS = os.environ.get("SKIP_TUNING_UPDATE_DOCS", "") not in ("", "0")
DOCS_SCREENSHOTS = comfy_helpers.REPO_ROOT / "docs" / "screenshots"
EXAMPLES = comfy_helpers.REPO_ROOT / "example_workflows"
# What identifies an error as ours in the console: our files, our nodes, our extension.
OUR_NEEDLES = (f"/extensions/{PACK}/", "skip_tuning", "SkipTuning", "Skip Tuning", "skip profile")

BAR_BLUE = (0x5B, 0x9B, 0xD5)  # rho < 1 in js/skip_tuning.js
BAR_GREY = (0x8A, 0x8A, 0x8A)  # rho = 1
BAR_ORANGE = (0xE0, 0x91, 0x3A)  # rho > 1

# Helpers installed in the page: coordinates, pixels, widgets.
PAGE_HELPERS = r"""
window.__st = {
  node(type) { return app.graph.nodes.find((n) => n.type === type); },
  widget(node, name) { return node.widgets.find((w) => w.name === name); },
  // Client (CSS) coordinates of a point given in node coordinates.
  client(node, x, y) {
    const c = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + x, node.pos[1] + y]);
    const r = app.canvas.canvas.getBoundingClientRect();
    const k = r.width / app.canvas.canvas.width * (window.devicePixelRatio || 1);
    return [r.left + c[0] * k, r.top + c[1] * k];
  },
  sliderPoint(node, name, value) {
    const w = this.widget(node, name), lo = w.options.min, hi = w.options.max;
    const x = 15 + (node.size[0] - 30) * (value - lo) / (hi - lo);
    return this.client(node, x, w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2);
  },
  widgetCenter(node, name) {
    const w = this.widget(node, name);
    return this.client(node, node.size[0] / 2, w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2);
  },
  // Redraw now and return the RGB of the canvas pixel under a node point.
  pixel(node, x, y, redraw = true) {
    if (redraw) app.canvas.draw(true, true);
    const c = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + x, node.pos[1] + y]);
    const dpr = window.devicePixelRatio || 1;
    const context = app.canvas.canvas.getContext("2d");
    const d = context.getImageData(Math.round(c[0] * dpr), Math.round(c[1] * dpr), 1, 1).data;
    return [d[0], d[1], d[2]];
  },
  // The profile as drawn, with canvas pixels sampled inside the top of each bar and above it.
  profile(node) {
    app.canvas.draw(true, true);
    const p = node.skipTuningProfile;
    if (!p) return null;
    const bars = p.bars.map((b) => ({ ...b,
      inside: this.pixel(node, b.x + b.w / 2, b.y + Math.min(2, b.h / 2), false),
      above: this.pixel(node, b.x + b.w / 2, b.y - 3, false) }));
    return { ...p, bars };
  },
  view(x, y, scale = 1) {
    app.canvas.ds.scale = scale; app.canvas.ds.offset = [x, y]; app.graph.setDirtyCanvas(true, true);
  },
};
true;
"""


def _unavailable(reason: str):
    if os.environ.get("SKIP_TUNING_REQUIRE_COMFYUI", "") not in ("", "0") and "Chromium" not in reason:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_executable():
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found for the browser tests (install Debian's `chromium` or set CHROMIUM_PATH)")
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        _unavailable("aiohttp (a ComfyUI requirement) is needed to drive Chromium")
    return path


@pytest.fixture(scope="module")
def server(request, comfyui_path, tmp_path_factory):
    """ComfyUI with the pack, the tiny test models and the test VAE node.

    Uses the session's server when it already has the test VAE (conftest installs
    tests/comfy_test_nodes_frontend), else starts one of its own with it.
    """
    shared = request.getfixturevalue("comfyui_server")
    if shared.request("GET", "/object_info/SkipTuningTestVAE")[1]:
        yield shared
        return
    base = tmp_path_factory.mktemp("comfyui_frontend_base")
    packs = {PACK: comfy_helpers.REPO_ROOT, "skip_tuning_test_nodes": comfy_helpers.TEST_NODES_DIR,
             "skip_tuning_frontend_test_nodes": FRONTEND_TEST_NODES}
    try:
        context = comfy_helpers.comfyui_server(comfyui_path, base, packs)
        own = context.__enter__()
    except RuntimeError as error:
        _unavailable(f"ComfyUI server did not start: {error}")
    try:
        yield own
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def prepared_server(server):
    """Empty files with the example workflows' checkpoint names, so the loaders' lists hold them,
    and settings that keep first-run dialogs out of the way."""
    checkpoints = Path(server.base_directory) / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINTS:
        (checkpoints / name).touch()
    status, body = server.request("POST", "/api/settings",
                                  {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                   "Comfy.Graph.CanvasInfo": False})
    assert status == 200, body
    info = server.get_json("/object_info")
    for node in ("SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "SkipTuningTestVAE"):
        assert node in info, f"{node} is not registered; server log:\n{server.log()[-3000:]}"
    if "UpscaleModelLoader" not in info:
        # Front end 1.27 cannot create any checkpoint loader when this core node is missing.
        _unavailable("ComfyUI's UpscaleModelLoader did not load (pip install spandrel, a ComfyUI requirement)")
    return server


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("frontend_screenshots")


@pytest.fixture(scope="module")
def page(prepared_server, chromium_executable):
    with Chromium(chromium_executable) as browser:
        browser.navigate(prepared_server.url + "/")
        try:
            browser.wait_for("!!(window.app && app.graph && app.canvas && window.LiteGraph"
                             " && LiteGraph.registered_node_types.SkipTuning)", timeout=120)
            browser.evaluate(PAGE_HELPERS)
            # The extension is loaded when a new Skip Tuning node gets the profile widget.
            browser.wait_for("(() => { const n = LiteGraph.createNode('SkipTuning');"
                             " return !!n.widgets.find((w) => w.name === 'skip_profile'); })()", timeout=60)
        except BrowserError as error:
            raise AssertionError(f"{error}\nconsole: {browser.console[-20:]}") from None
        browser.evaluate("document.activeElement && document.activeElement.blur(); true")
        yield browser


def _screenshot(page, artifacts, name, clip=None, docs=False):
    path = page.screenshot(str(artifacts / f"{name}.png"), clip=clip)
    if docs and UPDATE_DOCS:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / f"{name}.png")
    return path


def _node_clip(page, node_type, margin=12):
    """Screenshot clip (client coordinates) around a node, title bar and source badge included."""
    return _clip(page, f"[__st.node({json.dumps(node_type)})]", margin)


def _clip(page, nodes_expression="app.graph.nodes", margin=12):
    x0, y0, x1, y1 = page.evaluate(f"""(() => {{
        let box = [Infinity, Infinity, -Infinity, -Infinity];
        for (const n of {nodes_expression}) {{
            const a = __st.client(n, 0, -LiteGraph.NODE_TITLE_HEIGHT - 18), b = __st.client(n, n.size[0], n.size[1]);
            box = [Math.min(box[0], a[0]), Math.min(box[1], a[1]), Math.max(box[2], b[0]), Math.max(box[3], b[1])];
        }}
        return box; }})()""")
    x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
    return {"x": x0, "y": y0, "width": x1 + margin - x0, "height": y1 + margin - y0}


def _click_menu_entry(page, text):
    """Click the entry of the open LiteGraph context menu that contains ``text``."""
    find = (f"(() => {{ const e = [...document.querySelectorAll('.litemenu-entry')].find((e) =>"
            f" e.textContent.includes({json.dumps(text)})); if (!e) return null;"
            f" const r = e.getBoundingClientRect(); return [r.left + 10, r.top + r.height / 2]; }})()")
    at = page.wait_for(find, timeout=10)
    page.mouse("mouseMoved", *at)
    page.mouse("mousePressed", *at, buttons=1)
    page.mouse("mouseReleased", *at)


def _press_key(page, key, code=None, vk=0):
    for kind in ("keyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code or key,
                                             "windowsVirtualKeyCode": vk})


def _add_from_search(page, display_name, at):
    """Double-click the empty canvas, type the node's display name, press Enter: as a user does."""
    opened = "!!document.activeElement && document.activeElement.placeholder === 'Search Nodes...'"
    for _attempt in range(3):
        time.sleep(0.5)  # not part of an earlier click
        page.mouse("mouseMoved", *at)
        for count in (1, 2):
            page.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": at[0], "y": at[1],
                                                   "button": "left", "buttons": 1, "clickCount": count})
            page.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": at[0], "y": at[1],
                                                   "button": "left", "buttons": 0, "clickCount": count})
        try:
            page.wait_for(opened, timeout=5)
            break
        except BrowserError:
            continue
    else:
        raise AssertionError("double-clicking the canvas did not open the node search box")
    page.send("Input.insertText", {"text": display_name})
    page.wait_for(f"[...document.querySelectorAll('[role=option]')].some((o) => o.textContent.includes("
                  f"{json.dumps(display_name)}))", timeout=15)
    _press_key(page, "Enter", vk=13)


# ---------------------------------------------------------------------------------------------


def test_nodes_are_added_from_the_search_box(page, artifacts):
    page.evaluate("app.graph.clear(); __st.view(0, 0); true")
    for display_name, at in (("Skip Tuning", (150, 150)), ("Skip Tuning (Advanced)", (560, 150)),
                             ("Skip Tuning Compare", (960, 150))):
        before = page.evaluate("app.graph.nodes.length")
        _add_from_search(page, display_name, at)
        page.wait_for(f"app.graph.nodes.length === {before + 1}", timeout=15)
    types = page.evaluate("app.graph.nodes.map((n) => n.type)")
    assert types == ["SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare"]

    # The profile widget is on both Skip Tuning nodes, never sent with the prompt.
    widgets = page.evaluate("Object.fromEntries(app.graph.nodes.map((n) => [n.type, n.widgets.map((w) => w.name)]))")
    assert widgets["SkipTuning"] == ["rho_bottom", "rho_top", "skip_profile"]
    assert widgets["SkipTuningAdvanced"][-1] == "skip_profile"
    assert "skip_profile" not in widgets["SkipTuningCompare"]
    defaults = page.evaluate("(() => { const n = __st.node('SkipTuning');"
                             " return [__st.widget(n, 'rho_bottom').value, __st.widget(n, 'rho_top').value,"
                             " __st.widget(n, 'rho_bottom').type, __st.widget(n, 'rho_bottom').options.step2"
                             " ?? __st.widget(n, 'rho_bottom').options.step]; })()")
    assert defaults[:3] == [1.0, 1.0, "slider"]
    _screenshot(page, artifacts, "nodes_added")


def test_profile_math_in_the_browser_equals_the_core(page):
    from skip_tuning_core import SkipTuningError, parse_rho_list, rho_schedule

    cases = [(n, bottom, top) for n in (1, 2, 6, 9, 12, 19) for bottom, top in
             ((0.8, 1.0), (1.0, 1.0), (0.0, 2.0), (1.3, 0.7), (0.55, 1.05), (0.1, 0.3))]
    got = page.evaluate(f"""(async () => {{
        const m = await import('/extensions/{PACK}/skip_tuning_profile.js');
        return {json.dumps(cases)}.map(([n, b, t]) => m.rhoSchedule(n, b, t)); }})()""")
    for (n, bottom, top), rhos in zip(cases, got):
        assert tuple(rhos) == rho_schedule(n, bottom, top), (n, bottom, top)  # bit for bit

    texts = ["", "  ", "0.8, 0.9, 1", "0.8;0.9; 1.0", "[0.5, 1.5]", "(1, 2)", "1e-1, .5, 2.", "0.8,,1", "0.8, x",
             "2.5", "-0.1", "1, ", "nan", "inf", "0x1"]
    parsed = page.evaluate(f"""(async () => {{
        const m = await import('/extensions/{PACK}/skip_tuning_profile.js');
        return {json.dumps(texts)}.map((t) => m.parseRhoList(t)); }})()""")
    for text, result in zip(texts, parsed):
        try:
            expected = list(parse_rho_list(text))
        except SkipTuningError:
            expected = None
        if expected is None:
            assert "error" in result, (text, result)
        else:
            assert result == {"values": expected}, (text, result)


def test_residual_block_factors_in_the_browser_equal_the_core(page):
    from skip_tuning_core import block_factors

    cases = [(n, first, last, depth) for n in (1, 12, 24, 38, 57) for first, last in ((0.96, 1.0), (1.0, 0.9),
             (1.05, 1.05)) for depth in (0.0, 0.15, 0.5, 0.95)]
    got = page.evaluate(f"""(async () => {{
        const m = await import('/extensions/{PACK}/skip_tuning_profile.js');
        return {json.dumps(cases)}.map(([n, f, l, d]) => m.blockFactors(n, f, l, d)); }})()""")
    for (n, first, last, depth), rhos in zip(cases, got):
        assert tuple(rhos) == block_factors(n, first, last, depth), (n, first, last, depth)  # bit for bit


def test_the_residual_node_draws_one_bar_per_block(page, artifacts):
    names, profile = page.evaluate("""(() => { app.graph.clear(); const n = LiteGraph.createNode('ResidualTuning');
        n.pos = [100, 100]; app.graph.add(n);
        __st.widget(n, 'rho_first').value = 0.9; __st.widget(n, 'start_depth').value = 0.5;
        __st.view(0, 0); return [n.widgets.map((w) => w.name), __st.profile(n)]; })()""")
    assert names[-1] == "skip_profile"
    assert profile["kind"] == "schedule" and len(profile["bars"]) == 57
    assert profile["rhos"][:28] == [1.0] * 28 and profile["rhos"][28] == 0.9
    assert abs(profile["rhos"][-1] - 1.0) < 1e-12
    assert "57 blocks" in profile["message"]
    _screenshot(page, artifacts, "residual_profile")


def test_slider_drag_redraws_the_profile_live(page, artifacts):
    page.evaluate("""(() => { app.graph.clear(); const n = LiteGraph.createNode('SkipTuning');
        n.pos = [120, 120]; app.graph.add(n); __st.widget(n, 'rho_bottom').value = 0.9;
        __st.view(0, 0); return true; })()""")
    start = page.evaluate("__st.profile(__st.node('SkipTuning'))")
    assert start["kind"] == "schedule" and len(start["bars"]) == 12
    assert start["rhos"][0] == pytest.approx(0.9) and start["rhos"][-1] == 1.0
    # Bars are really on the canvas: the bar colour inside each bar, not above it.
    for bar in start["bars"]:
        expected = BAR_GREY if bar["rho"] == 1.0 else BAR_BLUE
        assert tuple(bar["inside"]) == expected, bar
        assert tuple(bar["above"]) != expected, bar

    # Drag rho_bottom's slider from 0.9 to 0.3 with the mouse; look mid-drag, button still down.
    begin = page.evaluate("__st.sliderPoint(__st.node('SkipTuning'), 'rho_bottom', 0.9)")
    middle = page.evaluate("__st.sliderPoint(__st.node('SkipTuning'), 'rho_bottom', 0.55)")
    end = page.evaluate("__st.sliderPoint(__st.node('SkipTuning'), 'rho_bottom', 0.3)")
    page.mouse("mouseMoved", *begin)
    page.mouse("mousePressed", *begin, buttons=1)
    for k in range(1, 5):
        page.mouse("mouseMoved", begin[0] + (middle[0] - begin[0]) * k / 4, begin[1], buttons=1)
    during = page.evaluate("(() => { const n = __st.node('SkipTuning');"
                           " return [__st.widget(n, 'rho_bottom').value, __st.profile(n)]; })()")
    for k in range(1, 5):
        page.mouse("mouseMoved", middle[0] + (end[0] - middle[0]) * k / 4, begin[1], buttons=1)
    page.mouse("mouseReleased", *end)
    after = page.evaluate("(() => { const n = __st.node('SkipTuning');"
                          " return [__st.widget(n, 'rho_bottom').value, __st.profile(n)]; })()")

    mid_value, mid_profile = during
    final_value, final_profile = after
    assert 0.45 <= mid_value <= 0.65, mid_value
    assert 0.25 <= final_value <= 0.35, final_value
    assert mid_profile["rhos"][0] == pytest.approx(mid_value)
    assert final_profile["rhos"][0] == pytest.approx(final_value)
    assert final_profile["rhos"][-1] == 1.0
    # The deepest bar got shorter on the canvas: its old top is background now.
    old, mid, new = start["bars"][0], mid_profile["bars"][0], final_profile["bars"][0]
    assert old["h"] > mid["h"] > new["h"] > 0
    assert tuple(new["inside"]) == BAR_BLUE
    pixel_at_old_top = page.evaluate(f"__st.pixel(__st.node('SkipTuning'), {old['x'] + old['w'] / 2}, {old['y'] + 1})")
    assert tuple(pixel_at_old_top) != BAR_BLUE
    # Every bar is the schedule for the slider's value.
    from skip_tuning_core import rho_schedule

    assert final_profile["rhos"] == pytest.approx(rho_schedule(12, final_value, 1.0))
    _screenshot(page, artifacts, "skip_tuning_node_dragged", clip=_node_clip(page, "SkipTuning"))
    page.evaluate("(() => { const w = __st.widget(__st.node('SkipTuning'), 'rho_bottom'); w.value = 0.8;"
                  " app.canvas.draw(true, true); return true; })()")
    _screenshot(page, artifacts, "skip_tuning_node", clip=_node_clip(page, "SkipTuning"), docs=True)


def test_a_linked_rho_is_named_not_guessed(page):
    profile = page.evaluate("""(() => { app.graph.clear();
        const n = LiteGraph.createNode('SkipTuning'); n.pos = [420, 120]; app.graph.add(n);
        const p = LiteGraph.createNode('PrimitiveFloat'); p.pos = [60, 120]; app.graph.add(p);
        p.connect(0, n, n.inputs.findIndex((i) => i.name === 'rho_bottom'));
        __st.view(0, 0); return __st.profile(n); })()""")
    assert profile["kind"] == "linked" and profile["bars"] == []
    assert profile["message"] == "rho_bottom set by a link: profile known at run time"


def test_per_skip_override_preview_size_and_window_are_drawn(page, artifacts):
    page.evaluate("""(() => { app.graph.clear(); const n = LiteGraph.createNode('SkipTuningAdvanced');
        n.pos = [120, 120]; app.graph.add(n); __st.view(0, 0); return true; })()""")
    # Type the override into the widget's own text prompt, as a user does.
    at = page.evaluate("__st.widgetCenter(__st.node('SkipTuningAdvanced'), 'rho_per_skip')")
    page.mouse("mouseMoved", *at)
    page.mouse("mousePressed", *at, buttons=1)
    page.mouse("mouseReleased", *at)
    page.wait_for("!!document.querySelector('.graphdialog input, .graphdialog textarea')", timeout=10)
    page.evaluate("document.querySelector('.graphdialog input, .graphdialog textarea').focus(); true")
    page.send("Input.insertText", {"text": "0.7, 0.8, 0.9, 1.2, 1, 1"})
    _press_key(page, "Enter", vk=13)
    page.wait_for("__st.widget(__st.node('SkipTuningAdvanced'), 'rho_per_skip').value === '0.7, 0.8, 0.9, 1.2, 1, 1'",
                  timeout=10)
    profile = page.evaluate("__st.profile(__st.node('SkipTuningAdvanced'))")
    assert profile["kind"] == "override"
    assert profile["rhos"] == [0.7, 0.8, 0.9, 1.2, 1, 1]
    assert [tuple(bar["inside"]) for bar in profile["bars"]] == [BAR_BLUE] * 3 + [BAR_ORANGE] + [BAR_GREY] * 2
    assert profile["window"] == "active from 0% to 100% of sampling"
    _screenshot(page, artifacts, "skip_tuning_advanced_override", clip=_node_clip(page, "SkipTuningAdvanced"))

    # A malformed override is reported on the node, as text on the canvas.
    page.evaluate("""(() => { const n = __st.node('SkipTuningAdvanced'), w = __st.widget(n, 'rho_per_skip');
        w.value = '<b>0.8</b>, 1'; w.callback?.(w.value);
        __st.widget(n, 'end_percent').value = 0.6; return true; })()""")
    profile = page.evaluate("__st.profile(__st.node('SkipTuningAdvanced'))")
    assert profile["kind"] == "error" and profile["bars"] == []
    assert profile["message"] == "rho_per_skip: entry 1 is not a number"
    assert profile["window"] == "active from 0% to 60% of sampling"
    assert page.evaluate("document.querySelectorAll('b').length") == 0  # never turned into HTML

    # Without an override, the preview size is picked in the node's context menu.
    page.evaluate("__st.widget(__st.node('SkipTuningAdvanced'), 'rho_per_skip').value = ''; true")
    title = page.evaluate("__st.client(__st.node('SkipTuningAdvanced'), 60, -LiteGraph.NODE_TITLE_HEIGHT / 2)")
    page.mouse("mouseMoved", *title)
    for kind, buttons in (("mousePressed", 2), ("mouseReleased", 0)):
        page.send("Input.dispatchMouseEvent", {"type": kind, "x": title[0], "y": title[1], "button": "right",
                                               "buttons": buttons, "clickCount": 1})
    _click_menu_entry(page, "Skip profile preview")
    _click_menu_entry(page, "9 skips (SDXL)")
    profile = page.evaluate("__st.profile(__st.node('SkipTuningAdvanced'))")
    assert profile["kind"] == "schedule" and len(profile["rhos"]) == 9
    assert "preview for 9 skips" in profile["message"]
    _screenshot(page, artifacts, "skip_tuning_advanced", clip=_node_clip(page, "SkipTuningAdvanced"), docs=True)

    # The U-ViTs' counts are offered too.
    for label, n in (("19 skips (HunyuanDiT)", 19), ("10 skips (Hunyuan3D 2.1)", 10)):
        page.mouse("mouseMoved", *title)
        for kind, buttons in (("mousePressed", 2), ("mouseReleased", 0)):
            page.send("Input.dispatchMouseEvent", {"type": kind, "x": title[0], "y": title[1], "button": "right",
                                                   "buttons": buttons, "clickCount": 1})
        _click_menu_entry(page, "Skip profile preview")
        _click_menu_entry(page, label)
        profile = page.evaluate("__st.profile(__st.node('SkipTuningAdvanced'))")
        assert profile["kind"] == "schedule" and len(profile["rhos"]) == n
        assert f"preview for {n} skips" in profile["message"]


def test_a_saved_workflow_keeps_the_values(page, prepared_server):
    page.evaluate("""(() => { app.graph.clear();
        const a = LiteGraph.createNode('SkipTuning'); a.pos = [120, 120]; app.graph.add(a);
        const b = LiteGraph.createNode('SkipTuningAdvanced'); b.pos = [520, 120]; app.graph.add(b);
        const set = (n, name, v) => { const w = __st.widget(n, name); w.value = v; w.callback?.(v); };
        set(a, 'rho_bottom', 0.65); set(a, 'rho_top', 1.1); a.properties.skip_profile_preview_skips = 9;
        set(b, 'rho_bottom', 0.7); set(b, 'start_percent', 0.1); set(b, 'end_percent', 0.5);
        set(b, 'rho_per_skip', '0.6, 0.7, 0.8, 0.9, 1, 1'); set(b, 'scale_controlnet', false);
        __st.view(0, 0); return true; })()""")
    saved = page.evaluate("""(async () => {
        const workflow = app.graph.serialize();
        const response = await app.api.fetchApi('/userdata/' + encodeURIComponent('workflows/skip_tuning_test.json')
            + '?overwrite=true', { method: 'POST', body: JSON.stringify(workflow) });
        return { status: response.status, workflow }; })()""")
    assert saved["status"] == 200
    by_type = {node["type"]: node for node in saved["workflow"]["nodes"]}
    # Only the real widgets are saved; the drawn profile is not a value.
    assert by_type["SkipTuning"]["widgets_values"] == [0.65, 1.1]
    assert by_type["SkipTuningAdvanced"]["widgets_values"] == [0.7, 1.0, 0.1, 0.5, "0.6, 0.7, 0.8, 0.9, 1, 1", False]
    assert by_type["SkipTuning"]["properties"]["skip_profile_preview_skips"] == 9

    # Load it back from the server's user folder into an empty graph.
    restored = page.evaluate("""(async () => {
        app.graph.clear();
        const response = await app.api.fetchApi('/userdata/' + encodeURIComponent('workflows/skip_tuning_test.json'));
        await app.loadGraphData(await response.json(), true, true, 'skip_tuning_test');
        __st.view(0, 0);
        const out = {};
        for (const n of app.graph.nodes) out[n.type] = { values: Object.fromEntries(n.widgets.filter((w) =>
            w.name !== 'skip_profile').map((w) => [w.name, w.value])), profile: __st.profile(n) };
        const prompt = await app.graphToPrompt();
        out.prompt = prompt.output;
        return out; })()""")
    assert restored["SkipTuning"]["values"] == {"rho_bottom": 0.65, "rho_top": 1.1}
    assert restored["SkipTuningAdvanced"]["values"] == {
        "rho_bottom": 0.7, "rho_top": 1.0, "start_percent": 0.1, "end_percent": 0.5,
        "rho_per_skip": "0.6, 0.7, 0.8, 0.9, 1, 1", "scale_controlnet": False}
    profile = restored["SkipTuning"]["profile"]
    assert len(profile["rhos"]) == 9 and profile["rhos"][0] == pytest.approx(0.65) and profile["rhos"][-1] == 1.1
    assert tuple(profile["bars"][-1]["inside"]) == BAR_ORANGE
    assert restored["SkipTuningAdvanced"]["profile"]["rhos"] == [0.6, 0.7, 0.8, 0.9, 1, 1]
    assert restored["SkipTuningAdvanced"]["profile"]["window"] == "active from 10% to 50% of sampling"
    # The prompt the front end would queue carries exactly the node's inputs.
    inputs = {node["class_type"]: node["inputs"] for node in restored["prompt"].values()}
    assert inputs["SkipTuning"] == {"rho_bottom": 0.65, "rho_top": 1.1}
    assert set(inputs["SkipTuningAdvanced"]) == {"rho_bottom", "rho_top", "start_percent", "end_percent",
                                                 "rho_per_skip", "scale_controlnet"}


def test_node_help_pages_are_served_where_the_front_end_looks(prepared_server):
    for node in ("SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "ResidualTuning"):
        # The front end takes the folder name from python_module: /extensions/<folder>/docs/<node>.md
        assert prepared_server.get_json(f"/object_info/{node}")[node]["python_module"] == f"custom_nodes.{PACK}"
        status, body = prepared_server.request("GET", f"/extensions/{PACK}/docs/{node}.md")
        assert status == 200, (node, status)
        assert isinstance(body, str) and body.startswith("# "), node


def test_every_example_workflow_loads_and_validates(page, prepared_server, artifacts):
    from PIL import Image

    if UPDATE_DOCS:  # rebuild them in this front end from tests/frontend_examples.py
        for name, spec in WORKFLOWS.items():
            workflow = page.evaluate(f"({BUILD_JS})({json.dumps(spec)})")
            (EXAMPLES / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
    templates = prepared_server.get_json("/api/workflow_templates")
    names = sorted(templates.get(PACK, []))
    shipped = sorted(path.stem for path in EXAMPLES.glob("*.json"))
    assert names == shipped == sorted(WORKFLOWS), (names, shipped)

    for name in names:
        page.evaluate("app.graph.clear(); true")
        before = len(page.console)
        loaded = page.evaluate(f"""(async () => {{
            const url = app.api.apiURL('/workflow_templates/{PACK}/'
                + encodeURIComponent({json.dumps(name)}) + '.json');
            const workflow = await (await fetch(url)).json();
            await app.loadGraphData(workflow, true, true, {json.dumps(name)});
            await new Promise((resolve) => setTimeout(resolve, 300));
            app.canvas.draw(true, true);
            const missing = app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type] || n.has_errors)
                .map((n) => n.type);
            const dialogs = [...document.querySelectorAll('.p-dialog')].map((d) => d.textContent.slice(0, 200));
            const profiles = app.graph.nodes.filter((n) => n.skipTuningProfile)
                .map((n) => n.skipTuningProfile.rhos.length);
            const prompt = await app.graphToPrompt();
            return {{ types: app.graph.nodes.map((n) => n.type), missing, dialogs, profiles, prompt: prompt.output }};
        }})()""")
        assert loaded["missing"] == [], (name, loaded["missing"])
        assert loaded["dialogs"] == [], (name, loaded["dialogs"])
        assert any(t.startswith("SkipTuning") for t in loaded["types"]), name
        expected_profiles = [spec.get("properties", {}).get("skip_profile_preview_skips", 12)
                             for spec in WORKFLOWS[name]["nodes"] if spec["type"].startswith("SkipTuning")
                             and spec["type"] != "SkipTuningCompare"]
        assert loaded["profiles"] == expected_profiles, name
        errors = [e for e in page.console[before:] if e["level"] in ("error", "exception")
                  and not e["text"].startswith("Failed to load resource")]
        assert errors == [], (name, errors)

        # The server's own validation accepts the prompt the front end builds from it. (It then
        # runs and stops at the empty stand-in checkpoint: this test has no real weights.)
        status, body = prepared_server.queue_prompt(loaded["prompt"])
        assert status == 200 and body.get("node_errors") == {}, (name, body)
        _wait_until_done(prepared_server, body["prompt_id"])

        shot = _screenshot(page, artifacts, f"example_{name}", clip=_clip(page, margin=16))
        if UPDATE_DOCS:
            with Image.open(shot) as image:
                thumbnail = image.convert("RGB")
                thumbnail.thumbnail((640, 400))
                thumbnail.save(EXAMPLES / f"{name}.jpg", quality=85)
        # The thumbnail the template browser asks for.
        status, body = prepared_server.request("GET", f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.jpg")
        assert status == 200, f"{name}.jpg is not served"
    if UPDATE_DOCS:
        with Image.open(artifacts / f"example_{names[0]}.png") as image:
            image.thumbnail((1000, 1000))
            image.save(DOCS_SCREENSHOTS / "example_workflow.png", optimize=True)


def _wait_until_done(server, prompt_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} still running after {timeout} s")


def _compare_graph(steps_list, rho_bottom_list, seed=11):
    return {
        "model": {"class_type": "SkipTuningTestTinyModel", "inputs": {"kind": "koala", "dtype": "float32", "seed": 0}},
        "pos": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 1}},
        "neg": {"class_type": "SkipTuningTestConditioning", "inputs": {"seed": 2}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "vae": {"class_type": "SkipTuningTestVAE", "inputs": {}},
        "compare": {"class_type": "SkipTuningCompare", "inputs": {
            "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent": ["latent", 0],
            "vae": ["vae", 0], "seed": seed, "sampler_name": "euler", "scheduler": "normal", "cfg": 2.0,
            "steps_list": steps_list, "rho_bottom_list": rho_bottom_list, "rho_top": 1.0}},
        "grid": {"class_type": "PreviewImage", "inputs": {"images": ["compare", 0]}},
        "images": {"class_type": "PreviewImage", "inputs": {"images": ["compare", 1]}},
        "differences": {"class_type": "PreviewImage", "inputs": {"images": ["compare", 2]}},
    }


def _fetch_images(server, output):
    from PIL import Image

    images = []
    for item in output["images"]:
        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        request = urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30)
        with request as response:
            images.append(Image.open(io.BytesIO(response.read())).convert("RGB"))
    return images


def test_compare_node_runs_through_prompt(prepared_server, artifacts):
    import numpy as np

    compare = comfy_helpers.load_pack().skip_tuning_compare
    entry = prepared_server.run_prompt(_compare_graph("1, 2", "1.0, 0.0"), timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (grid,) = _fetch_images(prepared_server, entry["outputs"]["grid"])
    cells = _fetch_images(prepared_server, entry["outputs"]["images"])
    (differences,) = _fetch_images(prepared_server, entry["outputs"]["differences"])
    grid.save(artifacts / "compare_grid.png")
    differences.save(artifacts / "compare_differences.png")

    rows = [compare.rho_label(1.0, 1.0), compare.rho_label(0.0, 1.0)]
    layout = compare.GridLayout(2, 2, 64, 64, rows, ["1 step", "2 steps"],
                                "seed 11, euler/normal, cfg 2, rho_top 1.00")
    assert grid.size == layout.size
    assert len(cells) == 4 and all(cell.size == (64, 64) for cell in cells)
    pixels = np.asarray(grid).astype(int)
    crops = [[pixels[y:y + 64, x:x + 64] for x, y in row] for row in layout.cells]
    for r in range(2):
        for c in range(2):
            # The grid's cells are the batch's images (row-major), up to rounding.
            assert np.abs(crops[r][c] - np.asarray(cells[2 * r + c]).astype(int)).max() <= 1, (r, c)
    for c in range(2):
        assert np.abs(crops[0][c] - crops[1][c]).mean() > 1.0, f"rows do not differ at column {c}"

    # The difference grid: the same layout; the plain row (below its tag) is black, the tuned row is not.
    assert differences.size == grid.size
    difference_pixels = np.asarray(differences).astype(int)
    for c in range(2):
        x, y = layout.cells[0][c]
        assert difference_pixels[y + 32:y + 64, x:x + 64].max() == 0, c
        x, y = layout.cells[1][c]
        assert difference_pixels[y + 32:y + 64, x:x + 64].max() > 100, c


def test_compare_node_rejects_malformed_lists_at_prompt_time(prepared_server):
    status, body = prepared_server.queue_prompt(_compare_graph("4, eight", "1.0, 0.9"))
    assert status == 400, body
    errors = body["node_errors"]["compare"]["errors"]
    assert any("steps_list '4, eight': entry 2 ('eight') is not a whole number" in error["details"] for error in errors)
    status, body = prepared_server.queue_prompt(_compare_graph("4", "0.9, 3"))
    assert status == 400 and "rho_bottom_list entry 2 must be between 0.0 and 2.0" in json.dumps(body)


def test_no_console_errors_from_the_pack(page):
    """Runs last in this module: everything above happened in this page."""
    page.evaluate("app.canvas.draw(true, true); true")
    ours = page.errors_mentioning(*OUR_NEEDLES)
    assert ours == [], ours
    # The extension itself registered (a failure to load it is logged with its URL, caught above).
    assert page.evaluate("!!LiteGraph.createNode('SkipTuning').widgets.find((w) => w.name === 'skip_profile')")
