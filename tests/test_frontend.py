"""The extension in ComfyUI's real front end, driven in headless Chromium through Playwright.

Starts ComfyUI's server (main.py --cpu) with the pack installed, opens the front end the
server ships (1.27 with ComfyUI 0.3.64, 1.49 with 0.33.0; COMFYUI_PATH picks the checkout) and
checks what a user sees, once on the classic LiteGraph canvas and once with Vue-rendered nodes
(setting "Modern Node Design (Nodes 2.0)"): the rho profile is drawn on the Skip Tuning and
Residual Tuning nodes (read back from the pixels), follows a slider while it moves, names a linked
input, shows the per-skip override, the preview size picked from the node's context menu and the
window; a saved workflow keeps its values; every example workflow loads unchanged with no missing
node and passes the server's validation; the browser console shows no error or warning from the
pack. Once per front end: the profile math equals the core's, the help pages are served, and the
Compare node runs through /prompt on a tiny test model.

Nodes are added through the app's own API (LiteGraph.createNode + app.graph.add): the tests are
about the pack's drawing and menus, not about ComfyUI's node search, which changes between front ends.

Skipped, with the reason, when ComfyUI, Chromium or Playwright is missing.
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
from frontend_examples import BUILD_JS, CHECKPOINTS, WORKFLOWS
from frontend_page import RENDERERS, VUE_NODES_SETTING, FrontEnd, find_chromium, launch_chromium

pytestmark = [pytest.mark.comfyui, pytest.mark.comfyui_server]

PACK = "skip-tuning"  # the pack's folder in custom_nodes, as conftest installs it
FRONTEND_TEST_NODES = comfy_helpers.TESTS_DIR / "comfy_test_nodes_frontend"
UPDATE_DOCS = os.environ.get("SKIP_TUNING_UPDATE_DOCS", "") not in ("", "0")
DOCS_SCREENSHOTS = comfy_helpers.REPO_ROOT / "docs" / "screenshots"
EXAMPLES = comfy_helpers.REPO_ROOT / "example_workflows"
# What identifies an error as ours in the console: our files, our nodes, our extension.
OUR_NEEDLES = (f"/extensions/{PACK}/", "skip_tuning", "SkipTuning", "Skip Tuning", "skip profile")
# Front end 1.27's Vue nodes (a hidden, experimental setting there) render only the built-in widget
# types: no extension can draw on them. The newer front ends draw canvas widgets on Vue nodes; 1.49 is tested.
VUE_NODES_TESTED_FROM = (1, 49)

BAR_BLUE = (0x5B, 0x9B, 0xD5)  # rho < 1 in js/skip_tuning.js
BAR_GREY = (0x8A, 0x8A, 0x8A)  # rho = 1
BAR_ORANGE = (0xE0, 0x91, 0x3A)  # rho > 1

# Mode-independent checks run once per front end, in the classic renderer's page.
once = pytest.mark.parametrize("page", ["classic"], indirect=True)


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
        import playwright  # noqa: F401
    except ImportError:
        _unavailable("Playwright is needed to drive Chromium (pip install playwright; the test extras have it)")
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
def browser(chromium_executable):
    with launch_chromium(chromium_executable) as browser:
        yield browser


@pytest.fixture(scope="module", params=RENDERERS)
def page(request, browser, prepared_server):
    """The front end in one renderer: the classic canvas, or Vue-rendered nodes (the user setting)."""
    renderer = request.param
    status, body = prepared_server.request("POST", f"/api/settings/{VUE_NODES_SETTING}", renderer == "vue")
    assert status == 200, body
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        front = FrontEnd(context.new_page(), renderer)
        front.open(prepared_server.url + "/")
        assert front.evaluate("!!LiteGraph.vueNodesMode") == front.vue, "the renderer setting did not apply"
        version = front.frontend_version()
        front.profile_drawn = not (front.vue and version < VUE_NODES_TESTED_FROM)
        yield front
    finally:
        context.close()
        prepared_server.request("POST", f"/api/settings/{VUE_NODES_SETTING}", False)


def _needs_the_drawn_profile(page):
    if not page.profile_drawn:
        version = ".".join(map(str, page.frontend_version()))
        pytest.skip(f"front end {version}: its Vue nodes (a hidden, experimental setting) render only built-in "
                    "widget types, so the profile is not shown there; Vue nodes draw it from front end 1.49")


def _screenshot(page, artifacts, name, clip=None, docs=False):
    path = page.screenshot(str(artifacts / f"{name}_{page.renderer}.png"), clip=clip)
    if docs and UPDATE_DOCS and not page.vue:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / f"{name}.png")
    return path


def _fresh_graph(page, *nodes):
    """An empty graph with the given (type, x, y) nodes, viewed at scale 1 clear of the front end's toolbars.

    A frame passes between clearing and adding: front end 1.49 keys a Vue node's canvas widget by node id,
    widget name and type, so a node added in the same tick as the clear, with a recycled id, would inherit
    the removed node's widget canvas (loading a workflow, as users do, re-creates them)."""
    page.evaluate(f"""(async () => {{ app.graph.clear(); await __st.frames(); __st.view(40, 90);
        for (const [type, x, y] of {json.dumps(nodes)}) __st.add(type, x, y); return true; }})()""")


# ---------------------------------------------------------------------------------------------


def test_nodes_get_the_profile_widget(page, artifacts):
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("SkipTuning", 40, 40), ("SkipTuningAdvanced", 450, 40), ("SkipTuningCompare", 860, 40))
    nodes = page.evaluate("app.graph.nodes.map((n) => [n.type, n.title, n.widgets.map((w) => w.name)])")
    assert [(kind, title) for kind, title, _ in nodes] == [
        ("SkipTuning", "Skip Tuning"), ("SkipTuningAdvanced", "Skip Tuning (Advanced)"),
        ("SkipTuningCompare", "Skip Tuning Compare")]
    widgets = {kind: names for kind, _, names in nodes}
    # The profile widget is on both Skip Tuning nodes, never sent with the prompt.
    assert widgets["SkipTuning"] == ["rho_bottom", "rho_top", "skip_profile"]
    assert widgets["SkipTuningAdvanced"][-1] == "skip_profile"
    assert "skip_profile" not in widgets["SkipTuningCompare"]
    defaults = page.evaluate("(() => { const n = __st.node('SkipTuning'), w = __st.widget(n, 'rho_bottom');"
                             " return [w.value, __st.widget(n, 'rho_top').value, w.type]; })()")
    assert defaults == [1.0, 1.0, "slider"]
    # Drawn, in this renderer: twelve grey bars (rho 1) on each Skip Tuning node.
    for kind in ("SkipTuning", "SkipTuningAdvanced"):
        profile = page.profile(kind)
        assert profile["kind"] == "schedule" and profile["rhos"] == [1.0] * 12, kind
        assert [tuple(bar["inside"]) for bar in profile["bars"]] == [BAR_GREY] * 12, kind
        assert all(tuple(bar["above"]) != BAR_GREY for bar in profile["bars"]), kind
    assert page.evaluate("__st.node('SkipTuningCompare').skipTuningProfile") is None
    _screenshot(page, artifacts, "nodes_added")


@once
def test_profile_math_in_the_browser_equals_the_core(page):
    from skip_tuning import SkipTuningError, parse_rho_list, rho_schedule

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


@once
def test_residual_block_factors_in_the_browser_equal_the_core(page):
    from skip_tuning import block_factors

    cases = [(n, first, last, depth) for n in (1, 12, 24, 38, 57) for first, last in ((0.96, 1.0), (1.0, 0.9),
             (1.05, 1.05)) for depth in (0.0, 0.15, 0.5, 0.95)]
    got = page.evaluate(f"""(async () => {{
        const m = await import('/extensions/{PACK}/skip_tuning_profile.js');
        return {json.dumps(cases)}.map(([n, f, l, d]) => m.blockFactors(n, f, l, d)); }})()""")
    for (n, first, last, depth), rhos in zip(cases, got):
        assert tuple(rhos) == block_factors(n, first, last, depth), (n, first, last, depth)  # bit for bit


def test_the_residual_node_draws_one_bar_per_block(page, artifacts):
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("ResidualTuning", 60, 60))
    names = page.evaluate("""(() => { const n = __st.node('ResidualTuning');
        __st.set(n, 'rho_first', 0.9); __st.set(n, 'start_depth', 0.5); return n.widgets.map((w) => w.name); })()""")
    assert names[-1] == "skip_profile"
    profile = page.profile("ResidualTuning")
    assert profile["kind"] == "schedule" and len(profile["bars"]) == 57
    assert profile["rhos"][:28] == [1.0] * 28 and profile["rhos"][28] == 0.9
    assert abs(profile["rhos"][-1] - 1.0) < 1e-12
    assert "57 blocks" in profile["message"]
    assert tuple(profile["bars"][28]["inside"]) == BAR_BLUE and tuple(profile["bars"][0]["inside"]) == BAR_GREY
    _screenshot(page, artifacts, "residual_profile", clip=page.node_clip("ResidualTuning"))


def test_slider_drag_redraws_the_profile_live(page, artifacts):
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("SkipTuning", 80, 80))
    page.evaluate("__st.set(__st.node('SkipTuning'), 'rho_bottom', 0.9); true")
    start = page.profile("SkipTuning")
    assert start["kind"] == "schedule" and len(start["bars"]) == 12
    assert start["rhos"][0] == pytest.approx(0.9) and start["rhos"][-1] == 1.0
    # Bars are really drawn: the bar colour inside each bar, not above it.
    for bar in start["bars"]:
        expected = BAR_GREY if bar["rho"] == 1.0 else BAR_BLUE
        assert tuple(bar["inside"]) == expected, bar
        assert tuple(bar["above"]) != expected, bar

    # Drag rho_bottom's slider from 0.9 to 0.3 with the mouse; look mid-drag, button still down.
    during = []
    page.drag_slider("SkipTuning", "rho_bottom", [0.9, 0.55, 0.3],
                     midway=lambda: during.extend([page.widget_value("SkipTuning", "rho_bottom"),
                                                   page.profile("SkipTuning")]))
    mid_value, mid_profile = during
    final_value = page.widget_value("SkipTuning", "rho_bottom")
    final_profile = page.profile("SkipTuning")
    assert 0.45 <= mid_value <= 0.65, mid_value
    assert 0.25 <= final_value <= 0.35, final_value
    assert mid_profile["rhos"][0] == pytest.approx(mid_value)
    assert final_profile["rhos"][0] == pytest.approx(final_value)
    assert final_profile["rhos"][-1] == 1.0
    # The deepest bar got shorter where it is drawn: its old top is background now.
    old, mid, new = start["bars"][0], mid_profile["bars"][0], final_profile["bars"][0]
    assert old["h"] > mid["h"] > new["h"] > 0
    assert tuple(new["inside"]) == BAR_BLUE
    assert tuple(page.pixel("SkipTuning", old["x"] + old["w"] / 2, old["y"] + 1)) != BAR_BLUE
    # Every bar is the schedule for the slider's value.
    from skip_tuning import rho_schedule

    assert final_profile["rhos"] == pytest.approx(rho_schedule(12, final_value, 1.0))
    _screenshot(page, artifacts, "skip_tuning_node_dragged", clip=page.node_clip("SkipTuning"))
    page.evaluate("__st.set(__st.node('SkipTuning'), 'rho_bottom', 0.8); true")
    assert page.profile("SkipTuning")["rhos"][0] == pytest.approx(0.8)
    _screenshot(page, artifacts, "skip_tuning_node", clip=page.node_clip("SkipTuning"), docs=True)


def test_a_linked_rho_is_named_not_guessed(page):
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("PrimitiveFloat", 20, 80), ("SkipTuning", 380, 80))
    page.profile("SkipTuning")  # drawn unlinked first, so the redraw on connecting is what is checked
    page.evaluate("""(() => { const n = __st.node('SkipTuning'), p = __st.node('PrimitiveFloat');
        p.connect(0, n, n.inputs.findIndex((i) => i.name === 'rho_bottom')); return true; })()""")
    profile = page.profile("SkipTuning")
    assert profile["kind"] == "linked" and profile["bars"] == []
    assert profile["message"] == "rho_bottom set by a link: profile known at run time"


def test_per_skip_override_preview_size_and_window_are_drawn(page, artifacts):
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("SkipTuningAdvanced", 80, 60))
    # Type the override into the widget, as a user does.
    page.type_into_widget("SkipTuningAdvanced", "rho_per_skip", "0.7, 0.8, 0.9, 1.2, 1, 1")
    page.wait_for("__st.widget(__st.node('SkipTuningAdvanced'), 'rho_per_skip').value === '0.7, 0.8, 0.9, 1.2, 1, 1'",
                  timeout=10)
    profile = page.profile("SkipTuningAdvanced")
    assert profile["kind"] == "override"
    assert profile["rhos"] == [0.7, 0.8, 0.9, 1.2, 1, 1]
    assert [tuple(bar["inside"]) for bar in profile["bars"]] == [BAR_BLUE] * 3 + [BAR_ORANGE] + [BAR_GREY] * 2
    assert profile["window"] == "active from 0% to 100% of sampling"
    _screenshot(page, artifacts, "skip_tuning_advanced_override", clip=page.node_clip("SkipTuningAdvanced"))

    # A malformed override is reported on the node, as text drawn on the canvas.
    page.evaluate("""(() => { const n = __st.node('SkipTuningAdvanced');
        __st.set(n, 'rho_per_skip', '<b>0.8</b>, 1'); __st.set(n, 'end_percent', 0.6); return true; })()""")
    profile = page.profile("SkipTuningAdvanced")
    assert profile["kind"] == "error" and profile["bars"] == []
    assert profile["message"] == "rho_per_skip: entry 1 is not a number"
    assert profile["window"] == "active from 0% to 60% of sampling"
    assert page.evaluate("document.querySelectorAll('b').length") == 0  # never turned into HTML

    # Without an override, the preview size is picked in the node's context menu.
    page.evaluate("""(() => { const n = __st.node('SkipTuningAdvanced');
        __st.set(n, 'rho_per_skip', ''); __st.set(n, 'rho_bottom', 0.8); return true; })()""")
    for label, n in (("9 skips (SDXL)", 9), ("19 skips (HunyuanDiT)", 19), ("10 skips (Hunyuan3D 2.1)", 10)):
        page.open_node_menu("SkipTuningAdvanced")
        page.click_menu_entry("Skip profile preview")
        page.click_menu_entry(label)
        page.wait_for(f"__st.node('SkipTuningAdvanced').properties.skip_profile_preview_skips === {n}", timeout=10)
        profile = page.profile("SkipTuningAdvanced")
        assert profile["kind"] == "schedule" and len(profile["rhos"]) == n, label
        assert profile["rhos"][0] == pytest.approx(0.8) and profile["rhos"][-1] == 1.0
        assert f"preview for {n} skips" in profile["message"]
        assert profile["window"] == "active from 0% to 60% of sampling"
        if n == 9:
            _screenshot(page, artifacts, "skip_tuning_advanced", clip=page.node_clip("SkipTuningAdvanced"), docs=True)
    # The menu marks the current size.
    page.open_node_menu("SkipTuningAdvanced")
    page.click_menu_entry("Skip profile preview")
    assert page.evaluate("[...document.querySelectorAll('.litemenu-entry, .p-contextmenu-item-link')]"
                         ".some((e) => e.textContent.trim() === '● 10 skips (Hunyuan3D 2.1)')")
    page.close_menus()


def test_a_saved_workflow_keeps_the_values(page, prepared_server):
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("SkipTuning", 40, 60), ("SkipTuningAdvanced", 440, 60))
    page.evaluate("""(() => { const a = __st.node('SkipTuning'), b = __st.node('SkipTuningAdvanced');
        __st.set(a, 'rho_bottom', 0.65); __st.set(a, 'rho_top', 1.1); a.properties.skip_profile_preview_skips = 9;
        __st.set(b, 'rho_bottom', 0.7); __st.set(b, 'start_percent', 0.1); __st.set(b, 'end_percent', 0.5);
        __st.set(b, 'rho_per_skip', '0.6, 0.7, 0.8, 0.9, 1, 1'); __st.set(b, 'scale_controlnet', false);
        return true; })()""")
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
        const out = {};
        for (const n of app.graph.nodes) out[n.type] = Object.fromEntries(n.widgets.filter((w) =>
            w.name !== 'skip_profile').map((w) => [w.name, w.value]));
        const prompt = await app.graphToPrompt();
        out.prompt = prompt.output;
        return out; })()""")
    assert restored["SkipTuning"] == {"rho_bottom": 0.65, "rho_top": 1.1}
    assert restored["SkipTuningAdvanced"] == {
        "rho_bottom": 0.7, "rho_top": 1.0, "start_percent": 0.1, "end_percent": 0.5,
        "rho_per_skip": "0.6, 0.7, 0.8, 0.9, 1, 1", "scale_controlnet": False}
    profile = page.profile("SkipTuning")
    assert len(profile["rhos"]) == 9 and profile["rhos"][0] == pytest.approx(0.65) and profile["rhos"][-1] == 1.1
    assert tuple(profile["bars"][-1]["inside"]) == BAR_ORANGE
    advanced = page.profile("SkipTuningAdvanced")
    assert advanced["rhos"] == [0.6, 0.7, 0.8, 0.9, 1, 1]
    assert advanced["window"] == "active from 10% to 50% of sampling"
    # The prompt the front end would queue carries exactly the node's inputs.
    inputs = {node["class_type"]: node["inputs"] for node in restored["prompt"].values()}
    assert inputs["SkipTuning"] == {"rho_bottom": 0.65, "rho_top": 1.1}
    assert set(inputs["SkipTuningAdvanced"]) == {"rho_bottom", "rho_top", "start_percent", "end_percent",
                                                 "rho_per_skip", "scale_controlnet"}


def test_node_help_pages_are_served_where_the_front_end_looks(prepared_server):
    for node in ("SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "ResidualTuning"):
        # The front end takes the folder name from python_module and asks /extensions/<folder>/docs/<node>/<locale>.md
        # first (1.27 and 1.49), then /extensions/<folder>/docs/<node>.md (other locales).
        assert prepared_server.get_json(f"/object_info/{node}")[node]["python_module"] == f"custom_nodes.{PACK}"
        for path in (f"{node}/en.md", f"{node}.md"):
            status, body = prepared_server.request("GET", f"/extensions/{PACK}/docs/{path}")
            assert status == 200, (path, status)
            assert isinstance(body, str) and body.startswith("# "), path


def test_every_example_workflow_loads_unchanged_and_validates(page, prepared_server, artifacts):
    from PIL import Image

    if UPDATE_DOCS and not page.vue:  # rebuild them in this front end from tests/frontend_examples.py
        for name, spec in WORKFLOWS.items():
            # Through JSON.stringify, as the front end saves: properties left undefined are dropped, not null.
            workflow = json.loads(page.evaluate(f"JSON.stringify(({BUILD_JS})({json.dumps(spec)}))"))
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
            await __st.frames();
            const missing = app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type] || n.has_errors)
                .map((n) => n.type);
            const dialogs = [...document.querySelectorAll('.p-dialog')].map((d) => d.textContent.slice(0, 200));
            const profiles = app.graph.nodes.filter((n) => n.skipTuningProfile)
                .map((n) => n.skipTuningProfile.rhos.length);
            const saved = app.graph.serialize().nodes.map((n) => [n.id, n.type, n.widgets_values ?? []]);
            const prompt = await app.graphToPrompt();
            return {{ file: workflow.nodes.map((n) => [n.id, n.type, n.widgets_values ?? []]), saved,
                      missing, dialogs, profiles, prompt: prompt.output }};
        }})()""")
        assert loaded["missing"] == [], (name, loaded["missing"])
        assert loaded["dialogs"] == [], (name, loaded["dialogs"])
        # Unchanged: the front end keeps every node and every widget value the file has.
        assert sorted(loaded["saved"]) == sorted(loaded["file"]), name
        assert any(t.startswith("SkipTuning") for _, t, _ in loaded["saved"]), name
        expected_profiles = [spec.get("properties", {}).get("skip_profile_preview_skips", 12)
                             for spec in WORKFLOWS[name]["nodes"] if spec["type"].startswith("SkipTuning")
                             and spec["type"] != "SkipTuningCompare"] if page.profile_drawn else []
        assert loaded["profiles"] == expected_profiles, name
        errors = [e for e in page.console[before:] if e["level"] in ("error", "exception")
                  and not e["text"].startswith("Failed to load resource")]
        assert errors == [], (name, errors)

        # The server's own validation accepts the prompt the front end builds from it. (It then
        # runs and stops at the empty stand-in checkpoint: this test has no real weights.)
        status, body = prepared_server.queue_prompt(loaded["prompt"])
        assert status == 200 and body.get("node_errors") == {}, (name, body)
        _wait_until_done(prepared_server, body["prompt_id"])

        page.evaluate("""(() => { const ds = app.graph.extra?.ds; if (ds) __st.view(ds.offset[0], ds.offset[1],
            ds.scale); return true; })()""")
        shot = _screenshot(page, artifacts, f"example_{name}", clip=page.clip(margin=16))
        if UPDATE_DOCS and not page.vue:
            with Image.open(shot) as image:
                thumbnail = image.convert("RGB")
                thumbnail.thumbnail((640, 400))
                thumbnail.save(EXAMPLES / f"{name}.jpg", quality=85)
        # The thumbnail the template browser asks for.
        status, body = prepared_server.request("GET", f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.jpg")
        assert status == 200, f"{name}.jpg is not served"
    if UPDATE_DOCS and not page.vue:
        with Image.open(artifacts / f"example_{names[0]}_{page.renderer}.png") as image:
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

    compare = comfy_helpers.load_pack().skip_tuning.comfyui.compare
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


# -- the nodes as a new user meets them: tooltips, chart text, help, templates, search, panels -------------

# A tooltip opens over the canvas, also while a slider is dragged: one short sentence (the node help has the rest).
TOOLTIP_MAX_CHARS = 110
DESCRIPTION_MAX_CHARS = 120


def _one_sentence(text):
    return text.replace("e.g. ", "").count(". ") == 0


def _overlap(a, b):
    """Whether two client boxes [left, top, right, bottom] overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _chart_box(page, node_type):
    """The profile chart's box on screen, in client coordinates."""
    return page.evaluate(f"""(async () => {{ await __st.frames(); const n = __st.node({json.dumps(node_type)});
        const w = __st.widget(n, 'skip_profile');
        if (__st.vue()) {{ const r = __st.surface(n).canvas.getBoundingClientRect();
            return [r.left, r.top, r.right, r.bottom]; }}
        const a = __st.client(n, 15, w.y), b = __st.client(n, n.size[0] - 15, w.y + w.computeSize(n.size[0])[1]);
        return [a[0], a[1], b[0], b[1]]; }})()""")


VISIBLE_TOOLTIPS_JS = """[...document.querySelectorAll('.node-tooltip, .p-tooltip')].filter((e) => {
    const s = getComputedStyle(e); return s.display !== 'none' && s.visibility !== 'hidden' && e.offsetWidth
    && e.textContent.trim(); }).map((e) => { const r = e.getBoundingClientRect();
    return { text: e.textContent.trim(), box: [r.left, r.top, r.right, r.bottom] }; })"""


def _visible_tooltips(page):
    """Every tooltip on screen (classic canvas: .node-tooltip; Vue nodes: PrimeVue's .p-tooltip): text and box."""
    return page.evaluate(VISIBLE_TOOLTIPS_JS)


def test_every_tooltip_and_description_is_one_short_sentence(prepared_server):
    info = prepared_server.get_json("/object_info")
    for node in ("SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "ResidualTuning"):
        description = info[node]["description"]
        assert len(description) <= DESCRIPTION_MAX_CHARS and _one_sentence(description), (node, description)
        tooltips = [options.get("tooltip", "") for section in info[node]["input"].values()
                    for _, options in section.values()] + info[node]["output_tooltips"]
        for tooltip in tooltips:
            assert len(tooltip) <= TOOLTIP_MAX_CHARS and _one_sentence(tooltip), (node, tooltip)


def test_slider_tooltip_stays_clear_of_the_chart_during_a_drag(page, prepared_server, artifacts):
    """Hover rho_bottom's slider until its tooltip shows, press, and pause mid-drag (a tooltip that was
    pending shows then): every tooltip on screen is the one short sentence and leaves the chart free.
    The node sits at the top left of the canvas, where a tall tooltip has no room above or beside it."""
    _needs_the_drawn_profile(page)
    expected = prepared_server.get_json("/object_info/SkipTuning")["SkipTuning"]["input"]["required"]
    expected = expected["rho_bottom"][1]["tooltip"]
    _fresh_graph(page, ("SkipTuning", 10, 10))
    page.profile("SkipTuning")
    chart = _chart_box(page, "SkipTuning")
    delay = page.evaluate("app.extensionManager.setting.get('LiteGraph.Node.TooltipDelay') ?? 500") / 1000
    start = page._slider_point("SkipTuning", "rho_bottom", 1.0)
    mid = page._slider_point("SkipTuning", "rho_bottom", 0.6)
    mouse = page.page.mouse
    mouse.move(start[0] - 4, start[1])
    mouse.move(*start)
    page.wait_for(f"{VISIBLE_TOOLTIPS_JS}.length", timeout=delay + 10)
    seen = _visible_tooltips(page)
    assert [tip["text"] for tip in seen] == [expected]
    page.page.screenshot(path=str(artifacts / f"tooltip_hover_{page.renderer}.png"))
    mouse.down()
    for i in range(1, 5):
        mouse.move(start[0] + (mid[0] - start[0]) * i / 4, start[1])
    time.sleep(delay + 0.6)  # the pointer rests, button down: what a pending tooltip does now is seen
    during = _visible_tooltips(page)
    page.page.screenshot(path=str(artifacts / f"tooltip_during_drag_{page.renderer}.png"))
    mouse.up()
    for tip in seen + during:
        assert tip["text"] == expected, tip
        assert not _overlap(tip["box"], chart), (tip, chart)
    assert page.profile("SkipTuning")["rhos"][0] < 0.9  # the drag moved the slider


def test_profile_text_fits_the_default_width(page, artifacts):
    """Every line of text on the chart fits, uncut, on nodes as they come (default width, zoom 1)."""
    _needs_the_drawn_profile(page)
    _fresh_graph(page, ("SkipTuning", 20, 20), ("SkipTuningAdvanced", 420, 20), ("ResidualTuning", 820, 20),
                 ("PrimitiveFloat", 820, 420), ("SkipTuning", 20, 420))
    # (A node added after a clear can take over a removed node's values in 1.49: the override is emptied.)
    page.evaluate("""(() => { const n = app.graph.nodes.filter((x) => x.type === 'SkipTuning')[1],
        p = __st.node('PrimitiveFloat'); p.connect(0, n, n.inputs.findIndex((i) => i.name === 'rho_top'));
        __st.set(__st.node('SkipTuningAdvanced'), 'rho_per_skip', ''); return true; })()""")
    assert page.evaluate("app.canvas.ds.scale") == 1
    widths = page.evaluate("app.graph.nodes.filter((n) => n.skipTuningProfile !== undefined || "
                           "n.type !== 'PrimitiveFloat').map((n) => n.size[0])")
    assert widths and all(width == 320 for width in widths), widths  # the pack's default width
    page.profile("SkipTuning")
    profiles = page.evaluate("""(async () => { await __st.frames(3);
        return app.graph.nodes.filter((n) => n.skipTuningProfile).map((n) => [n.type, n.skipTuningProfile.kind,
        n.skipTuningProfile.texts]); })()""")
    assert sorted(kind for _, kind, _ in profiles) == ["linked", "schedule", "schedule", "schedule"], profiles
    for node_type, kind, texts in profiles:
        assert texts, (node_type, kind)
        for line in texts:
            assert not line["text"].endswith("…") and line["width"] <= line["room"], (node_type, kind, line)
    _screenshot(page, artifacts, "profile_text", clip=page.clip())


def test_node_help_opens_without_a_console_error(page, artifacts):
    """Select a node and press the selection toolbox's info button, as a user does: the help page comes
    from the first address the front end asks (docs/<node>/<locale>.md), nothing 404s, the console stays clean."""
    _fresh_graph(page, ("SkipTuning", 80, 80))
    docs = []
    page.page.on("response", lambda response: docs.append((response.url, response.status))
                 if "/docs/" in response.url else None)
    before = len(page.console)
    page.evaluate("app.canvas.selectNode(__st.node('SkipTuning')); app.canvas.setDirty(true, true); true")
    button = page.page.locator('[data-testid="info-button"]').first
    button.wait_for(timeout=15_000)
    button.click()
    page.page.get_by_text("The profile on the node").first.wait_for(timeout=15_000)
    _screenshot(page, artifacts, "node_help")
    ours = [(url, status) for url, status in docs if f"/extensions/{PACK}/docs/" in url]
    assert ours and ours[0][0].endswith(f"/extensions/{PACK}/docs/SkipTuning/en.md"), docs
    assert all(status == 200 for _, status in ours), docs
    errors = [e for e in page.console[before:] if e["level"] in ("error", "exception")]
    assert errors == [], errors
    page.evaluate("app.canvas.deselectAll?.(); true")
    page.page.keyboard.press("Escape")


def test_help_pages_for_other_locales_match_the_english_ones():
    """docs/<node>.md is where the front ends look when there is no page for the user's locale: the same text."""
    docs = comfy_helpers.REPO_ROOT / "js" / "docs"
    for node in ("SkipTuning", "SkipTuningAdvanced", "SkipTuningCompare", "ResidualTuning"):
        assert (docs / f"{node}.md").read_text() == (docs / node / "en.md").read_text(), node


@once
def test_templates_browser_shows_the_examples_titled_and_in_order(page, prepared_server, artifacts):
    """Open the Templates browser, pick the pack (1.49: under Extensions; 1.27: under Custom Nodes): the
    cards carry the titles (the file names), numbered in order, whatever order the server lists them in."""
    listed = prepared_server.get_json("/api/workflow_templates")[PACK]
    expected = sorted(WORKFLOWS)
    assert sorted(listed) == expected and all(name[0].isdigit() for name in expected)
    page.evaluate("app.graph.clear(); app.extensionManager.command.execute('Comfy.BrowseTemplates'); true")
    nav = page.page.get_by_text(PACK, exact=True).last
    nav.wait_for(timeout=20_000)
    nav.click()
    cards = page.page.locator('[data-testid^="template-workflow-"]')
    page.wait_for(f"document.querySelectorAll('[data-testid^=\"template-workflow-\"]').length === {len(expected)}",
                  timeout=20)
    shown = page.evaluate("""[...document.querySelectorAll('[data-testid^="template-workflow-"]')].map((card) => {
        const title = card.querySelector('h3'); return [title.textContent.trim(),
        title.scrollWidth <= title.clientWidth + 1 && title.scrollHeight <= title.clientHeight + 1]; })""")
    assert [title for title, _ in shown] == expected, (shown, listed)
    assert all(fits for _, fits in shown), shown  # no title cut at this window size (1400 x 900)
    _screenshot(page, artifacts, "templates")
    cards.first.click()  # loads the first example
    page.wait_for("app.graph.nodes.some((n) => n.type === 'SkipTuning')", timeout=20)
    page.page.keyboard.press("Escape")


# What users type, and the pack's node each query should bring near the top of 1.49's node search.
SEARCHES = {"freeu": "Skip Tuning", "few steps": "Skip Tuning", "skip connection": "Skip Tuning",
            "xy plot": "Skip Tuning Compare", "residual": "Residual Tuning (experimental)",
            "dit": "Residual Tuning (experimental)"}
SEARCH_LIMIT = 64  # the front end's cut, made before it ranks
NEAR_THE_TOP = 8
SEARCH_ALIASES_FROM = (1, 49)


@once
def test_search_aliases_bring_the_nodes_near_the_top(page, artifacts):
    """Double-click the canvas and type, as a user does, in 1.49's node search. Its results are the first
    64 fuzzy matches in the server's node order, ranked on the name alone: an alias finds a node only where
    fewer than 64 earlier nodes match the query ("dit" matches 64 core nodes first: no alias can reach it)."""
    version = page.frontend_version()
    if version < SEARCH_ALIASES_FROM:
        pytest.skip(f"front end {'.'.join(map(str, version))} searches node names only (search aliases from 1.49 "
                    "are tested; ComfyUI 0.3.64 has none)")
    page.evaluate("app.graph.clear(); true")
    box = page._empty_canvas_point()
    page.page.mouse.dblclick(*box)
    field = page.page.locator('input[role="combobox"][aria-controls="results-list"]')
    field.wait_for(timeout=10_000)
    ranks, counts = {}, {}
    for query, node in SEARCHES.items():
        field.fill(query)
        titles, deadline = None, time.monotonic() + 10
        while time.monotonic() < deadline:  # the results follow the typing: read until they settle
            time.sleep(0.4)
            now = page.evaluate("""[...document.querySelectorAll('#results-list [role=option]')]
                .map((e) => e.innerText.split('\\n')[0].trim())""")
            if now and now == titles:
                break
            titles = now
        ranks[query], counts[query] = (titles.index(node) if node in titles else None), len(titles)
    _screenshot(page, artifacts, "search")
    page.page.keyboard.press("Escape")
    for query, rank in ranks.items():
        if query == "dit":  # the limit above: 64 built-in nodes come first, none of them ours
            assert rank is not None and rank < NEAR_THE_TOP or counts[query] == SEARCH_LIMIT, (ranks, counts)
        else:
            assert rank is not None and rank < NEAR_THE_TOP, (ranks, counts)


def test_internal_widget_and_property_stay_out_of_the_properties_panels(page):
    """The profile widget and the preview size are not parameters: neither panel lists them."""
    _fresh_graph(page, ("SkipTuning", 80, 80))
    # The classic properties panel: what the node menu's "Properties Panel" opens.
    listed = page.evaluate("""(async () => { app.canvas.showShowNodePanel(__st.node('SkipTuning'));
        await __st.frames(); const panel = document.querySelector('.litegraph.dialog');
        const text = panel?.textContent ?? ''; panel?.close?.(); panel?.remove(); return text; })()""")
    assert "Node name for S&R" in listed or "Title" in listed, listed  # the panel opened
    assert "skip_profile" not in listed, listed
    if page.frontend_version() < (1, 49):
        return  # no side properties panel in 1.27
    page.evaluate("""(async () => { await app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', true);
        app.canvas.selectNode(__st.node('SkipTuning')); return true; })()""")
    panel = page.page.locator('[data-testid="properties-panel"]')
    panel.wait_for(timeout=15_000)
    page.wait_for("document.querySelector('[data-testid=\"properties-panel\"]').textContent.includes('rho_top')",
                  timeout=15)
    text = panel.inner_text()
    assert "rho_bottom" in text and "skip_profile" not in text, text
    page.evaluate("app.extensionManager.setting.set('Comfy.RightSidePanel.IsOpen', false); true")


def test_no_console_errors_or_warnings_from_the_pack(page):
    """Runs last for each renderer: everything above happened in this page. Warnings count too: the
    newer front ends warn about deprecated extension APIs, naming the extension."""
    page.evaluate("__st.frames()")
    ours = page.errors_mentioning(*OUR_NEEDLES, levels=("error", "exception", "assert", "warning"))
    assert ours == [], ours
    # The extension itself registered (a failure to load it is logged with its URL, caught above).
    assert page.evaluate("!!LiteGraph.createNode('SkipTuning').widgets.find((w) => w.name === 'skip_profile')")
