// Raw little-endian float32 in and out of the page, and latency statistics: shared by the TF.js
// and onnxruntime-web harnesses (the parity runtimes decode exactly this format in Python).

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A Float32Array as base64 of its little-endian bytes. */
export function toBase64(float32) {
  let bytes = new Uint8Array(float32.buffer, float32.byteOffset, float32.byteLength);
  if (!LITTLE_ENDIAN) {
    const copy = new DataView(new ArrayBuffer(float32.byteLength));
    float32.forEach((v, i) => copy.setFloat32(i * 4, v, true));
    bytes = new Uint8Array(copy.buffer);
  }
  let binary = '';
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

/** GET `url` as raw little-endian float32 of `shape` (probes/inputs.bin); checks the size. */
export async function fetchFloat32(url, shape) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
  const buffer = await response.arrayBuffer();
  const count = shape.reduce((a, b) => a * b, 1);
  if (buffer.byteLength !== count * 4) {
    throw new Error(`${url}: ${buffer.byteLength} bytes, expected ${count * 4} for [${shape}]`);
  }
  if (LITTLE_ENDIAN) return new Float32Array(buffer);
  const view = new DataView(buffer);
  return Float32Array.from({length: count}, (_, i) => view.getFloat32(i * 4, true));
}

/** Run `once` (async, returns ms) `warmup` then `runs` times: the benchmark's statistics. */
export async function timeRuns(once, {runs = 30, warmup = 5} = {}) {
  const warm = [];
  for (let i = 0; i < warmup; i++) warm.push(await once());
  const times = [];
  for (let i = 0; i < runs; i++) times.push(await once());
  const sorted = [...times].sort((a, b) => a - b);
  return {
    runs, warmup, first_ms: warm[0] ?? null, times_ms: times,
    mean_ms: times.reduce((a, b) => a + b, 0) / times.length,
    median_ms: sorted[Math.floor(sorted.length / 2)], min_ms: sorted[0],
    p90_ms: sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.9))],
  };
}
