"""ComfyUI's front end in headless Chromium, driven through Playwright, for the browser tests.

Playwright (PyPI) drives the system's Chromium (``executable_path``): no browser download.
``FrontEnd`` wraps one page of the front end and knows both ways it draws nodes: on the classic
LiteGraph canvas, or as Vue components (setting "Modern Node Design (Nodes 2.0)"), where newer
front ends (1.49 is tested) give a canvas widget such as the pack's profile a small <canvas> of its
own inside the node's element. Its methods do what a user does (drag a slider, type into a widget,
pick from the node's context menu) in whichever renderer the page uses, and read back what the
pack drew, pixels included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"
RENDERERS = ("classic", "vue")


def find_chromium() -> str | None:
    """The browser to drive: $CHROMIUM_PATH, else the first Chromium on PATH."""
    explicit = os.environ.get("CHROMIUM_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def launch_chromium(executable: str):
    """A headless Chromium (the given executable) under Playwright; closed, with its processes, on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# Installed in every page: find nodes and widgets, map node coordinates to the screen and to
# canvas pixels in either renderer, and read the profile back as drawn.
PAGE_HELPERS = r"""
window.__st = {
  vue() { return !!LiteGraph.vueNodesMode; },
  node(type) { return app.graph.nodes.find((n) => n.type === type); },
  widget(node, name) { return node.widgets.find((w) => w.name === name); },
  element(node) { return document.querySelector(`[data-node-id="${node.id}"]`); },
  // Client (CSS) coordinates of a point given in node coordinates (classic canvas).
  client(node, x, y) {
    const c = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + x, node.pos[1] + y]);
    const r = app.canvas.canvas.getBoundingClientRect();
    const k = r.width / app.canvas.canvas.width * (window.devicePixelRatio || 1);
    return [r.left + c[0] * k, r.top + c[1] * k];
  },
  // Where the profile is drawn: classic, the graph canvas in node coordinates; Vue, the widget's
  // own canvas in its CSS pixels from its top-left (null until the node's element is mounted).
  surface(node) {
    if (!this.vue()) {
      const dpr = window.devicePixelRatio || 1;
      return { canvas: app.canvas.canvas, at: (x, y) => {
        const c = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + x, node.pos[1] + y]);
        return [c[0] * dpr, c[1] * dpr]; } };
    }
    const canvas = this.element(node)?.querySelector('[data-testid="node-widgets"] canvas');
    if (!canvas || !canvas.offsetWidth) return null;
    const k = canvas.width / canvas.offsetWidth;
    return { canvas, at: (x, y) => [x * k, y * k] };
  },
  // Nothing is redrawn here: a frame passes, so what the front end redraws by itself is on screen.
  async frames(count = 2) {
    for (let i = 0; i < count; i++) await new Promise((resolve) => requestAnimationFrame(resolve));
  },
  read(surface, x, y) {
    const [px, py] = surface.at(x, y);
    const d = surface.canvas.getContext('2d').getImageData(Math.round(px), Math.round(py), 1, 1).data;
    return [d[0], d[1], d[2]];
  },
  async pixel(node, x, y) {
    await this.frames();
    const s = this.surface(node);
    return s ? this.read(s, x, y) : null;
  },
  // The profile as last drawn, with the pixels inside the top of each bar and just above it.
  async profile(node) {
    await this.frames();
    const s = this.surface(node), p = node.skipTuningProfile;
    if (!s || !p) return null;
    const bars = p.bars.map((b) => ({ ...b, inside: this.read(s, b.x + b.w / 2, b.y + Math.min(2, b.h / 2)),
      above: this.read(s, b.x + b.w / 2, b.y - 3) }));
    return { ...p, bars };
  },
  // Screen box of a node, title included.
  box(node) {
    if (this.vue()) {
      const r = this.element(node).getBoundingClientRect();
      return [r.left, r.top, r.right, r.bottom];
    }
    const a = this.client(node, 0, -LiteGraph.NODE_TITLE_HEIGHT - 18);
    const b = this.client(node, node.size[0], node.size[1]);
    return [a[0], a[1], b[0], b[1]];
  },
  view(x, y, scale = 1) {
    app.canvas.ds.scale = scale; app.canvas.ds.offset = [x, y]; app.canvas.setDirty(true, true);
  },
  // What other code (a dialog, another extension) does: set the value, then call the callback.
  set(node, name, value) { const w = this.widget(node, name); w.value = value; w.callback?.(value); },
  add(type, x, y) {
    const n = LiteGraph.createNode(type);
    if (!n) throw new Error('no node type ' + type);
    n.pos = [x, y];
    app.graph.add(n);
    return n;
  },
};
true;
"""


class FrontEnd:
    """One page of ComfyUI's front end in one renderer; ``console`` collects what the page reports."""

    def __init__(self, page, renderer: str):
        self.page = page
        self.renderer = renderer
        self.console: list[dict] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)

    def _on_console(self, message) -> None:
        url = (message.location or {}).get("url", "")
        self.console.append({"level": message.type, "text": message.text, "urls": [url]})

    def _on_page_error(self, error) -> None:
        text = f"{error.name}: {error.message}\n{error.stack or ''}"
        self.console.append({"level": "exception", "text": text, "urls": []})

    def open(self, url: str, timeout: float = 120.0) -> None:
        """Load the front end and wait until the pack's extension is active."""
        self.page.goto(url, timeout=timeout * 1000)
        self.wait_for("!!(window.app && app.graph && app.canvas && window.LiteGraph"
                      " && LiteGraph.registered_node_types.SkipTuning)", timeout=timeout)
        self.evaluate(PAGE_HELPERS)
        # The extension is loaded when a new Skip Tuning node gets the profile widget.
        self.wait_for("(() => { const n = LiteGraph.createNode('SkipTuning');"
                      " return !!n.widgets.find((w) => w.name === 'skip_profile'); })()", timeout=60)
        self.evaluate("document.activeElement && document.activeElement.blur(); true")

    @property
    def vue(self) -> bool:
        return self.renderer == "vue"

    # -- page access ------------------------------------------------------------------------------
    def evaluate(self, expression: str, arg=None):
        """Evaluate JavaScript (an expression, or a function given ``arg``) and return its JSON value."""
        return self.page.evaluate(expression, arg)

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll ``expression`` until it is truthy; return its value."""
        return self.page.wait_for_function(expression, timeout=timeout * 1000, polling=200).json_value()

    def frontend_version(self) -> tuple:
        version = self.evaluate("window.__COMFYUI_FRONTEND_VERSION__ ?? ''")
        return tuple(int(part) for part in version.split(".") if part.isdigit())

    def errors_mentioning(self, *needles: str, levels=("error", "exception", "assert")) -> list[dict]:
        """Console entries of ``levels`` (errors and exceptions) whose text or source mentions one of ``needles``."""
        found = []
        for entry in self.console:
            if entry["level"] not in levels:
                continue
            haystack = (entry["text"] + " " + " ".join(entry["urls"])).lower()
            if any(needle.lower() in haystack for needle in needles):
                found.append(entry)
        return found

    def _empty_canvas_point(self) -> tuple:
        """A point the tests keep free of nodes and of the front ends' own panels."""
        viewport = self.page.viewport_size
        return viewport["width"] * 0.75, viewport["height"] * 0.6

    def screenshot(self, path: str, clip: dict | None = None) -> str:
        """What a user sees, without the tooltip of wherever the mouse was last: it rests on empty canvas."""
        self.page.mouse.move(*self._empty_canvas_point())
        self.evaluate("__st.frames()")
        self.page.screenshot(path=path, clip=clip)
        return path

    def clip(self, nodes_expression: str = "app.graph.nodes", margin: float = 12) -> dict:
        """Screenshot clip (client coordinates) around the nodes, title bars and badges included."""
        x0, y0, x1, y1 = self.evaluate(f"""(() => {{
            let box = [Infinity, Infinity, -Infinity, -Infinity];
            for (const n of {nodes_expression}) {{
                const b = __st.box(n);
                box = [Math.min(box[0], b[0]), Math.min(box[1], b[1]), Math.max(box[2], b[2]), Math.max(box[3], b[3])];
            }}
            return box; }})()""")
        x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
        return {"x": x0, "y": y0, "width": x1 + margin - x0, "height": y1 + margin - y0}

    def node_clip(self, node_type: str, margin: float = 12) -> dict:
        return self.clip(f"[__st.node({json.dumps(node_type)})]", margin)

    # -- reading what the pack drew ---------------------------------------------------------------
    def profile(self, node_type: str, timeout: float = 15.0) -> dict:
        """The profile as last drawn on the node, read after the next frames without forcing a redraw
        (a Vue node's widget is mounted a moment after the node is added: waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            profile = self.evaluate(f"__st.profile(__st.node({json.dumps(node_type)}))")
            if profile is not None:
                return profile
            if time.monotonic() > deadline:
                raise AssertionError(f"no profile drawn on {node_type} within {timeout} s")
            time.sleep(0.2)

    def pixel(self, node_type: str, x: float, y: float) -> list:
        return self.evaluate(f"__st.pixel(__st.node({json.dumps(node_type)}), {x}, {y})")

    def widget_value(self, node_type: str, name: str):
        return self.evaluate(f"__st.widget(__st.node({json.dumps(node_type)}), {json.dumps(name)}).value")

    def _node_locator(self, node_type: str):
        node_id = self.evaluate(f"__st.node({json.dumps(node_type)}).id")
        return self.page.locator(f'[data-node-id="{node_id}"]')

    # -- doing what a user does -------------------------------------------------------------------
    def drag_slider(self, node_type: str, name: str, values: list, steps: int = 4, midway=None) -> None:
        """Press on the slider at ``values[0]``, move through the others and release at the last;
        ``midway()`` is called with the button still down, at ``values[-2]``."""
        points = [self._slider_point(node_type, name, value) for value in values]
        mouse = self.page.mouse
        mouse.move(*points[0])
        mouse.down()
        for k, (start, end) in enumerate(zip(points, points[1:])):
            for i in range(1, steps + 1):
                mouse.move(start[0] + (end[0] - start[0]) * i / steps, start[1])
            if midway is not None and k == len(points) - 3:
                midway()
        mouse.up()

    def _slider_point(self, node_type: str, name: str, value: float) -> tuple:
        if not self.vue:
            return tuple(self.evaluate(f"""(async () => {{
                await __st.frames();  // widget positions are laid out when the canvas draws
                const node = __st.node({json.dumps(node_type)}), w = __st.widget(node, {json.dumps(name)});
                const lo = w.options.min, hi = w.options.max;
                const x = 15 + (node.size[0] - 30) * ({value} - lo) / (hi - lo);
                return __st.client(node, x, w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2); }})()"""))
        # A Vue node's slider: a track whose full width spans min..max.
        slider = self._node_locator(node_type).locator(f'[data-slot="slider"][aria-label="{name}"]')
        track = slider.locator('[data-slot="slider-track"]').bounding_box()
        lo, hi = self.evaluate(f"""(() => {{ const w = __st.widget(__st.node({json.dumps(node_type)}),
            {json.dumps(name)}); return [w.options.min, w.options.max]; }})()""")
        return (track["x"] + track["width"] * (value - lo) / (hi - lo), track["y"] + track["height"] / 2)

    def type_into_widget(self, node_type: str, name: str, text: str) -> None:
        """Type ``text`` into a text widget and confirm it with Enter, as a user does."""
        self.evaluate(f"""(() => {{ const n = __st.node({json.dumps(node_type)});
            if (__st.widget(n, {json.dumps(name)}).options?.advanced) n.showAdvanced = true;
            __st.view(...app.canvas.ds.offset, app.canvas.ds.scale); return true; }})()""")
        if self.vue:
            field = self._node_locator(node_type).locator(f'input[aria-label="{name}"], textarea[aria-label="{name}"]')
            field.click()
            field.fill(text)
            field.press("Enter")
            return
        at = self.evaluate(f"""(async () => {{ await __st.frames(); const n = __st.node({json.dumps(node_type)}),
            w = __st.widget(n, {json.dumps(name)});
            return __st.client(n, n.size[0] / 2, w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2); }})()""")
        self.page.mouse.click(*at)
        dialog = self.page.locator(".graphdialog input, .graphdialog textarea").first
        dialog.wait_for(timeout=10_000)
        dialog.fill(text)
        dialog.press("Enter")

    def open_node_menu(self, node_type: str) -> None:
        """Right-click the node's title bar."""
        if self.vue:
            node_id = self.evaluate(f"__st.node({json.dumps(node_type)}).id")
            self.page.locator(f'[data-testid="node-header-{node_id}"]').click(button="right")
            return
        at = self.evaluate(f"""(async () => {{ await __st.frames();
            return __st.client(__st.node({json.dumps(node_type)}), 60, -LiteGraph.NODE_TITLE_HEIGHT / 2); }})()""")
        self.page.mouse.click(*at, button="right")

    def click_menu_entry(self, text: str) -> None:
        """Click the entry of the open context menu whose text contains ``text`` (a submenu opens on it)."""
        selector = ".p-contextmenu-item-link" if self.vue else ".litemenu-entry"
        entry = self.page.locator(selector, has_text=text).last
        entry.wait_for(timeout=10_000)
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        item = entry.locator("xpath=ancestor::li[1]")
        if self.vue and item.get_attribute("aria-haspopup") not in (None, "false"):
            # The Vue menu opens a submenu on hover (once the menu has settled) and toggles it on click.
            entry.hover()
            try:
                self.page.wait_for_function("(li) => li.getAttribute('aria-expanded') === 'true'",
                                            arg=item.element_handle(), timeout=2000)
            except PlaywrightTimeoutError:
                entry.click()
        else:
            entry.click()

    def close_menus(self) -> None:
        """Close open context menus the way a user does: a click on empty canvas."""
        self.page.mouse.click(*self._empty_canvas_point())
        self.wait_for("!document.querySelector('.litemenu, .p-contextmenu')", timeout=10)
