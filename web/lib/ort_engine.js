// onnxruntime-web in the page, the same way in the app and in the parity harness: which build
// to load, where its wasm lives (the project's node_modules via `edgetl serve`, never a CDN),
// how many threads, and what really ran.
//
// wasm: ort.wasm.min.mjs (SIMD + threads; threads need cross-origin isolation, which every
// edgetl page has). webgpu: ort.webgpu.min.mjs, only when the browser gives a WebGPU adapter;
// otherwise loadOrt throws with the reason found in the page.

export const ORT_BACKENDS = ['wasm', 'webgpu'];
export const ORT_PATH = '/vendor/ort/';
const BUILDS = {wasm: 'ort.wasm.min.mjs', webgpu: 'ort.webgpu.min.mjs'};

const loaded = new Map(); // backend -> the onnxruntime-web module imported for it

/** Why WebGPU cannot run here (null when an adapter is available). */
export async function webgpuUnavailableReason() {
  if (!globalThis.isSecureContext) return 'the page is not a secure context (WebGPU needs one)';
  if (!navigator.gpu) return 'navigator.gpu is undefined: this browser exposes no WebGPU';
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    return `navigator.gpu.requestAdapter() failed: ${e && e.message ? e.message : e}`;
  }
  return adapter ? null : 'navigator.gpu.requestAdapter() returned null: no WebGPU adapter';
}

/** Threads for ort's wasm backend: every logical core the browser reports (ort's own default
 * is half of them, i.e. 1 on a 2-core machine). */
export function defaultOrtThreads() {
  return Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 16));
}

/** Import the onnxruntime-web build for `backend` once per page and configure it (each build
 * is its own module with its own settings, so a page may hold both). */
export async function loadOrt(backend, {numThreads = defaultOrtThreads()} = {}) {
  if (!ORT_BACKENDS.includes(backend)) {
    throw new Error(`unknown onnxruntime-web backend "${backend}"; use ${ORT_BACKENDS}`);
  }
  if (loaded.has(backend)) return loaded.get(backend);
  if (backend === 'webgpu') {
    const reason = await webgpuUnavailableReason();
    if (reason) throw new Error(reason);
  }
  const ort = await import(ORT_PATH + BUILDS[backend]);
  ort.env.wasm.wasmPaths = ORT_PATH;
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? numThreads : 1;
  ort.env.wasm.proxy = false;
  loaded.set(backend, ort);
  return ort;
}

/** An InferenceSession for the ONNX model at `url` on `backend`. */
export async function createSession(url, backend, options = {}) {
  const ort = await loadOrt(backend, options);
  const session = await ort.InferenceSession.create(url, {
    executionProviders: [backend],
    graphOptimizationLevel: 'all',
  });
  session.edgetlBackend = backend;
  return session;
}

/** Run the session's single image input; returns [{name, dims, data: Float32Array}]. */
export async function runSession(session, data, shape) {
  const ort = loaded.get(session.edgetlBackend);
  const feeds = {[session.inputNames[0]]: new ort.Tensor('float32', data, shape)};
  const results = await session.run(feeds);
  const outputs = session.outputNames.map((name) => {
    const t = results[name];
    return {name, dims: Array.from(t.dims), data: t.data};
  });
  for (const t of Object.values(results)) if (t.dispose) t.dispose();
  return outputs;
}

/** NHWC batch -> NCHW (for ONNX artifacts exported with --nchw). */
export function toNchw(data, [n, h, w, c]) {
  const out = new Float32Array(data.length);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        for (let k = 0; k < c; k++) {
          out[((b * c + k) * h + y) * w + x] = data[((b * h + y) * w + x) * c + k];
        }
      }
    }
  }
  return out;
}

/** What ran on `backend`: engine, version, threads, isolation (and the WebGPU adapter, which
 * the harness adds with adapterInfo() from backend.js). */
export function ortInfo(backend) {
  const ort = loaded.get(backend);
  if (!ort) return {engine: 'onnxruntime-web', backend: null};
  return {
    engine: 'onnxruntime-web',
    backend,
    ort_version: ort.env.versions && ort.env.versions.web,
    cross_origin_isolated: globalThis.crossOriginIsolated === true,
    hardware_concurrency: navigator.hardwareConcurrency || null,
    wasm_threads: ort.env.wasm.numThreads,
    wasm_simd: true, // ort-web 1.2x+ ships SIMD builds only
  };
}
