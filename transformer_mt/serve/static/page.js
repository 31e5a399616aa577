// The page of `transformer-mt serve`: translate, pick a hypothesis, look at its attention.
// Plain JavaScript against the service's own API (/info, /translate, /attention); nothing external.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { lines: [], results: [], maps: null, info: null };

async function call(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function describeModel() {
  try {
    const info = await call("/info");
    state.info = info;
    const langs = info.languages ? `${info.languages.source} \u2192 ${info.languages.target}, ` : "";
    const millions = (info.parameters / 1e6).toFixed(info.parameters < 1e7 ? 2 : 1);
    const step = info.step === null ? "" : `, step ${info.step}`;
    $("model-info").textContent =
      `${info.family}, ${millions}M parameters, ${langs}${info.vocab_size} pieces${step} \u2014 ${info.checkpoint}`;
    $("beam").value = info.decoding.beam;
    $("beam").max = info.limits.max_beam;
    $("nbest").value = info.decoding.nbest;
    $("nbest").max = info.limits.max_beam;
    $("lenpen").value = info.decoding.lenpen;
  } catch (err) {
    $("model-info").textContent = `could not describe the model: ${err.message}`;
  }
}

async function translate() {
  const lines = $("source").value.split("\n").map((line) => line.trim()).filter((line) => line);
  if (!lines.length) {
    say("type a sentence first", true);
    return;
  }
  const request = {
    text: lines,
    beam: parseInt($("beam").value, 10),
    nbest: parseInt($("nbest").value, 10),
    lenpen: parseFloat($("lenpen").value),
  };
  $("translate").disabled = true;
  say("translating\u2026");
  try {
    const answer = await call("/translate", request);
    state.lines = lines;
    state.results = answer.translations;
    showResults();
    say(`${lines.length} line(s), beam ${answer.decoding.beam}, length penalty ${answer.decoding.lenpen}`);
    await showAttention(0, 0);
  } catch (err) {
    say(err.message, true);
  } finally {
    $("translate").disabled = false;
  }
}

function showResults() {
  const box = $("results");
  box.replaceChildren();
  state.results.forEach((hyps, line) => {
    const item = document.createElement("div");
    item.className = "result";
    const src = document.createElement("p");
    src.className = "src";
    src.textContent = state.lines[line];
    const list = document.createElement("ol");
    hyps.forEach((hyp, rank) => {
      const entry = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "hyp";
      button.dataset.line = line;
      button.dataset.rank = rank;
      button.title = "show its attention";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hyp.score.toFixed(3);
      const text = document.createElement("span");
      text.className = "translation";
      text.textContent = hyp.text;
      button.append(score, text);
      button.addEventListener("click", () => showAttention(line, rank));
      entry.append(button);
      list.append(entry);
    });
    item.append(src, list);
    box.append(item);
  });
}

async function showAttention(line, rank) {
  const hyp = state.results[line][rank];
  document.querySelectorAll(".hyp").forEach((b) => {
    b.classList.toggle("chosen", Number(b.dataset.line) === line && Number(b.dataset.rank) === rank);
  });
  if (!hyp.tokens.length) {
    $("attention-panel").hidden = true;
    return;
  }
  try {
    state.maps = await call("/attention", { text: state.lines[line], tokens: hyp.tokens });
  } catch (err) {
    say(`attention: ${err.message}`, true);
    return;
  }
  const kind = $("map-kind");
  for (const option of kind.options) option.disabled = !state.maps[option.value].length;
  if (kind.selectedOptions[0].disabled) kind.value = "cross";
  fillSelectors(true);
  $("attention-panel").hidden = false;
  draw();
}

function fillSelectors(lastLayer) {
  const layers = state.maps[$("map-kind").value];
  const layer = $("layer");
  const keep = layer.value;
  layer.replaceChildren(...layers.map((_, i) => new Option(`${i + 1} of ${layers.length}`, i)));
  layer.value = lastLayer || keep === "" || keep >= layers.length ? layers.length - 1 : keep;
  const heads = layers[0].length;
  const head = $("head");
  const keepHead = head.value;
  const options = [new Option(heads > 1 ? "average of heads" : "the only head", "avg")];
  if (heads > 1) for (let h = 0; h < heads; h++) options.push(new Option(`${h + 1}`, h));
  head.replaceChildren(...options);
  head.value = keepHead !== "" && keepHead < heads ? keepHead : "avg";
}

function matrix() {
  const heads = state.maps[$("map-kind").value][Number($("layer").value)];
  const head = $("head").value;
  if (head !== "avg") return heads[Number(head)];
  return heads[0].map((row, i) => row.map((_, j) => heads.reduce((sum, h) => sum + h[i][j], 0) / heads.length));
}

function draw() {
  const kind = $("map-kind").value;
  const rows = kind === "encoder" ? state.maps.source : state.maps.target;
  const cols = kind === "decoder" ? state.maps.target : state.maps.source;
  const weights = matrix();
  const table = $("heatmap");
  const head = document.createElement("thead");
  const top = document.createElement("tr");
  top.append(document.createElement("th"));
  for (const label of cols) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    top.append(th);
  }
  head.append(top);
  const body = document.createElement("tbody");
  rows.forEach((label, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label;
    tr.append(th);
    cols.forEach((col, j) => {
      const w = weights[i][j];
      const td = document.createElement("td");
      td.dataset.weight = w;
      td.title = `${label} \u2192 ${col}: ${w.toFixed(3)}`;
      td.style.backgroundColor = `hsl(220, 75%, ${Math.round(100 - 70 * Math.sqrt(w))}%)`;
      tr.append(td);
    });
    body.append(tr);
  });
  table.replaceChildren(head, body);
  const what = { cross: "target pieces (rows) attend to source pieces (columns)",
                 encoder: "source pieces attend to source pieces",
                 decoder: "target pieces attend to earlier target pieces" }[kind];
  const headText = $("head").selectedOptions[0].textContent;
  $("map-caption").textContent =
    `${$("map-kind").selectedOptions[0].textContent}, layer ${Number($("layer").value) + 1}, ` +
    `${$("head").value === "avg" ? headText : "head " + headText}: ${what}`;
}

$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translate();
});
$("map-kind").addEventListener("change", () => { fillSelectors(true); draw(); });
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
describeModel();
