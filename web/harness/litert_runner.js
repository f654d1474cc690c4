// LiteRT.js side of the parity engine (edgetl.runtimes.litertjs drives it via Playwright), with
// the same window.edgetlHarness calls as browser_runner.js and ort_runner.js:
//   init({backend}) -> info (throws with the reason when the accelerator cannot start)
//   run({modelUrl, format, inputsUrl, inputShape}) -> {outputs, info, timings}
//   benchmark({modelUrl, contract, runs, warmup}) -> batch-1 latency statistics (ms)
// Inputs are the probes' raw float32 NHWC bytes, fed image by image (batch-1 models).

import {fetchFloat32, timeRuns, toBase64} from '/lib/float32.js';
import {compileModel, initLiteRt, litertInfo, runBatch, runOnce} from '/lib/litert_engine.js';

let accelerator = null;
const models = new Map(); // modelUrl -> CompiledModel

async function init({backend} = {}) {
  const info = await initLiteRt(backend);
  accelerator = backend;
  return info;
}

async function model(modelUrl) {
  if (!models.has(modelUrl)) models.set(modelUrl, await compileModel(modelUrl, accelerator));
  return models.get(modelUrl);
}

async function run({modelUrl, format, inputsUrl, inputShape}) {
  if (format !== 'tflite') throw new Error(`the LiteRT.js harness runs tflite, not ${format}`);
  const t0 = performance.now();
  const m = await model(modelUrl);
  const t1 = performance.now();
  const raw = await fetchFloat32(inputsUrl, inputShape);
  const t2 = performance.now();
  const outs = await runBatch(m, raw, inputShape);
  const t3 = performance.now();
  return {
    outputs: outs.map((o) => ({name: o.name, shape: o.dims, data: toBase64(o.data)})),
    info: {...await litertInfo(accelerator), fully_accelerated: m.isFullyAccelerated},
    timings: {load_ms: t1 - t0, fetch_ms: t2 - t1, infer_ms: t3 - t2},
  };
}

async function benchmark({modelUrl, contract, runs = 30, warmup = 5}) {
  const t0 = performance.now();
  const m = await model(modelUrl);
  const loadMs = performance.now() - t0;
  const shape = [1, contract.height, contract.width, contract.channels ?? 3];
  const x = Float32Array.from({length: shape.reduce((a, b) => a * b, 1)},
                              (_, i) => (i * 2654435761 % 256));
  const once = async () => {
    const start = performance.now();
    await runOnce(m, x, shape);
    return performance.now() - start;
  };
  return {...await timeRuns(once, {runs, warmup}), load_ms: loadMs,
          info: await litertInfo(accelerator)};
}

window.edgetlHarness = {init, run, benchmark, backendInfo: async () => litertInfo(accelerator)};
window.edgetlHarnessReady = true;
