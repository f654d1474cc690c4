import {webgpuUnavailableReason} from '/lib/ort_engine.js';

// Choosing a TF.js backend the same way in the app and in the parity harness, and saying what
// actually runs: which backend, whether wasm got SIMD and threads, whether WebGL renders float32.

export const BACKENDS = ['webgl', 'wasm', 'cpu', 'webgpu'];

/** Where `edgetl serve` puts the wasm binaries (never a CDN). */
export const WASM_PATH = '/vendor/';

let wasmConfigured = false;

/** Threads for the wasm backend: every logical core the browser reports (at least 1). */
export function defaultThreads() {
  return Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 16));
}

/**
 * Switch TF.js to `name` and wait until it is ready; throws a readable Error if it cannot start
 * (tf.setBackend only returns false). wasm paths and thread count must be set before its first
 * initialization, so they are set once here.
 */
export async function initBackend(name, {numThreads = defaultThreads(), tf = globalThis.tf} = {}) {
  if (!BACKENDS.includes(name)) throw new Error(`unknown backend "${name}"; use ${BACKENDS}`);
  if (name === 'webgpu') {
    // tf-backend-webgpu registers itself but fails late without an adapter: say why up front.
    if (!tf.findBackendFactory('webgpu')) {
      throw new Error('the TF.js WebGPU backend script (tf-backend-webgpu) is not loaded');
    }
    const reason = await webgpuUnavailableReason();
    if (reason) throw new Error(reason);
  }
  if (name === 'wasm') {
    if (!tf.wasm) throw new Error('the TF.js wasm backend script (tf-backend-wasm) is not loaded');
    if (!wasmConfigured) {
      tf.wasm.setWasmPaths(WASM_PATH);
      tf.wasm.setThreadsCount(numThreads);
      wasmConfigured = true;
    }
  }
  let ok = false;
  let cause = '';
  try {
    ok = await tf.setBackend(name);
    await tf.ready();
  } catch (e) {
    cause = e && e.message ? e.message : String(e);
  }
  if (!ok || tf.getBackend() !== name) {
    throw new Error(`the ${name} backend failed to initialize` + (cause ? `: ${cause}` : '') +
                    ` (active: ${tf.getBackend() || 'none'})`);
  }
  return backendInfo(tf);
}

/** What the active backend really is: precision, SIMD/threads, GPU renderer. */
export async function backendInfo(tf = globalThis.tf) {
  const name = tf.getBackend();
  const info = {
    backend: name,
    tfjs_version: tf.version && tf.version.tfjs,
    cross_origin_isolated: globalThis.crossOriginIsolated === true,
    hardware_concurrency: navigator.hardwareConcurrency || null,
  };
  if (name === 'wasm') {
    info.wasm_simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
    info.wasm_multithread = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
    info.wasm_threads = tf.wasm.getThreadsCount();
  } else if (name === 'webgpu') {
    // TF.js' WebGPU kernels compute in float32 (f32 storage buffers); the adapter says what ran.
    info.webgpu_precision = 'float32';
    info.webgpu_adapter = await adapterInfo();
  } else if (name === 'webgl') {
    const env = tf.env();
    info.webgl_version = env.getNumber('WEBGL_VERSION');
    info.webgl_float32_capable = env.getBool('WEBGL_RENDER_FLOAT32_CAPABLE');
    info.webgl_float32 = env.getBool('WEBGL_RENDER_FLOAT32_ENABLED');
    info.webgl_precision = info.webgl_float32 ? 'float32' : 'float16';
    try {
      const gl = tf.backend().gpgpu.gl;
      const ext = gl.getExtension('WEBGL_debug_renderer_info');
      info.webgl_renderer = ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL)
                                : gl.getParameter(gl.RENDERER);
      info.webgl_vendor = ext ? gl.getParameter(ext.UNMASKED_VENDOR_WEBGL)
                              : gl.getParameter(gl.VENDOR);
    } catch (e) {
      info.webgl_renderer = `unknown (${e.message})`;
    }
  }
  return info;
}

/** The WebGPU adapter's description ({vendor, architecture, device, description}) or null. */
export async function adapterInfo() {
  if (!globalThis.navigator || !navigator.gpu) return null;
  const adapter = await navigator.gpu.requestAdapter({powerPreference: 'high-performance'});
  if (!adapter) return null;
  const i = adapter.info || {};
  return {vendor: i.vendor || '', architecture: i.architecture || '', device: i.device || '',
          description: i.description || ''};
}
