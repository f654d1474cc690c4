// LiteRT.js (@litertjs/core) in the page, the same way in the app and in the parity harness:
// its wasm served from the project's node_modules by `edgetl serve` (never a CDN), threads when
// the page is cross-origin isolated, and what really ran (accelerator, WebGPU adapter).
//
// LiteRT.js runs .tflite files with a fixed input shape: edgetl writes every TFLite artifact
// with a batch-1 signature (converters/tflite.py fix_batch), so a batch runs image by image.
// 'wasm' is XNNPACK in wasm (relaxed SIMD, threads); 'webgpu' needs a WebGPU adapter (a GPU,
// or SwiftShader when Chromium starts with --enable-unsafe-webgpu --use-webgpu-adapter=swiftshader).

import * as litert from '/vendor/litertjs/index.js';
import {adapterInfo} from '/lib/backend.js';
import {webgpuUnavailableReason} from '/lib/ort_engine.js';

export const LITERT_ACCELERATORS = ['wasm', 'webgpu'];
export const LITERT_WASM_PATH = '/vendor/litertjs/wasm/';

let loading = null;
let threaded = false;

/** Load LiteRT.js' wasm once per page (threaded when the page is cross-origin isolated). */
export async function loadLiteRtEngine() {
  if (!loading) {
    threaded = globalThis.crossOriginIsolated === true &&
               await litert.supportsFeature('relaxedSimd') &&
               await litert.supportsFeature('threads');
    loading = litert.loadLiteRt(LITERT_WASM_PATH, threaded ? {threads: true} : {});
  }
  return loading;
}

/** Start LiteRT.js for `accelerator`; throws with the reason when it cannot run here. */
export async function initLiteRt(accelerator) {
  if (!LITERT_ACCELERATORS.includes(accelerator)) {
    throw new Error(`unknown LiteRT.js accelerator "${accelerator}"; use ${LITERT_ACCELERATORS}`);
  }
  if (accelerator === 'webgpu') {
    const reason = await webgpuUnavailableReason();
    if (reason) throw new Error(reason);
  }
  await loadLiteRtEngine();
  return litertInfo(accelerator);
}

// WebGPU computes in float32 (LiteRT's GPU delegate may pick float16 on a GPU that has
// shader-f16 otherwise): the float32 artifact is judged by the float32 GPU limit.
export const LITERT_GPU_PRECISION = 'fp32';

/** A compiled model for the .tflite at `url` on `accelerator`. */
export async function compileModel(url, accelerator) {
  await loadLiteRtEngine();
  const options = {accelerator};
  if (accelerator === 'webgpu') options.gpuOptions = {precision: LITERT_GPU_PRECISION};
  const model = await litert.loadAndCompile(url, options);
  const input = model.getInputDetails();
  if (input.length !== 1) throw new Error(`${url}: ${input.length} inputs; edgetl models take 1`);
  if (input[0].dtype !== 'float32') {
    throw new Error(`${url}: input dtype ${input[0].dtype}; the LiteRT.js engine feeds float32 ` +
                    '(export int8 with --int8-io float32)');
  }
  model.edgetlAccelerator = accelerator;
  return model;
}

/** The model's fixed input shape, e.g. [1, 160, 160, 3]. */
export function inputShape(model) {
  return Array.from(model.getInputDetails()[0].shape);
}

/** Run one input of the model's own shape: [{name, dims, data: Float32Array}]. Tensors live in
 * wasm memory (or on the GPU) and are deleted here. */
export async function runOnce(model, data, shape) {
  const input = new litert.Tensor(data, shape);
  let outputs = [];
  try {
    outputs = await model.run(input);
    const details = model.getOutputDetails();
    const result = [];
    for (let i = 0; i < outputs.length; i++) {
      const host = outputs[i].accelerator === 'wasm' ? outputs[i] : await outputs[i].moveTo('wasm');
      outputs[i] = host;
      const values = host.toTypedArray();
      result.push({name: details[i].name, dims: Array.from(details[i].shape),
                   data: values instanceof Float32Array ? values.slice() : Float32Array.from(values)});
    }
    return result;
  } finally {
    input.delete();
    for (const t of outputs) if (!t.deleted) t.delete();
  }
}

/** Run a batch of NHWC float32 images one by one (the model's batch is 1); outputs stacked. */
export async function runBatch(model, data, shape) {
  const [n, ...rest] = shape;
  const per = rest.reduce((a, b) => a * b, 1);
  const fixed = inputShape(model);
  if (fixed[0] !== 1 || fixed.slice(1).join() !== rest.join()) {
    throw new Error(`the model's input is [${fixed}]; this batch is [${shape}] ` +
                    '(LiteRT.js needs a fixed batch-1 signature: re-export the bundle)');
  }
  const parts = [];
  for (let i = 0; i < n; i++) {
    parts.push(await runOnce(model, data.subarray(i * per, (i + 1) * per), [1, ...rest]));
  }
  return parts[0].map((o, k) => {
    const size = o.data.length;
    const all = new Float32Array(size * n);
    parts.forEach((p, i) => all.set(p[k].data, i * size));
    return {name: o.name, dims: [n, ...o.dims.slice(1)], data: all};
  });
}

/** What ran: engine, accelerator, threads, isolation, the WebGPU adapter. */
export async function litertInfo(accelerator) {
  const info = {
    engine: 'litertjs',
    backend: accelerator,
    cross_origin_isolated: globalThis.crossOriginIsolated === true,
    hardware_concurrency: navigator.hardwareConcurrency || null,
    wasm_threaded_build: threaded,
    wasm_relaxed_simd: await litert.supportsFeature('relaxedSimd'),
  };
  try {
    info.wasm_threads = litert.getGlobalLiteRt().liteRtWasm.getThreadCount();
  } catch (e) {
    info.wasm_threads = null;
  }
  if (accelerator === 'webgpu') {
    info.webgpu_adapter = await adapterInfo();
    info.webgpu_precision = LITERT_GPU_PRECISION === 'fp32' ? 'float32' : 'float16';
  }
  return info;
}
