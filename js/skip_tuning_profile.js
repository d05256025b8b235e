// Skip Tuning: the rho profile as the front end previews it.
//
// The front end cannot call Python, so rhoSchedule mirrors rho_schedule in
// skip_tuning/schedule.py; the browser tests compare the two. Everything
// else here only reads widget values and describes what to draw.

export const RHO_MIN = 0.0;
export const RHO_MAX = 2.0;

// Preview sizes the user can pick; the real count is read from the model when it runs.
export const PREVIEW_SKIP_COUNTS = [
  { n: 12, label: "12 skips (SD1.x, SD2.x)" },
  { n: 9, label: "9 skips (SDXL)" },
  { n: 6, label: "6 skips (KOALA, SD-XS)" },
  { n: 19, label: "19 skips (HunyuanDiT)" },
  { n: 10, label: "10 skips (Hunyuan3D 2.1)" },
];
export const DEFAULT_PREVIEW_SKIPS = 12;

// Skip i (0 = deepest, n - 1 = highest resolution) gets
// rho_bottom + (rho_top - rho_bottom) * i / (n - 1), the top one exactly rho_top;
// a single skip gets rho_bottom.
export function rhoSchedule(n, rhoBottom, rhoTop) {
  if (n <= 1) return [rhoBottom];
  const last = n - 1;
  const rhos = [];
  for (let i = 0; i < n; i++) rhos.push(i < last ? rhoBottom + ((rhoTop - rhoBottom) * i) / last : rhoTop);
  return rhos;
}

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

// Same rules as parse_rho_list: commas or semicolons, blanks around entries, an
// optional pair of [] or () around the list, every entry a number in [0, 2];
// "" means "no override". Returns {values} or {error}.
export function parseRhoList(text) {
  if (typeof text !== "string") return { values: [] };
  let body = text.trim();
  if (body.length >= 2 && ["[]", "()"].includes(body[0] + body[body.length - 1])) body = body.slice(1, -1);
  const items = body.replace(/;/g, ",").split(",").map((item) => item.trim());
  if (items.length === 1 && items[0] === "") return { values: [] };
  const values = [];
  for (let k = 0; k < items.length; k++) {
    const item = items[k];
    if (item === "") return { error: `entry ${k + 1} is empty` };
    const value = NUMBER.test(item) ? Number(item) : NaN;
    if (!Number.isFinite(value)) return { error: `entry ${k + 1} is not a number` };
    if (value < RHO_MIN || value > RHO_MAX) return { error: `entry ${k + 1} (${value}) is outside 0-2` };
    values.push(value);
  }
  return { values };
}

// What the node's profile shows. inputs: {rhoBottom, rhoTop, rhoPerSkip, previewN,
// linked: [names of rho inputs fed by a link]}.
export function describeProfile({ rhoBottom, rhoTop, rhoPerSkip = "", previewN = DEFAULT_PREVIEW_SKIPS, linked = [] }) {
  const override = parseRhoList(rhoPerSkip);
  if (override.error) {
    return { kind: "error", rhos: [], message: `rho_per_skip: ${override.error}` };
  }
  if (override.values.length) {
    return {
      kind: "override",
      rhos: override.values,
      message: `rho_per_skip: ${override.values.length} values; the model must have that many skips`,
    };
  }
  if (linked.length) {
    return { kind: "linked", rhos: [], message: `${linked.join(", ")} set by a link: profile known at run time` };
  }
  const bottom = Number(rhoBottom);
  const top = Number(rhoTop);
  if (!Number.isFinite(bottom) || !Number.isFinite(top)) {
    return { kind: "error", rhos: [], message: "rho_bottom and rho_top must be numbers" };
  }
  const rhos = rhoSchedule(previewN, bottom, top);
  const unchanged = rhos.every((rho) => rho === 1);
  return {
    kind: "schedule",
    rhos,
    message: unchanged
      ? `preview for ${previewN} skips: all 1, the model is unchanged; set rho_bottom (README: presets)`
      : `preview for ${previewN} skips; the model's own count is used at run time`,
  };
}

// Residual Tuning (experimental): block counts of the DiTs it supports, for the preview.
export const PREVIEW_BLOCK_COUNTS = [
  { n: 57, label: "57 blocks (Flux.1: 19 double + 38 single)" },
  { n: 24, label: "24 blocks (SD3 medium, SD3.5 medium)" },
  { n: 38, label: "38 blocks (SD3.5 large)" },
];
export const DEFAULT_PREVIEW_BLOCKS = 57;

// Mirrors block_factors in skip_tuning/residual.py: 1 before start_depth of the blocks,
// then linear from rhoFirst (first tuned block) to rhoLast (last block).
export function blockFactors(n, rhoFirst, rhoLast, startDepth) {
  const first = Math.floor(startDepth * n + 1e-9);
  const tuned = n - first;
  const rhos = new Array(first).fill(1);
  for (let i = 0; i < tuned; i++) {
    const position = tuned > 1 ? i / (tuned - 1) : 0;
    rhos.push(rhoFirst + (rhoLast - rhoFirst) * position);
  }
  return rhos;
}

// What the Residual Tuning node's profile shows. inputs: {rhoFirst, rhoLast, startDepth, previewN, linked}.
export function describeResidualProfile({ rhoFirst, rhoLast, startDepth, previewN = DEFAULT_PREVIEW_BLOCKS,
  linked = [] }) {
  if (linked.length) {
    return { kind: "linked", rhos: [], message: `${linked.join(", ")} set by a link: profile known at run time` };
  }
  const first = Number(rhoFirst);
  const last = Number(rhoLast);
  const depth = Number(startDepth);
  if (!Number.isFinite(first) || !Number.isFinite(last) || !Number.isFinite(depth)) {
    return { kind: "error", rhos: [], message: "rho_first, rho_last and start_depth must be numbers" };
  }
  const rhos = blockFactors(previewN, first, last, depth);
  const kept = rhos.reduce((product, rho) => product * rho, 1);
  return {
    kind: "schedule",
    rhos,
    message: `preview for ${previewN} blocks; the input embedding keeps ${kept.toFixed(2)} of its weight`,
  };
}
