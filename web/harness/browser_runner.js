// The browser side of the parity engine (edgetl.runtimes.tfjs_browser drives it via Playwright).
//
// window.edgetlHarness:
//   init({backend, numThreads})   -> backend info (throws if the backend cannot start)
//   run({modelUrl, format, inputsUrl, inputShape})
//        -> {outputs: [{name, shape, data: base64 little-endian float32}], info, timings}
//      inputsUrl is raw little-endian float32 bytes (probes/inputs.bin). They are the model's own
//      input (the probes are stored in the contract's size and value range), so they are fed as
//      they are, exactly as Python and Node feed them. The page's preprocess() is checked on its
//      own: preprocessRaw below, and the app's top-1 on real images in the browser tests.
//   benchmark({modelUrl, format, contract, runs, warmup}) -> batch-1 latency statistics (ms)
//   preprocessRaw({data, shape, contract}) -> the shared preprocess() applied to raw pixels
// window.edgetlHarnessReady is true once this module has loaded.

import {backendInfo, initBackend} from '/lib/backend.js';
import {fetchFloat32, timeRuns, toBase64} from '/lib/float32.js';
import {preprocess} from '/lib/preprocess.js';

const tf = globalThis.tf;
const models = new Map(); // modelUrl -> loaded model, so a benchmark after a run loads nothing

async function loadModel(modelUrl, format) {
  const key = `${format}:${modelUrl}`;
  if (!models.has(key)) {
    let model;
    if (format === 'tfjs_layers') model = await tf.loadLayersModel(modelUrl);
    else if (format === 'tfjs_graph') model = await tf.loadGraphModel(modelUrl);
    else throw new Error(`the browser harness runs tfjs_layers and tfjs_graph, not ${format}`);
    models.set(key, model);
  }
  return models.get(key);
}

function outputNames(model, count) {
  const names = model.outputNames || (model.outputs || []).map((o) => o.name);
  return Array.from({length: count}, (_, i) => names[i] || `output_${i}`);
}

function predict(model, x) {
  const y = model.predict(x);
  return Array.isArray(y) ? y : (y instanceof tf.Tensor ? [y] : Object.values(y));
}

async function init({backend, numThreads} = {}) {
  return initBackend(backend, numThreads ? {numThreads} : {});
}

async function run({modelUrl, format, inputsUrl, inputShape}) {
  const t0 = performance.now();
  const model = await loadModel(modelUrl, format);
  const t1 = performance.now();
  const raw = await fetchFloat32(inputsUrl, inputShape);
  const t2 = performance.now();
  const x = tf.tensor(raw, inputShape, 'float32');
  let ys;
  try {
    ys = predict(model, x);
    const names = outputNames(model, ys.length);
    const outputs = [];
    for (let i = 0; i < ys.length; i++) {
      const data = await ys[i].data();
      outputs.push({name: names[i], shape: ys[i].shape,
                    data: toBase64(data instanceof Float32Array ? data : Float32Array.from(data))});
    }
    const t3 = performance.now();
    return {outputs, info: await backendInfo(),
            timings: {load_ms: t1 - t0, fetch_ms: t2 - t1, infer_ms: t3 - t2}};
  } finally {
    x.dispose();
    if (ys) ys.forEach((t) => t.dispose());
  }
}

async function benchmark({modelUrl, format, contract, runs = 30, warmup = 5}) {
  const model = await loadModel(modelUrl, format);
  const h = contract.height;
  const w = contract.width;
  const x = tf.tidy(() => tf.randomUniform([1, h, w, contract.channels ?? 3], 0, 255, 'float32', 7));
  const once = async () => {
    const t0 = performance.now();
    const ys = predict(model, x);
    await Promise.all(ys.map((y) => y.data()));
    const dt = performance.now() - t0;
    ys.forEach((y) => y.dispose());
    return dt;
  };
  try {
    return {...await timeRuns(once, {runs, warmup}), info: await backendInfo()};
  } finally {
    x.dispose();
  }
}

/** preprocess() on raw RGB values (base64 LE float32, shape [N,H,W,3]); checks the JS resize
 * against Python's edgetl.data.resize_bilinear. Returns {shape, data: base64}. */
async function preprocessRaw({data, shape, contract}) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const values = Float32Array.from({length: bytes.length / 4}, (_, i) => view.getFloat32(i * 4, true));
  const y = preprocess(tf.tensor(values, shape, 'float32'), contract);
  try {
    return {shape: y.shape, data: toBase64(await y.data())};
  } finally {
    y.dispose();
  }
}

window.edgetlHarness = {init, run, benchmark, preprocessRaw, backendInfo: () => backendInfo()};
window.edgetlHarnessReady = true;
