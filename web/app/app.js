// edgetl's browser app: classify with a bundle's model and keep training it here.
//
// Reads <bundle>/manifest.json (labels, input contract, artifacts) and loads the "tfjs_layers"
// artifact with tf.loadLayersModel. The bundle is /bundle/ (what `edgetl serve` maps) unless the
// page URL says ?bundle=/some/path/. ?backend=wasm|webgl|cpu picks the starting TF.js backend.
//
// Classification engines: the bundle's model runs on LiteRT.js when the bundle has a float32
// TFLite artifact, on onnxruntime-web when it has ONNX (each on wasm with SIMD and threads, or
// WebGPU where the browser has an adapter), or on TF.js. The page warms up every engine it can
// run at load and makes the fastest (warm time per image) the default; WebGPU on a software
// adapter (SwiftShader) is listed but not raced, it is never the fastest and compiles for tens of
// seconds. ?engine=litertjs-wasm|litertjs-webgpu|ort-wasm|ort-webgpu|tfjs picks one. A trained
// head always runs on TF.js (it exists only there): TF.js Layers stays the model the page trains.
// The page shows the load time, the first (cold) inference and the warm time per image.
//
// In-browser training follows the seed TF.js MobileNet example: freeze the loaded model, take its
// penultimate "features_pool" output as an embedding, train a small new head on embeddings of the
// examples the user adds, then stitch base + head into one model to predict and to save.
//
// window.edgetlApp exposes the same steps for scripts and tests:
//   ready (Promise), classify(source), setClasses(names), addExample(classIndex, source),
//   train({epochs, learningRate, hiddenUnits, onEpoch}), useModel('bundle'|'head'),
//   save(url), switchBackend(name), switchEngine(name), state.

import {BACKENDS, adapterInfo, backendInfo, initBackend} from '/lib/backend.js';
import {compileModel, litertInfo, runOnce} from '/lib/litert_engine.js';
import {createSession, ortInfo, runSession, toNchw, webgpuUnavailableReason}
  from '/lib/ort_engine.js';
import {checkContract, decodeImage, preprocess} from '/lib/preprocess.js';

const tf = globalThis.tf;
const $ = (id) => document.getElementById(id);
const TOP_K = 5;
const FEATURE_LAYER = 'features_pool';
const SAVE_NAME = 'edgetl-trained';
const ENGINES = ['litertjs-wasm', 'litertjs-webgpu', 'ort-wasm', 'ort-webgpu', 'tfjs'];
const WARM_RUNS = 3; // after the cold run; the median is the warm time shown

const state = {
  bundleUrl: '/bundle/',
  manifest: null,
  contract: null,
  labels: [],
  model: null, // the bundle's model
  featureModel: null, // image -> features_pool embedding (frozen)
  classes: [], // names for the new head
  examples: [], // per class: array of kept [1, D] embedding tensors
  head: null, // the new head (tf.Sequential on embeddings)
  trained: null, // base + head: image -> class probabilities
  active: 'bundle', // which model predictions use
  history: [],
  webcam: null,
  busy: false,
  lastResult: null, // the latest classification: {top, ms, probabilities, model, engine}
  onnx: null, // the bundle's ONNX artifact record, if any
  engine: 'tfjs', // which engine runs the bundle's model: one of ENGINES
  sessions: {}, // ort backend -> InferenceSession
  litert: {}, // LiteRT.js accelerator -> CompiledModel
  tflite: null, // the bundle's float32 TFLite artifact (LiteRT.js), or null
  adapter: null, // the WebGPU adapter's info, or null when there is none
  tfjsLoadMs: null, // manifest + TF.js model load
  timings: {}, // engine key (ort-wasm, tfjs-webgl, ...) -> {load_ms, cold_ms, warm_ms}
};

// ------------------------------------------------------------------ messages

function setStatus(text) {
  $('status').textContent = text;
}

/** A readable message on the page (never a blank screen). */
function showError(title, detail) {
  const box = $('error');
  box.hidden = false;
  box.textContent = detail ? `${title}\n${detail}` : title;
  document.body.dataset.state = 'error';
  setStatus('Error');
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function errorText(e) {
  return e && e.message ? e.message : String(e);
}

// ------------------------------------------------------------------ bundle loading

function bundleUrlFromPage() {
  const given = new URLSearchParams(location.search).get('bundle');
  if (!given) return '/bundle/';
  // Same-origin paths only: the page never fetches a model from elsewhere.
  const url = new URL(given, location.href);
  if (url.origin !== location.origin) throw new Error(`?bundle= must be a path on this server`);
  return url.pathname.endsWith('/') ? url.pathname : `${url.pathname}/`;
}

/** Fetch and check manifest.json; throws an Error whose message says what is wrong. */
async function loadManifest(base) {
  let response;
  try {
    response = await fetch(`${base}manifest.json`, {cache: 'no-store'});
  } catch (e) {
    throw new Error(`could not reach ${base}manifest.json (${errorText(e)})`);
  }
  if (!response.ok) {
    throw new Error(`no bundle at ${base}: manifest.json answered HTTP ${response.status}. ` +
                    'Start the app with `edgetl serve BUNDLE_DIR` on a directory written by ' +
                    '`edgetl export`.');
  }
  let manifest;
  try {
    manifest = JSON.parse(await response.text());
  } catch (e) {
    throw new Error(`${base}manifest.json is malformed: not valid JSON (${errorText(e)})`);
  }
  if (!manifest || typeof manifest !== 'object') {
    throw new Error(`${base}manifest.json is malformed: not a JSON object`);
  }
  const labels = manifest.labels;
  if (!Array.isArray(labels) || labels.length === 0 || !labels.every((l) => typeof l === 'string')) {
    throw new Error(`${base}manifest.json is malformed: "labels" must be a list of class names`);
  }
  let contract;
  try {
    contract = checkContract(manifest.input);
  } catch (e) {
    throw new Error(`${base}manifest.json is malformed: ${errorText(e)}`);
  }
  const artifacts = Array.isArray(manifest.artifacts) ? manifest.artifacts : [];
  const layers = artifacts.find((a) => a && a.format === 'tfjs_layers');
  if (!layers || typeof layers.path !== 'string') {
    const have = artifacts.map((a) => a && a.id).filter(Boolean).join(', ') || 'none';
    throw new Error(`this bundle has no TF.js Layers model (artifacts: ${have}); export it ` +
                    'with `edgetl export MODEL --formats tfjs`.');
  }
  const onnx = artifacts.find((a) => a && a.format === 'onnx' && typeof a.path === 'string');
  // LiteRT.js: the float32 TFLite file (fixed batch-1 signature, float32 in and out).
  const tflite = artifacts.find((a) => a && a.format === 'tflite' && a.precision === 'float32' &&
                                       typeof a.path === 'string');
  return {manifest, labels, contract, layers, onnx: onnx || null, tflite: tflite || null};
}

async function loadBundle() {
  state.bundleUrl = bundleUrlFromPage();
  setStatus(`Reading ${state.bundleUrl}manifest.json…`);
  const {manifest, labels, contract, layers, onnx, tflite} = await loadManifest(state.bundleUrl);
  state.onnx = onnx;
  state.tflite = tflite;
  state.manifest = manifest;
  state.labels = labels;
  state.contract = contract;
  setStatus(`Loading ${layers.path}…`);
  try {
    state.model = await tf.loadLayersModel(`${state.bundleUrl}${layers.path}`);
  } catch (e) {
    throw new Error(`could not load the TF.js model ${state.bundleUrl}${layers.path}: ` +
                    errorText(e));
  }
  const out = state.model.outputs[0].shape;
  if (out[out.length - 1] !== labels.length) {
    throw new Error(`the model has ${out[out.length - 1]} outputs but the manifest lists ` +
                    `${labels.length} labels`);
  }
  $('model-info').textContent =
      `${manifest.name || 'model'}: ${labels.length} classes (${labels.slice(0, 8).join(', ')}` +
      `${labels.length > 8 ? ', …' : ''}); input ${contract.height}×${contract.width} ` +
      `${contract.channels === 1 ? 'gray (BT.601 luma of the RGB)' : 'RGB'} ` +
      `0..255, ${contract.resize_method} resize; ${state.model.layers.length} layers.`;
}

// ------------------------------------------------------------------ backends

async function switchBackend(name) {
  const select = $('backend');
  try {
    const info = await initBackend(name);
    showBackend(info);
    if (state.model) await warmTfjs();
    return info;
  } catch (e) {
    select.value = tf.getBackend() || select.value;
    throw e;
  }
}

function showBackend(info) {
  $('active-backend').textContent = info.backend;
  $('backend').value = info.backend;
  const bits = [];
  if (info.backend === 'wasm') {
    bits.push(`SIMD ${info.wasm_simd ? 'on' : 'off'}`,
              `threads ${info.wasm_multithread ? `on (${info.wasm_threads})` : 'off'}`);
  }
  if (info.backend === 'webgl') {
    bits.push(`WebGL${info.webgl_version} ${info.webgl_precision}`);
    if (info.webgl_renderer) bits.push(info.webgl_renderer);
  }
  bits.push(info.cross_origin_isolated ? 'cross-origin isolated' : 'not isolated');
  $('backend-info').textContent = bits.join(' · ');
  document.body.dataset.backend = info.backend;
}

async function startBackend() {
  const wanted = new URLSearchParams(location.search).get('backend');
  const order = wanted ? [wanted] : ['webgl', 'wasm', 'cpu'];
  const failures = [];
  for (const name of order) {
    try {
      return await switchBackend(name);
    } catch (e) {
      failures.push(errorText(e));
    }
  }
  throw new Error(`no TF.js backend could start: ${failures.join('; ')}`);
}

// ------------------------------------------------------------------ engines and warm-up

/** The first run (cold: wasm/shader compilation, allocation) and the median of WARM_RUNS more. */
async function warmUp(once) {
  const t0 = performance.now();
  await once();
  const cold = performance.now() - t0;
  const times = [];
  for (let i = 0; i < WARM_RUNS; i++) {
    const t = performance.now();
    await once();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return {cold_ms: cold, warm_ms: times[Math.floor(times.length / 2)]};
}

function zerosInput() {
  return new Float32Array(state.contract.height * state.contract.width * state.contract.channels);
}

/** The TF.js model on the active backend, warmed up (timed, kept per backend). */
async function warmTfjs() {
  const x = tf.zeros([1, state.contract.height, state.contract.width, state.contract.channels]);
  try {
    const t = await warmUp(async () => {
      const y = state.model.predict(x);
      await y.data();
      y.dispose();
    });
    state.timings[`tfjs-${tf.getBackend()}`] = {load_ms: state.tfjsLoadMs ?? null, ...t};
  } finally {
    x.dispose();
  }
  showEngine();
}

function ortBackend(engine) {
  return engine.startsWith('ort-') ? engine.slice(4) : null;
}

function litertBackend(engine) {
  return engine.startsWith('litertjs-') ? engine.slice('litertjs-'.length) : null;
}

/** Run the bundle's TFLite artifact on LiteRT.js (batch 1, NHWC); probabilities out. */
async function runLitert(accelerator, data) {
  const {height, width} = state.contract;
  const outs = await runOnce(state.litert[accelerator], data, [1, height, width, 3]);
  return outs[0].data;
}

/** Why `engine` cannot run this bundle here (null when it can); adapter: false skips the
 * WebGPU adapter check (switchEngine asks the browser itself). */
function engineUnavailable(engine, {adapter = true} = {}) {
  if (engine === 'tfjs') return null;
  if (litertBackend(engine) && !state.tflite) {
    return 'this bundle has no float32 TFLite artifact; export it with `--formats tflite`';
  }
  if (ortBackend(engine) && !state.onnx) {
    return 'this bundle has no ONNX artifact; export it with `--formats tfjs,onnx`';
  }
  if (adapter && engine.endsWith('-webgpu') && !state.adapter) {
    return 'no WebGPU adapter in this browser';
  }
  return null;
}

/** Run the bundle's ONNX artifact on onnxruntime-web; NHWC input data in, probabilities out. */
async function runOnnx(backend, data) {
  const {height, width, channels} = state.contract;
  const nchw = state.onnx.layout === 'NCHW';
  const shape = nchw ? [1, channels, height, width] : [1, height, width, channels];
  const outs = await runSession(state.sessions[backend],
                                nchw ? toNchw(data, [1, height, width, channels]) : data, shape);
  return outs[0].data;
}

/** Make `name` the engine of the bundle's model: load (once) and warm it up. */
async function switchEngine(name) {
  if (!ENGINES.includes(name)) throw new Error(`unknown engine "${name}"; use ${ENGINES}`);
  const backend = ortBackend(name);
  const accelerator = litertBackend(name);
  const missing = engineUnavailable(name, {adapter: false});
  if (missing) throw new Error(missing);
  if (name.endsWith('-webgpu')) {
    const reason = await webgpuUnavailableReason(); // the page's own reason, e.g. no adapter
    if (reason) throw new Error(reason);
  }
  if (accelerator) {
    if (!state.litert[accelerator]) {
      setStatus(`Loading ${state.tflite.path} on LiteRT.js (${accelerator})…`);
      const t0 = performance.now();
      const model = await compileModel(`${state.bundleUrl}${state.tflite.path}`, accelerator);
      const loadMs = performance.now() - t0;
      state.litert[accelerator] = model;
      const input = zerosInput();
      state.timings[name] = {load_ms: loadMs, ...await warmUp(() => runLitert(accelerator, input))};
      state.litertInfo = await litertInfo(accelerator);
    }
  } else if (backend) {
    if (!state.sessions[backend]) {
      setStatus(`Loading ${state.onnx.path} on onnxruntime-web (${backend})…`);
      const t0 = performance.now();
      const session = await createSession(`${state.bundleUrl}${state.onnx.path}`, backend);
      const loadMs = performance.now() - t0;
      state.sessions[backend] = session;
      const input = zerosInput();
      state.timings[name] = {load_ms: loadMs, ...await warmUp(() => runOnnx(backend, input))};
    }
  } else if (!state.timings[`tfjs-${tf.getBackend()}`]) {
    await warmTfjs();
  }
  state.engine = name;
  $('engine').value = name;
  showEngine();
  return name;
}

function engineKey() {
  return state.engine === 'tfjs' ? `tfjs-${tf.getBackend()}` : state.engine;
}

function engineLabel() {
  if (state.active === 'head' && state.trained) return `TF.js · ${tf.getBackend()}`;
  const backend = ortBackend(state.engine);
  const accelerator = litertBackend(state.engine);
  if (accelerator) return `LiteRT.js · ${accelerator}`;
  return backend ? `onnxruntime-web · ${backend}` : `TF.js · ${tf.getBackend()}`;
}

function showEngine() {
  $('active-engine').textContent = engineLabel();
  document.body.dataset.engine = state.engine;
  const backend = ortBackend(state.engine);
  const accelerator = litertBackend(state.engine);
  const bits = [];
  if (backend) {
    const info = ortInfo(backend);
    bits.push(`ort ${info.ort_version}`, `${info.wasm_threads} thread(s)`, 'SIMD');
    bits.push(info.cross_origin_isolated ? 'cross-origin isolated' : 'not isolated');
  }
  if (accelerator && state.litertInfo) {
    const info = state.litertInfo;
    bits.push(`${info.wasm_threads} thread(s)`, info.wasm_relaxed_simd ? 'relaxed SIMD' : 'SIMD');
    bits.push(info.cross_origin_isolated ? 'cross-origin isolated' : 'not isolated');
  }
  if (state.engine.endsWith('-webgpu') && state.adapter) {
    bits.push(`adapter ${state.adapter.vendor} ${state.adapter.architecture}`.trim());
  }
  $('engine-info').textContent = bits.join(' · ');
  const t = state.timings[engineKey()];
  const ms = (v) => (v == null ? '–' : `${v.toFixed(1)} ms`);
  $('timings').textContent = t ? `load ${ms(t.load_ms)} · first inference (cold) ` +
                                 `${ms(t.cold_ms)} · warm ${ms(t.warm_ms)} per image` : '–';
  $('timings').dataset.cold = t ? String(t.cold_ms) : '';
  $('timings').dataset.warm = t ? String(t.warm_ms) : '';
}

// ------------------------------------------------------------------ classification

function currentModel() {
  return state.active === 'head' && state.trained ? state.trained : state.model;
}

function currentLabels() {
  return state.active === 'head' && state.trained ? state.classes : state.labels;
}

/** Top-k labels for one image (any preprocess() source); also shown on the page. */
async function classify(source) {
  if (!state.model) throw new Error('no model loaded');
  const model = currentModel();
  const labels = currentLabels();
  const x = preprocess(source, state.contract);
  const backend = model === state.model ? ortBackend(state.engine) : null;
  const accelerator = model === state.model ? litertBackend(state.engine) : null;
  let y;
  try {
    let probs;
    let ms;
    if (accelerator) {
      const data = await x.data();
      const t0 = performance.now();
      probs = await runLitert(accelerator, data);
      ms = performance.now() - t0;
    } else if (backend) {
      const data = await x.data();
      const t0 = performance.now();
      probs = await runOnnx(backend, data);
      ms = performance.now() - t0;
    } else {
      const t0 = performance.now();
      y = model.predict(x);
      probs = await y.data();
      ms = performance.now() - t0;
    }
    const ranked = Array.from(probs, (p, i) => ({label: labels[i] ?? `#${i}`, index: i, p}))
        .sort((a, b) => b.p - a.p).slice(0, Math.min(TOP_K, labels.length));
    showPredictions(ranked, ms);
    state.lastResult = {top: ranked, ms, probabilities: Array.from(probs), model: state.active,
                        engine: engineLabel()};
    return state.lastResult;
  } finally {
    x.dispose();
    if (y) y.dispose();
  }
}

function showPredictions(ranked, ms) {
  const list = $('predictions');
  list.replaceChildren(...ranked.map(({label, p}) => {
    const li = document.createElement('li');
    li.textContent = `${label} — ${(p * 100).toFixed(1)}%`;
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.width = `${Math.round(p * 120)}px`;
    li.append(bar);
    return li;
  }));
  list.dataset.top1 = ranked.length ? ranked[0].label : '';
  list.dataset.count = String(Number(list.dataset.count || 0) + 1);
  $('inference-time').textContent = `${ms.toFixed(1)} ms (${engineLabel()})`;
  $('active-model').textContent = state.active === 'head' ? 'your trained head' : 'bundle';
  showEngine();
}

function drawPreview(image) {
  const canvas = $('preview');
  const ctx = canvas.getContext('2d');
  if (image instanceof ImageData) {
    const tmp = new OffscreenCanvas(image.width, image.height);
    tmp.getContext('2d').putImageData(image, 0, 0);
    ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
  } else {
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  }
}

async function classifyFile(file) {
  if (!file) return null;
  if (file.type && !file.type.startsWith('image/')) {
    showError(`${file.name} is not an image`, `type: ${file.type}`);
    return null;
  }
  try {
    const image = await decodeImage(file);
    drawPreview(image);
    clearError();
    const result = await classify(image);
    document.body.dataset.state = 'ready';
    return result;
  } catch (e) {
    showError(`Could not classify ${file.name}`, errorText(e));
    return null;
  }
}

// ------------------------------------------------------------------ webcam

async function toggleWebcam() {
  const video = $('webcam');
  if (state.webcam) {
    state.webcam.getTracks().forEach((t) => t.stop());
    state.webcam = null;
    video.hidden = true;
    $('webcam-toggle').textContent = 'Start webcam';
    $('webcam-status').textContent = '';
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $('webcam-status').textContent = 'No webcam API in this browser (needs localhost or https).';
    return;
  }
  try {
    state.webcam = await navigator.mediaDevices.getUserMedia({video: {width: 224, height: 224}});
  } catch (e) {
    $('webcam-status').textContent = `Webcam unavailable: ${errorText(e)}`;
    return;
  }
  video.srcObject = state.webcam;
  video.hidden = false;
  $('webcam-toggle').textContent = 'Stop webcam';
  $('webcam-status').textContent = 'Webcam on.';
  await video.play().catch(() => {});
  webcamLoop();
}

async function webcamLoop() {
  const video = $('webcam');
  while (state.webcam) {
    if ($('webcam-live').checked && !state.busy && video.readyState >= 2) {
      try {
        await classify(video);
      } catch (e) {
        $('webcam-status').textContent = `Webcam classification failed: ${errorText(e)}`;
      }
    }
    await new Promise((r) => requestAnimationFrame(r));
  }
}

// ------------------------------------------------------------------ in-browser training

/** Image -> embedding model on the frozen bundle model's features_pool (penultimate) output. */
function featureModel() {
  if (state.featureModel) return state.featureModel;
  const base = state.model;
  let layer;
  try {
    layer = base.getLayer(FEATURE_LAYER);
  } catch (e) {
    // A model trained elsewhere: fall back to the last global pooling layer.
    layer = [...base.layers].reverse().find((l) => /GlobalAveragePooling/.test(l.getClassName()));
  }
  if (!layer) {
    throw new Error(`the model has no "${FEATURE_LAYER}" (or global pooling) layer to train a ` +
                    'new head on');
  }
  for (const l of base.layers) l.trainable = false; // freeze every loaded layer
  state.featureLayer = layer;
  state.featureModel = tf.model({inputs: base.inputs, outputs: layer.output});
  return state.featureModel;
}

function setClasses(names) {
  const clean = names.map((n) => String(n).trim()).filter(Boolean);
  if (clean.length < 2) throw new Error('name at least two classes');
  if (new Set(clean).size !== clean.length) throw new Error('class names must differ');
  for (const list of state.examples) list.forEach((t) => t.dispose());
  state.classes = clean;
  state.examples = clean.map(() => []);
  renderClassList();
  updateTrainButtons();
  return clean;
}

function renderClassList() {
  const box = $('class-list');
  box.replaceChildren(...state.classes.map((name, i) => {
    const row = document.createElement('div');
    row.className = 'class-row';
    row.dataset.classIndex = String(i);
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = name;
    const files = document.createElement('label');
    files.className = 'button';
    files.textContent = 'add images';
    const input = document.createElement('input');
    input.type = 'file';
    input.accept = 'image/*';
    input.multiple = true;
    input.className = 'example-files';
    input.dataset.classIndex = String(i);
    input.addEventListener('change', () => addFiles(i, input.files).finally(() => {
      input.value = '';
    }));
    files.append(input);
    const cam = document.createElement('button');
    cam.type = 'button';
    cam.textContent = 'add webcam frame';
    cam.addEventListener('click', () => {
      if (!state.webcam) {
        $('webcam-status').textContent = 'Start the webcam first.';
        return;
      }
      addExample(i, $('webcam')).catch((e) => showError('Could not add the frame', errorText(e)));
    });
    const count = document.createElement('span');
    count.className = 'count';
    count.id = `count-${i}`;
    count.textContent = '0 examples';
    row.append(label, files, cam, count);
    return row;
  }));
}

/** Add one example (any preprocess() source) to class `i`; stores its embedding. */
async function addExample(i, source) {
  if (!(i >= 0 && i < state.classes.length)) throw new Error(`no class ${i}`);
  const features = featureModel();
  const embedding = tf.tidy(() => {
    const x = preprocess(source, state.contract);
    return tf.keep(features.predict(x).reshape([1, -1]));
  });
  state.examples[i].push(embedding);
  const n = state.examples[i].length;
  const count = $(`count-${i}`);
  if (count) count.textContent = `${n} example${n === 1 ? '' : 's'}`;
  updateTrainButtons();
  return n;
}

async function addFiles(i, files) {
  for (const file of Array.from(files || [])) {
    try {
      await addExample(i, await decodeImage(file));
    } catch (e) {
      showError(`Could not add ${file.name}`, errorText(e));
    }
  }
}

function updateTrainButtons() {
  const ready = state.examples.length >= 2 && state.examples.every((l) => l.length > 0);
  $('train').disabled = !ready || state.busy;
  const trained = Boolean(state.trained);
  $('use-head').disabled = !trained;
  $('save-download').disabled = !trained;
  $('save-indexeddb').disabled = !trained;
}

/** Train a new head on the collected embeddings with live progress; returns the history. */
async function train({epochs = 20, learningRate = 0.001, hiddenUnits = 64, seed = 42,
                      onEpoch} = {}) {
  const counts = state.examples.map((l) => l.length);
  if (counts.length < 2 || counts.some((c) => c === 0)) {
    throw new Error('add at least one example to every class first');
  }
  const progress = $('train-progress');
  state.busy = true;
  updateTrainButtons();
  progress.dataset.state = 'training';
  const xs = tf.concat(state.examples.flat(), 0);
  const ys = tf.tidy(() => tf.oneHot(tf.tensor1d(
      state.examples.flatMap((l, c) => l.map(() => c)), 'int32'), state.classes.length)
      .toFloat());
  const dim = xs.shape[1];
  if (state.head) state.head.dispose();
  const head = tf.sequential({name: 'edgetl_browser_head', layers: [
    tf.layers.dense({inputShape: [dim], units: hiddenUnits, activation: 'relu', name: 'new_dense',
                     kernelInitializer: tf.initializers.glorotUniform({seed})}),
    tf.layers.dense({units: state.classes.length, activation: 'softmax', name: 'new_probabilities',
                     kernelInitializer: tf.initializers.glorotUniform({seed: seed + 1})}),
  ]});
  head.compile({optimizer: tf.train.adam(learningRate), loss: 'categoricalCrossentropy',
                metrics: ['accuracy']});
  state.history = [];
  try {
    await head.fit(xs, ys, {
      epochs,
      batchSize: Math.min(32, xs.shape[0]),
      shuffle: true,
      callbacks: {
        onEpochEnd: async (epoch, logs) => {
          const acc = logs.acc ?? logs.accuracy;
          state.history.push({epoch: epoch + 1, loss: logs.loss, accuracy: acc});
          progress.textContent = `epoch ${epoch + 1}/${epochs} — loss ${logs.loss.toFixed(4)}` +
                                 ` — accuracy ${(acc * 100).toFixed(1)}%`;
          progress.dataset.epoch = String(epoch + 1);
          progress.dataset.loss = String(logs.loss);
          progress.dataset.accuracy = String(acc);
          drawLossChart();
          if (onEpoch) onEpoch(epoch + 1, logs);
          await tf.nextFrame(); // let the page repaint: live progress
        },
      },
    });
  } finally {
    xs.dispose();
    ys.dispose();
    state.busy = false;
  }
  state.head = head;
  // One model from image to the new classes: the frozen base up to features_pool, then the head.
  const output = head.apply(state.featureLayer.output);
  state.trained = tf.model({inputs: state.model.inputs, outputs: output,
                            name: 'edgetl_browser_trained'});
  state.trained.setUserDefinedMetadata({labels: state.classes, input: state.contract,
                                        base: state.manifest.name || null});
  state.active = 'head';
  progress.dataset.state = 'done';
  progress.textContent += ' — done; predictions now use the new head.';
  $('active-model').textContent = 'your trained head';
  updateTrainButtons();
  return state.history;
}

function drawLossChart() {
  const canvas = $('loss-chart');
  const ctx = canvas.getContext('2d');
  const h = state.history;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (h.length < 1) return;
  const max = Math.max(...h.map((e) => e.loss), 1e-6);
  ctx.strokeStyle = '#d1242f';
  ctx.beginPath();
  h.forEach((e, i) => {
    const x = (i / Math.max(1, h.length - 1)) * (canvas.width - 10) + 5;
    const y = canvas.height - 5 - (e.loss / max) * (canvas.height - 10);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function useModel(which) {
  if (which === 'head' && !state.trained) throw new Error('train a head first');
  state.active = which === 'head' ? 'head' : 'bundle';
  $('active-model').textContent = state.active === 'head' ? 'your trained head' : 'bundle';
  showEngine();
  return state.active;
}

/** Save base + head: 'downloads://name' (model.json + weights.bin) or 'indexeddb://name'. */
async function save(url) {
  if (!state.trained) throw new Error('train a head first');
  const result = await state.trained.save(url);
  $('save-status').textContent = `Saved to ${url} (${result.modelArtifactsInfo.weightDataBytes} ` +
                                 'bytes of weights).';
  return {url, weightBytes: result.modelArtifactsInfo.weightDataBytes};
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('file-input').addEventListener('change', (e) => {
    const file = e.target.files[0];
    e.target.value = ''; // choosing the same file again must classify again
    classifyFile(file);
  });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    classifyFile(e.dataTransfer.files[0]);
  });
  $('backend').addEventListener('change', async (e) => {
    try {
      await switchBackend(e.target.value);
      clearError();
    } catch (err) {
      showError(`Could not switch to ${e.target.value}`, errorText(err));
    }
  });
  $('engine').addEventListener('change', async (e) => {
    const wanted = e.target.value;
    try {
      await switchEngine(wanted);
      clearError();
      setStatus(`Ready: ${engineLabel()}.`);
    } catch (err) {
      $('engine').value = state.engine;
      showError(`Could not switch to ${wanted}`, errorText(err));
      document.body.dataset.state = 'ready'; // the previous engine still runs
      setStatus(`Still on ${engineLabel()}.`);
    }
  });
  $('webcam-toggle').addEventListener('click', toggleWebcam);
  $('set-classes').addEventListener('click', () => {
    try {
      setClasses($('class-names').value.split(','));
      clearError();
    } catch (e) {
      showError('Cannot set classes', errorText(e));
    }
  });
  $('train').addEventListener('click', () => train({
    epochs: Number($('epochs').value) || 20,
    learningRate: Number($('learning-rate').value) || 0.001,
    hiddenUnits: Number($('hidden-units').value) || 64,
  }).catch((e) => showError('Training failed', errorText(e))));
  $('use-bundle').addEventListener('click', () => useModel('bundle'));
  $('use-head').addEventListener('click', () => useModel('head'));
  $('save-download').addEventListener('click', () => save(`downloads://${SAVE_NAME}`)
      .catch((e) => showError('Download failed', errorText(e))));
  $('save-indexeddb').addEventListener('click', () => save(`indexeddb://${SAVE_NAME}`)
      .catch((e) => showError('Saving to IndexedDB failed', errorText(e))));
}

/** Software WebGPU (SwiftShader): correct but far slower than wasm, so never raced at load. */
function softwareAdapter() {
  return !state.adapter || /swiftshader/i.test(`${state.adapter.architecture} ` +
                                                `${state.adapter.description}`);
}

/** Warm up every engine that can run this bundle here (wasm engines, and WebGPU on a hardware
 * adapter) and return the one with the lowest warm time per image; state.race keeps the times. */
async function fastestEngine() {
  const raced = {tfjs: state.timings[`tfjs-${tf.getBackend()}`]?.warm_ms ?? Infinity};
  for (const name of ENGINES) {
    if (name === 'tfjs' || engineUnavailable(name)) continue;
    if (name.endsWith('-webgpu') && softwareAdapter()) continue;
    try {
      await switchEngine(name);
      raced[name] = state.timings[name].warm_ms;
    } catch (e) {
      raced[name] = Infinity; // reported if chosen by ?engine=; here it just does not win
    }
  }
  state.race = raced;
  return Object.entries(raced).sort((a, b) => a[1] - b[1])[0][0];
}

async function main() {
  wire();
  if (!tf) {
    throw new Error('TF.js did not load (/vendor/tf.min.js); serve the app with `edgetl serve`.');
  }
  const info = await startBackend();
  const t0 = performance.now();
  await loadBundle();
  state.tfjsLoadMs = performance.now() - t0;
  setClasses($('class-names').value.split(','));
  // Warm-up: the first predict compiles kernels (WebGL shaders, wasm); keep it out of what the
  // user waits for, and show it apart (cold) from the time per image (warm).
  await warmTfjs();
  state.adapter = await webgpuUnavailableReason() ? null : await adapterInfo();
  for (const option of $('engine').options) {
    option.disabled = engineUnavailable(option.value) !== null;
  }
  $('backend').querySelector('option[value="webgpu"]').disabled = !state.adapter;
  const wanted = new URLSearchParams(location.search).get('engine');
  const engine = wanted || await fastestEngine();
  try {
    await switchEngine(engine);
  } catch (e) {
    // The TF.js model is loaded and warm: the page stays usable, and says why.
    await switchEngine('tfjs');
    $('engine-note').textContent = `${engine} is unavailable: ${errorText(e)}; using TF.js.`;
  }
  document.body.dataset.state = 'ready';
  setStatus(`Ready: ${state.labels.length} classes on ${engineLabel()} (TF.js ${info.backend} ` +
            'for training).');
  return state;
}

const ready = main().catch((e) => {
  showError('The model could not be loaded.', errorText(e));
  throw e;
});
ready.catch(() => {}); // reported on the page; keep the console free of an unhandled rejection

window.edgetlApp = {ready, state, classify, setClasses, addExample, train, useModel, save,
                    switchBackend, switchEngine, backendInfo, BACKENDS, ENGINES};
