// onnxruntime-web side of the parity engine (edgetl.runtimes.ortweb drives it via Playwright),
// with the same window.edgetlHarness calls as browser_runner.js:
//   init({backend, numThreads}) -> info (throws with the reason when the backend cannot start)
//   run({modelUrl, format, inputsUrl, inputShape, layout}) -> {outputs, info, timings}
//   benchmark({modelUrl, contract, layout, runs, warmup}) -> batch-1 latency statistics (ms)
// Inputs are the probes' raw float32 NHWC bytes; NCHW artifacts get them transposed here.

import {adapterInfo} from '/lib/backend.js';
import {fetchFloat32, timeRuns, toBase64} from '/lib/float32.js';
import {createSession, loadOrt, ortInfo, runSession, toNchw} from '/lib/ort_engine.js';

let backend = null;
const sessions = new Map(); // modelUrl -> InferenceSession

async function init({backend: name, numThreads} = {}) {
  await loadOrt(name, numThreads ? {numThreads} : {});
  backend = name;
  return info();
}

/** ortInfo, plus which WebGPU adapter ran (vendor, architecture) on the webgpu backend. */
async function info() {
  const out = ortInfo(backend);
  if (backend === 'webgpu') out.webgpu_adapter = await adapterInfo();
  return out;
}

async function session(modelUrl) {
  if (!sessions.has(modelUrl)) sessions.set(modelUrl, await createSession(modelUrl, backend));
  return sessions.get(modelUrl);
}

function feedShape(shape, layout) {
  const [n, h, w, c] = shape;
  return layout === 'NCHW' ? [n, c, h, w] : shape;
}

async function run({modelUrl, format, inputsUrl, inputShape, layout = 'NHWC'}) {
  if (format !== 'onnx') throw new Error(`the onnxruntime-web harness runs onnx, not ${format}`);
  const t0 = performance.now();
  const s = await session(modelUrl);
  const t1 = performance.now();
  let raw = await fetchFloat32(inputsUrl, inputShape);
  if (layout === 'NCHW') raw = toNchw(raw, inputShape);
  const t2 = performance.now();
  const outs = await runSession(s, raw, feedShape(inputShape, layout));
  const t3 = performance.now();
  return {
    outputs: outs.map((o) => ({name: o.name, shape: o.dims, data: toBase64(o.data)})),
    info: await info(),
    timings: {load_ms: t1 - t0, fetch_ms: t2 - t1, infer_ms: t3 - t2},
  };
}

async function benchmark({modelUrl, contract, layout = 'NHWC', runs = 30, warmup = 5}) {
  const t0 = performance.now();
  const s = await session(modelUrl);
  const loadMs = performance.now() - t0;
  const shape = [1, contract.height, contract.width, contract.channels ?? 3];
  const x = Float32Array.from({length: shape.reduce((a, b) => a * b, 1)},
                              (_, i) => (i * 2654435761 % 256));
  const feed = layout === 'NCHW' ? toNchw(x, shape) : x;
  const once = async () => {
    const start = performance.now();
    await runSession(s, feed, feedShape(shape, layout));
    return performance.now() - start;
  };
  return {...await timeRuns(once, {runs, warmup}), load_ms: loadMs, info: await info()};
}

window.edgetlHarness = {init, run, benchmark, backendInfo: info};
window.edgetlHarnessReady = true;
