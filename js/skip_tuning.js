// Skip Tuning: draws the rho profile (one bar per long skip, bottom -> top) on the
// "Skip Tuning" and "Skip Tuning (Advanced)" nodes, and one bar per block on "Residual Tuning
// (experimental)", redrawn from the widget values, so it follows a slider while it moves.
//
// The profile is a canvas widget (draw + computeSize). The classic LiteGraph canvas draws it with the
// node; front ends that render nodes as Vue components (setting "Modern Node Design (Nodes 2.0)",
// tested on 1.49) give such a widget a <canvas> of its own and call the same draw. Front end 1.27's
// experimental Vue nodes render only built-in widget types: there the profile is not shown. The
// preview-size entry goes through the node's extra menu options, which both the LiteGraph and the
// Vue context menus list.
//
// It also lists the pack's example workflows in a fixed order: the server lists a pack's templates in
// directory order, and the Templates browser shows them as listed (1.27, and 1.49 with its default
// sort); their file names are their titles.
//
// Canvas drawing only: no network calls of its own, no HTML built from user text.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  DEFAULT_PREVIEW_BLOCKS,
  DEFAULT_PREVIEW_SKIPS,
  PREVIEW_BLOCK_COUNTS,
  PREVIEW_SKIP_COUNTS,
  RHO_MAX,
  describeProfile,
  describeResidualProfile,
} from "./skip_tuning_profile.js";

// What each node's profile previews: Skip Tuning one bar per long skip, Residual Tuning one per block.
const SKIP_PROFILE = {
  title: "rho per skip, bottom → top",
  ends: ["bottom (deepest)", "top (highest res)"],
  menu: "Skip profile preview",
  property: "skip_profile_preview_skips",
  counts: PREVIEW_SKIP_COUNTS,
  defaultCount: DEFAULT_PREVIEW_SKIPS,
  rhoInputs: ["rho_bottom", "rho_top"],
  describe: (node, previewN, linked) =>
    describeProfile({
      rhoBottom: widgetValue(node, "rho_bottom"),
      rhoTop: widgetValue(node, "rho_top"),
      rhoPerSkip: widgetValue(node, "rho_per_skip") ?? "",
      previewN,
      linked,
    }),
};
const RESIDUAL_PROFILE = {
  title: "rho per block, first → last",
  ends: ["first block", "last block"],
  menu: "Block profile preview",
  property: "residual_profile_preview_blocks",
  counts: PREVIEW_BLOCK_COUNTS,
  defaultCount: DEFAULT_PREVIEW_BLOCKS,
  rhoInputs: ["rho_first", "rho_last", "start_depth"],
  describe: (node, previewN, linked) =>
    describeResidualProfile({
      rhoFirst: widgetValue(node, "rho_first"),
      rhoLast: widgetValue(node, "rho_last"),
      startDepth: widgetValue(node, "start_depth"),
      previewN,
      linked,
    }),
};
const PROFILE_NODES = new Map([
  ["SkipTuning", SKIP_PROFILE],
  ["SkipTuningAdvanced", SKIP_PROFILE],
  ["ResidualTuning", RESIDUAL_PROFILE],
]);
const WIDGET_NAME = "skip_profile";
const WIDGET_TYPE = "skip_tuning_profile";
const MIN_NODE_WIDTH = 320;

function specOf(node) {
  return PROFILE_NODES.get(node.comfyClass ?? node.type) ?? SKIP_PROFILE;
}

const COLORS = {
  weaker: "#5b9bd5", // rho < 1: the skip is damped
  neutral: "#8a8a8a", // rho = 1: untouched
  stronger: "#e0913a", // rho > 1: the skip is amplified
  error: "#e06c6c",
};

function litegraph() {
  return globalThis.LiteGraph ?? {};
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

// Inputs among `names` whose value comes from a link rather than the widget.
function linkedInputs(node, names) {
  const linked = (name) => (input) => input.link != null && (input.widget?.name ?? input.name) === name;
  return names.filter((name) => node.inputs?.some(linked(name)));
}

function previewSkips(node) {
  const spec = specOf(node);
  const n = Number(node.properties?.[spec.property]);
  return spec.counts.some((option) => option.n === n) ? n : spec.defaultCount;
}

function isAdvanced(node) {
  return node.widgets?.some((w) => w.name === "start_percent") ?? false;
}

export function currentProfile(node) {
  const spec = specOf(node);
  const profile = spec.describe(node, previewSkips(node), linkedInputs(node, spec.rhoInputs));
  if (isAdvanced(node)) {
    const start = Number(widgetValue(node, "start_percent"));
    const end = Number(widgetValue(node, "end_percent"));
    if (Number.isFinite(start) && Number.isFinite(end)) {
      profile.window = `active from ${Math.round(start * 100)}% to ${Math.round(end * 100)}% of sampling`;
    }
  }
  return profile;
}

// Breaks text into lines of at most maxWidth at spaces; a line that still does not fit gets an ellipsis.
function wrapText(ctx, text, maxWidth, maxLines) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const candidate = line ? `${line} ${word}` : word;
    if (!line || ctx.measureText(candidate).width <= maxWidth) line = candidate;
    else {
      lines.push(line);
      line = word;
    }
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) {
    const kept = lines.slice(0, maxLines);
    kept[maxLines - 1] = fitText(ctx, lines.slice(maxLines - 1).join(" ") + "…", maxWidth);
    return kept;
  }
  return lines.map((l) => fitText(ctx, l, maxWidth));
}

function measured(ctx, text, room) {
  return { text, width: ctx.measureText(text).width, room };
}

function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "…").width > maxWidth) cut = cut.slice(0, -1);
  return cut + "…";
}

function barColor(rho) {
  if (Math.abs(rho - 1) < 1e-9) return COLORS.neutral;
  return rho < 1 ? COLORS.weaker : COLORS.stronger;
}

const NOTE_LINES = 2;
const NOTE_LINE_HEIGHT = 12;

function widgetHeight(node) {
  return 128 + NOTE_LINES * NOTE_LINE_HEIGHT + (isAdvanced(node) ? NOTE_LINE_HEIGHT : 0);
}

function drawProfile(ctx, node, width, y) {
  const LG = litegraph();
  const text = LG.WIDGET_TEXT_COLOR ?? "#ddd";
  const dim = LG.WIDGET_SECONDARY_TEXT_COLOR ?? "#999";
  const margin = 15;
  const x0 = margin;
  const x1 = width - margin;
  const height = widgetHeight(node) - 4;
  const profile = currentProfile(node);
  const bars = [];
  const texts = [];

  ctx.save();
  ctx.fillStyle = LG.WIDGET_BGCOLOR ?? "#222";
  ctx.strokeStyle = LG.WIDGET_OUTLINE_COLOR ?? "#666";
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x0, y, x1 - x0, height, 6);
  else ctx.rect(x0, y, x1 - x0, height);
  ctx.fill();
  ctx.stroke();

  ctx.textBaseline = "alphabetic";
  ctx.font = "11px sans-serif";
  ctx.fillStyle = text;
  ctx.textAlign = "left";
  ctx.fillText(specOf(node).title, x0 + 8, y + 15);
  ctx.textAlign = "right";
  ctx.fillStyle = dim;
  const tag = profile.kind === "override" ? `${profile.rhos.length} values` : `N = ${previewSkips(node)}`;
  ctx.fillText(tag, x1 - 8, y + 15);

  const axisX = x0 + 26;
  const chartLeft = axisX + 4;
  const chartRight = x1 - 8;
  const chartTop = y + 24;
  const baseline = y + 88;
  const chartHeight = baseline - chartTop;
  // The axis starts at 0 (bar heights stay proportional to rho) and ends at 1.25, or
  // higher in steps of 0.25 when a factor is larger, at most RHO_MAX.
  const largest = Math.max(0, ...profile.rhos);
  const axisMax = Math.min(RHO_MAX, Math.max(1.25, Math.ceil(largest * 4 - 1e-9) / 4));
  const yOf = (rho) => baseline - (Math.min(Math.max(rho, 0), axisMax) / axisMax) * chartHeight;

  // Axis: 0, 1 (dashed: "no change") and the top of the scale.
  ctx.font = "9px sans-serif";
  ctx.textAlign = "right";
  ctx.fillStyle = dim;
  for (const tick of [0, 1, axisMax]) ctx.fillText(String(tick), axisX - 2, yOf(tick) + 3);
  ctx.strokeStyle = dim;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(chartLeft, baseline + 0.5);
  ctx.lineTo(chartRight, baseline + 0.5);
  ctx.stroke();

  const n = profile.rhos.length;
  if (n) {
    const slot = (chartRight - chartLeft) / n;
    const barWidth = Math.max(2, Math.min(28, slot * 0.7));
    for (let i = 0; i < n; i++) {
      const rho = profile.rhos[i];
      const top = yOf(rho);
      const x = chartLeft + i * slot + (slot - barWidth) / 2;
      const bar = { index: i, rho, x, y: top, w: barWidth, h: baseline - top, color: barColor(rho) };
      ctx.fillStyle = bar.color;
      ctx.fillRect(bar.x, bar.y, bar.w, Math.max(bar.h, 1));
      bars.push(bar);
    }
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = dim;
    ctx.beginPath();
    ctx.moveTo(chartLeft, Math.round(yOf(1)) + 0.5);
    ctx.lineTo(chartRight, Math.round(yOf(1)) + 0.5);
    ctx.stroke();
    ctx.setLineDash([]);

    // Values under the bars; every k-th one when the node is too narrow for all.
    ctx.font = "10px sans-serif";
    ctx.textAlign = "center";
    ctx.fillStyle = text;
    const labelWidth = ctx.measureText("0.00").width + 4;
    const stride = Math.max(1, Math.ceil(labelWidth / slot));
    for (let i = 0; i < n; i++) {
      const last = i === n - 1;
      if (!last && (i % stride !== 0 || n - 1 - i < stride)) continue;
      ctx.fillText(profile.rhos[i].toFixed(2), bars[i].x + bars[i].w / 2, baseline + 13);
    }
    ctx.font = "9px sans-serif";
    ctx.fillStyle = dim;
    ctx.textAlign = "left";
    ctx.fillText(specOf(node).ends[0], chartLeft, baseline + 27);
    ctx.textAlign = "right";
    ctx.fillText(specOf(node).ends[1], chartRight, baseline + 27);
  } else {
    ctx.font = "11px sans-serif";
    ctx.textAlign = "center";
    ctx.fillStyle = profile.kind === "error" ? COLORS.error : dim;
    const lines = wrapText(ctx, profile.message, chartRight - chartLeft, 3);
    const top = (chartTop + baseline) / 2 - ((lines.length - 1) * 14) / 2;
    lines.forEach((line, k) => ctx.fillText(line, (chartLeft + chartRight) / 2, top + k * 14));
    texts.push(...lines.map((line) => measured(ctx, line, chartRight - chartLeft)));
  }

  // The notes, wrapped to the node's width (never cut at the default width).
  ctx.font = "9px sans-serif";
  ctx.textAlign = "left";
  ctx.fillStyle = dim;
  const noteWidth = x1 - x0 - 16;
  const notes = [];
  if (n) notes.push(...wrapText(ctx, profile.message, noteWidth, NOTE_LINES));
  if (profile.window) notes.push(fitText(ctx, profile.window, noteWidth));
  notes.forEach((line, k) => ctx.fillText(line, x0 + 8, baseline + 41 + k * NOTE_LINE_HEIGHT));
  texts.push(...notes.map((line) => measured(ctx, line, noteWidth)));
  ctx.restore();

  // What was drawn, in the drawing's coordinates (the node's on the classic canvas, the widget's own
  // canvas on a Vue node): read back by the browser tests.
  node.skipTuningProfile = {
    kind: profile.kind,
    rhos: profile.rhos.slice(),
    message: profile.message,
    window: profile.window ?? null,
    axisMax,
    bars,
    texts, // each text line drawn, its width and the room it had
  };
}

// The classic canvas redraws the node on its next frame once marked dirty; a Vue-rendered node (newer
// front ends, e.g. 1.49) draws the widget into a <canvas> of its own, again only when its triggerDraw
// is called (the front end calls it itself for edits made in the node's own widgets).
function redraw(node) {
  node.setDirtyCanvas?.(true, true);
  node.widgets?.find((w) => w.name === WIDGET_NAME)?.triggerDraw?.();
}

function addProfileWidget(node) {
  if (node.widgets?.some((w) => w.name === WIDGET_NAME)) return;
  const spec = specOf(node);
  node.properties ??= {};
  node.properties[spec.property] ??= spec.defaultCount;

  const widget = {
    name: WIDGET_NAME,
    type: WIDGET_TYPE,
    value: null,
    serialize: false, // not part of the saved widget values
    // Not sent with the prompt, and not a parameter: the properties panel (1.49) leaves it out.
    options: { serialize: false, hideInPanel: true },
    draw(ctx, drawnNode, width, y) {
      drawProfile(ctx, drawnNode, width, y);
    },
    computeSize(width) {
      return [width ?? MIN_NODE_WIDTH, widgetHeight(node)];
    },
  };
  node.addCustomWidget(widget);

  // Values typed into a dialog or set by other code: redraw at once.
  for (const w of node.widgets) {
    if (w === widget) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const result = original?.apply(this, args);
      redraw(node);
      return result;
    };
  }

  const size = node.computeSize();
  const width = Math.max(node.size?.[0] ?? 0, size[0], MIN_NODE_WIDTH);
  node.setSize([width, Math.max(node.size?.[1] ?? 0, size[1])]);
}

// The pack's folder in custom_nodes, as the server names its templates: this file is served from
// /extensions/<folder>/.
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/").at(-2));

// The pack's example workflows in the order of their numbered titles ("1 - SD1.5 side by side", ...).
function orderTemplates() {
  const list = api.getWorkflowTemplates;
  if (typeof list !== "function") return;
  api.getWorkflowTemplates = async function (...args) {
    const templates = await list.apply(this, args);
    const ours = templates?.[PACK_FOLDER];
    if (Array.isArray(ours)) {
      templates[PACK_FOLDER] = [...ours].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    }
    return templates;
  };
}
orderTemplates();

app.registerExtension({
  name: "SkipTuning.RhoProfile",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PROFILE_NODES.has(nodeData?.name)) return;

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const result = onConnectionsChange?.apply(this, args);
      redraw(this);
      return result;
    };

    // The preview size is picked in the node's menu; the classic properties panel would show it as a
    // bare number beside the node's real settings, so it is left out there.
    const onAddPropertyToPanel = nodeType.prototype.onAddPropertyToPanel;
    nodeType.prototype.onAddPropertyToPanel = function (name, panel) {
      if (name === specOf(this).property) return true;
      return onAddPropertyToPanel?.apply(this, arguments) ?? false;
    };

    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const result = getExtraMenuOptions?.apply(this, arguments);
      const node = this;
      const spec = specOf(node);
      const current = previewSkips(node);
      options.push(null, {
        content: spec.menu,
        has_submenu: true,
        submenu: {
          options: spec.counts.map((option) => ({
            content: (option.n === current ? "● " : "") + option.label,
            callback: () => {
              node.properties[spec.property] = option.n;
              redraw(node);
            },
          })),
        },
      });
      return result;
    };
  },

  nodeCreated(node) {
    if (PROFILE_NODES.has(node.comfyClass)) addProfileWidget(node);
  },
});
